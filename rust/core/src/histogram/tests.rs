use super::*;
use base64::Engine as _;

fn cfg(highest: u64, sigfig: u8) -> HistogramConfig {
    HistogramConfig { highest, sigfig }
}

fn hist(values: &[u64]) -> Histogram {
    let h = Histogram::new(HistogramConfig::default());
    values.iter().for_each(|&v| h.record(v));
    h
}

#[test]
fn histogram_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Histogram>();
    assert_send_sync::<Snapshot>();
}

#[test]
fn config_validation_names_the_bad_field() {
    assert_eq!(
        HistogramConfig::default().validated(),
        Ok(cfg(ONE_HOUR_NS, 2))
    );
    assert!(cfg(1000, 0).validated().unwrap_err().contains("sigfig"));
    assert!(cfg(1000, 6).validated().unwrap_err().contains("sigfig"));
    assert!(cfg(199, 2).validated().unwrap_err().contains("highest"));
    assert!(cfg(200, 2).validated().is_ok());
    assert!(cfg(u64::MAX, 2)
        .validated()
        .unwrap_err()
        .contains("highest"));
    assert!(cfg(i64::MAX as u64, 5).validated().is_ok());
}

#[test]
#[should_panic(expected = "sigfig")]
fn new_panics_on_invalid_config() {
    let _ = Histogram::new(cfg(1000, 9));
}

#[test]
fn layout_matches_hdrhistogram_crate() {
    for (highest, sigfig) in [
        (ONE_HOUR_NS, 2),
        (ONE_HOUR_NS, 3),
        (20, 1),
        (1_000_000, 1),
        (2_000, 3),
        (i64::MAX as u64, 2),
    ] {
        let s = Snapshot::empty(cfg(highest, sigfig));
        let hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, highest, sigfig).unwrap();
        assert_eq!(s.layout.len, hdr.distinct_values(), "{highest} {sigfig}");
        for (i, v) in hdr.iter_all().enumerate() {
            assert_eq!(s.layout.highest_at(i), v.value_iterated_to(), "slot {i}");
            let lo = s.layout.lowest_at(i);
            assert_eq!(lo, hdr.lowest_equivalent(v.value_iterated_to()));
            assert_eq!(s.layout.index_of(lo), i);
        }
        assert!(s.layout.index_of(highest) < s.layout.len);
    }
}

#[test]
fn index_value_round_trips_at_bucket_edges() {
    let l = Layout::new(HistogramConfig::default()); // 256 sub-buckets, half 128
    assert_eq!((l.half_count, l.len), (128, 4608));
    for v in 0..256 {
        assert_eq!(l.index_of(v), v as usize, "unit resolution in bucket 0");
    }
    assert_eq!(l.index_of(256), 256);
    assert_eq!(l.index_of(257), 256); // width 2 in bucket 1
    assert_eq!(l.index_of(258), 257);
    assert_eq!(l.index_of(511), 383);
    assert_eq!(l.index_of(512), 384);
    assert_eq!(l.index_of(515), 384); // width 4 in bucket 2
    assert_eq!(l.index_of(516), 385);
    for shift in 8..42 {
        for v in [
            1u64 << shift,
            (1 << shift) - 1,
            (1 << shift) + 1,
            3 << (shift - 1),
        ] {
            let i = l.index_of(v);
            assert!(l.lowest_at(i) <= v && v <= l.highest_at(i), "{v}");
            assert_eq!(l.index_of(l.lowest_at(i)), i);
            assert_eq!(l.index_of(l.highest_at(i)), i);
            assert_eq!(l.index_of(l.highest_at(i) + 1), i + 1);
            let width = l.highest_at(i) - l.lowest_at(i);
            assert!(width as f64 <= v as f64 / 100.0, "{v}: width {width}");
        }
    }
}

#[test]
fn zero_is_recorded_as_one() {
    let s = hist(&[0, 0]).snapshot();
    assert_eq!((s.count(), s.min(), s.max(), s.sum_ns()), (2, 1, 1, 2));
    assert_eq!(s.iter_recorded().collect::<Vec<_>>(), vec![(1, 1, 2)]);
    assert_eq!(s.count_le(0), 0);
    assert_eq!(s.clamped(), 0);
}

#[test]
fn values_above_highest_are_clamped_and_counted() {
    let h = Histogram::new(cfg(1_000_000, 2));
    h.record(5_000_000);
    h.record(u64::MAX);
    h.record_n(2_000_000, 3);
    h.record(10);
    let s = h.snapshot();
    assert_eq!(
        (s.count(), s.clamped(), s.max(), s.min()),
        (6, 5, 1_000_000, 10)
    );
    assert_eq!(s.sum_ns(), 5 * 1_000_000 + 10);
    assert_eq!(s.value_at_quantile(1.0), 1_000_000);
    let l = s.layout;
    let top_slot_lowest = l.lowest_at(l.index_of(1_000_000));
    assert_eq!(s.count_le(top_slot_lowest - 1), 1);
    assert_eq!(
        s.count_le(top_slot_lowest),
        6,
        "the slot holding the value counts whole"
    );
}

#[test]
fn min_max_mean_sum() {
    let empty = Histogram::new(HistogramConfig::default()).snapshot();
    assert_eq!(
        (empty.count(), empty.min(), empty.max(), empty.sum_ns()),
        (0, 0, 0, 0)
    );
    assert_eq!(empty.mean(), 0.0);
    assert_eq!(empty.value_at_quantile(0.5), 0);
    assert_eq!(empty.iter_recorded().count(), 0);
    assert_eq!(empty, Snapshot::empty(HistogramConfig::default()));

    let s = hist(&[1_000, 2_000, 3_000, 1_234_567]).snapshot();
    assert_eq!((s.count(), s.min(), s.max()), (4, 1_000, 1_234_567));
    assert_eq!(s.sum_ns(), 1_240_567);
    assert!((s.mean() - 310_141.75).abs() < 1e-9);

    // Exact even between neighbours sharing a slot.
    let s = hist(&[1_000_001, 1_000_000, 1_000_003, 1_000_004]).snapshot();
    assert_eq!((s.min(), s.max()), (1_000_000, 1_000_004));
}

#[test]
fn sum_is_exact_beyond_u64() {
    let h = Histogram::new(cfg(i64::MAX as u64, 2));
    let big = i64::MAX as u64;
    for _ in 0..5 {
        h.record(big);
    }
    h.record_n(big, u64::MAX);
    h.record_n(big, 3); // carries out of the low word
    let expected = u128::from(big) * (5 + 3) + u128::from(big) * u128::from(u64::MAX);
    assert_eq!(h.snapshot().sum_ns(), expected);
}

#[test]
fn quantiles_on_small_known_data() {
    // 1..=100: unit resolution below 256, so quantiles are exact.
    let s = hist(&(1..=100).collect::<Vec<_>>()).snapshot();
    assert_eq!(s.value_at_quantile(0.0), 1);
    assert_eq!(s.value_at_quantile(0.01), 1);
    assert_eq!(s.value_at_quantile(0.5), 50);
    assert_eq!(s.value_at_quantile(0.505), 51);
    assert_eq!(s.value_at_quantile(0.9), 90);
    assert_eq!(s.value_at_quantile(0.99), 99);
    assert_eq!(s.value_at_quantile(1.0), 100);
    assert_eq!(s.value_at_quantile(7.0), 100);
    assert_eq!(s.value_at_quantile(-1.0), 1);
    assert_eq!(s.value_at_quantile(f64::NAN), 1);

    // Larger values report the slot's highest equivalent, clamped to max.
    let s = hist(&[1_000_000, 1_000_000, 1_000_000, 5_000_000]).snapshot();
    let l = s.layout;
    let slot_hi = l.highest_at(l.index_of(1_000_000));
    assert!(slot_hi > 1_000_000);
    assert_eq!(s.value_at_quantile(0.0), 1_000_000);
    assert_eq!(s.value_at_quantile(0.5), slot_hi);
    assert_eq!(s.value_at_quantile(0.75), slot_hi);
    assert_eq!(s.value_at_quantile(0.76), 5_000_000);
    assert_eq!(s.value_at_quantile(1.0), 5_000_000);
}

#[test]
fn count_le_is_cumulative() {
    let s = hist(&[10, 20, 20, 300, 1_000_000]).snapshot();
    assert_eq!(s.count_le(9), 0);
    assert_eq!(s.count_le(10), 1);
    assert_eq!(s.count_le(19), 1);
    assert_eq!(s.count_le(20), 3);
    assert_eq!(s.count_le(299), 3);
    assert_eq!(s.count_le(300), 4);
    assert_eq!(s.count_le(999_000), 4);
    assert_eq!(s.count_le(1_000_000), 5);
    assert_eq!(s.count_le(u64::MAX), 5);
}

#[test]
fn merge_adds_and_rejects_config_mismatch() {
    let mut a = hist(&[5, 50_000]).snapshot();
    let b = hist(&[7, 9_000_000]).snapshot();
    a.merge(&b).unwrap();
    assert_eq!(a, hist(&[5, 50_000, 7, 9_000_000]).snapshot());
    a.merge(&Snapshot::empty(HistogramConfig::default()))
        .unwrap();
    assert_eq!((a.count(), a.min(), a.max()), (4, 5, 9_000_000));

    let other = Snapshot::empty(cfg(ONE_HOUR_NS, 3));
    let before = a.clone();
    let err = a.merge(&other).unwrap_err();
    assert!(err.contains("different configs"), "{err}");
    assert_eq!(a, before);
}

#[test]
fn take_interval_and_reset() {
    let h = hist(&[100, 200]);
    let first = h.take_interval();
    assert_eq!(
        (first.count(), first.sum_ns(), first.min(), first.max()),
        (2, 300, 100, 200)
    );
    assert_eq!(h.snapshot().count(), 0);
    h.record(7);
    let second = h.take_interval();
    assert_eq!(
        (second.count(), second.min(), second.max(), second.sum_ns()),
        (1, 7, 7, 7)
    );
    let third = h.take_interval();
    assert_eq!(third, Snapshot::empty(HistogramConfig::default()));

    h.record(5);
    h.record(u64::MAX);
    h.reset();
    assert_eq!(h.snapshot(), Snapshot::empty(HistogramConfig::default()));
    h.record(9);
    assert_eq!(h.snapshot().min(), 9);
}

#[test]
fn interval_readers_are_independent_windows() {
    let h = hist(&[1, 2]);
    let mut fast = IntervalReader::new(&h);
    let mut slow = IntervalReader::new(&h);
    h.record(1_000);
    let w = fast.next(&h);
    assert_eq!(
        (w.count(), w.sum_ns(), w.min(), w.max()),
        (1, 1_000, 1_000, 1_000)
    );
    h.record(3);
    h.record(3);
    let w = fast.next(&h);
    assert_eq!((w.count(), w.sum_ns()), (2, 6));
    assert_eq!((w.min(), w.max()), (3, 3)); // from the slot: not new extremes
    assert_eq!(fast.next(&h).count(), 0);
    let w = slow.next(&h);
    assert_eq!(
        (w.count(), w.sum_ns(), w.min(), w.max()),
        (3, 1_006, 3, 1_000)
    );
    h.reset();
    h.record(42);
    assert_eq!(fast.next(&h).sum_ns(), 42, "a reset restarts the window");
}

#[test]
fn delta_min_max_come_from_slots_when_not_new_extremes() {
    let h = hist(&[10, 5_000_000]);
    let before = h.snapshot();
    h.record(1_000_001);
    h.record(1_000_003);
    let d = h.snapshot().delta(&before);
    let l = d.layout;
    let i = l.index_of(1_000_001);
    assert_eq!(i, l.index_of(1_000_003));
    assert_eq!((d.min(), d.max()), (l.lowest_at(i), l.highest_at(i)));
    assert_eq!(d.value_at_quantile(0.5), l.highest_at(i));
    // An old extreme in the same slot is not reported as the window's.
    let h = hist(&[1_000_000]);
    let before = h.snapshot();
    h.record(1_000_002);
    let d = h.snapshot().delta(&before);
    assert_eq!((d.min(), d.max()), (l.lowest_at(i), 1_000_002));
    let mismatched = Snapshot::empty(cfg(1_000, 1));
    assert_eq!(d.delta(&mismatched), d);
}

#[test]
fn to_hdr_has_identical_counts() {
    let s = hist(&[0, 1, 255, 256, 257, 99_999, 3_000_000_000, u64::MAX]).snapshot();
    let hdr = s.to_hdr();
    assert_eq!(hdr.len(), s.count());
    let ours: Vec<_> = s.iter_recorded().map(|(_, hi, c)| (hi, c)).collect();
    let theirs: Vec<_> = hdr
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn v2_base64_decodes() {
    let s = hist(&[1, 2, 3, 1_000_000]).snapshot();
    let text = s.to_v2_base64();
    assert!(text.starts_with("HISTF"), "{text}"); // the V2 compressed cookie
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap();
    assert_eq!(h, s.to_hdr());
}

#[test]
fn memory_bytes_for_sigfig_2_and_3() {
    let (row, group) = (64 * 4, 8 * 8);
    let header = std::mem::size_of::<Histogram>();
    assert!(header <= 128, "{header}");
    let h2 = Histogram::new(HistogramConfig::default());
    // An idle histogram is its header and its group table (9 groups of 8
    // rows of 64 slots).
    assert_eq!(h2.memory_bytes(), header + 9 * 8);
    h2.record(1_000_000);
    h2.record(1_000_001); // same row
    assert_eq!(h2.memory_bytes(), header + 9 * 8 + group + row);
    h2.record(1_100_000); // same group, next row
    assert_eq!(h2.memory_bytes(), header + 9 * 8 + group + 2 * row);
    h2.record(10); // another group
    assert_eq!(h2.memory_bytes(), header + 9 * 8 + 2 * group + 3 * row);
    let h3 = Histogram::new(cfg(ONE_HOUR_NS, 3));
    assert_eq!(h3.memory_bytes(), header + 33_792 / 512 * 8);
}

#[test]
fn a_32_bit_counter_nearing_its_limit_hands_over_to_64_bit_ones() {
    let h = Histogram::new(HistogramConfig::default());
    let narrow = h.memory_bytes();
    // Narrow adds (each below 2^24) up to just below 2^31 in one slot.
    let step = (1u64 << 24) - 1;
    let steps = (1u64 << 31) / step;
    for _ in 0..steps {
        h.record_n(1_000, step);
    }
    assert!(!h.counts.promoted());
    assert_eq!(h.memory_bytes(), narrow + 64 + 64 * 4, "one 32-bit row");
    // The add that reaches 2^31 promotes; later ones go to 64-bit rows,
    // past 2^32 in the same slot, and nothing is lost on either side.
    for _ in 0..steps + 2 {
        h.record_n(1_000, step);
    }
    assert!(h.counts.promoted());
    h.record(1_000);
    h.record(5); // a row the narrow table never had
    let expected = (2 * steps + 2) * step + 1;
    assert!(expected > 1 << 32);
    let s = h.snapshot();
    assert_eq!(s.count(), expected + 1);
    assert_eq!(s.count_le(5), 1);
    assert_eq!(s.to_hdr().count_at(1_000), expected);
    assert!(h.memory_bytes() > narrow, "the 64-bit table is counted");
    // An interval takes both tables; records go on into the wide one.
    let taken = h.take_interval();
    assert_eq!(taken, s);
    assert_eq!(h.snapshot().count(), 0);
    h.record_n(1_000, 3);
    assert_eq!(h.snapshot().count(), 3);
    h.reset();
    assert_eq!(h.snapshot(), Snapshot::empty(HistogramConfig::default()));
}

#[test]
fn a_huge_record_n_goes_to_64_bit_counters_at_once() {
    let h = Histogram::new(HistogramConfig::default());
    h.record_n(42, 1 << 40);
    h.record(42);
    assert!(h.counts.promoted());
    let s = h.snapshot();
    assert_eq!(s.count(), (1 << 40) + 1);
    assert_eq!(s.sum_ns(), 42 * ((1u128 << 40) + 1));
}

/// Log-uniform values over `[lo, lo * 10^decades)`, `n` of them.
fn spread(lo: f64, decades: f64, n: u32) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| (lo * 10f64.powf(decades * f64::from(i) / f64::from(n))) as u64)
}

#[test]
fn a_series_costs_the_rows_its_values_span() {
    // Every slot of one decade recorded (1 ms .. 10 ms): 425 slots at 2 digits.
    let h = Histogram::new(HistogramConfig::default());
    spread(1e6, 1.0, 10_000).for_each(|v| h.record(v));
    assert!(h.memory_bytes() <= 2_800, "{}", h.memory_bytes());
    // Two decades (100 µs .. 10 ms), every slot: a tenth of the dense 37 KB.
    let h = Histogram::new(HistogramConfig::default());
    spread(1e5, 2.0, 20_000).for_each(|v| h.record(v));
    assert!(h.memory_bytes() <= 4_600, "{}", h.memory_bytes());
    // take_interval and reset keep the rows; the snapshot holds only the range.
    let before = h.memory_bytes();
    let s = h.take_interval();
    assert_eq!(s.count(), 20_000);
    h.reset();
    assert_eq!(h.memory_bytes(), before);
    assert_eq!(h.snapshot(), Snapshot::empty(HistogramConfig::default()));
}

#[test]
fn snapshots_of_far_apart_values_merge_and_subtract() {
    // Snapshots hold their non-empty range only: merge and delta line ranges up.
    let a = hist(&[3, 5]).snapshot();
    let b = hist(&[2_000_000_000, 7]).snapshot();
    let mut m = a.clone();
    m.merge(&b).unwrap();
    assert_eq!(m, hist(&[3, 5, 7, 2_000_000_000]).snapshot());
    let mut m2 = b.clone();
    m2.merge(&a).unwrap();
    assert_eq!(m, m2);
    let h = hist(&[1_000]);
    let before = h.snapshot();
    h.record(3);
    h.record(9_000_000);
    let d = h.snapshot().delta(&before);
    assert_eq!(d, hist(&[3, 9_000_000]).snapshot());
    assert_eq!(
        before.delta(&before),
        Snapshot::empty(HistogramConfig::default())
    );
}
