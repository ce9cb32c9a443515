//! Property tests of the HDR histogram against a sorted oracle and the
//! `hdrhistogram` crate, plus multithreaded stress tests.
#![cfg(not(loom))]

use base64::Engine as _;
use proptest::prelude::*;
use pulsetrace_core::histogram::{
    Histogram, HistogramConfig, IntervalReader, Snapshot, ONE_HOUR_NS,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

const QUANTILES: [f64; 6] = [0.0, 0.5, 0.9, 0.99, 0.999, 1.0];

/// Mixed ranges: mostly log-uniform over 1 ns..1 h, some small, zeros and
/// values above one hour (clamped).
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0.0f64..12.556).prop_map(|e| 10f64.powf(e) as u64),
        2 => 0u64..3_000,
        1 => Just(0u64),
        1 => ONE_HOUR_NS..=u64::MAX,
    ]
}

/// sigfig 1..=5; sigfig 4 and 5 use a smaller `highest` to keep debug runs fast.
fn config() -> impl Strategy<Value = HistogramConfig> {
    (1u8..=5).prop_flat_map(|sigfig| {
        let floor = 2 * 10u64.pow(u32::from(sigfig));
        let top = if sigfig >= 4 {
            10_000_000_000
        } else {
            ONE_HOUR_NS
        };
        prop_oneof![Just(top), floor..=top]
            .prop_map(move |highest| HistogramConfig { highest, sigfig })
    })
}

fn small_config() -> impl Strategy<Value = HistogramConfig> {
    (1u8..=3).prop_map(|sigfig| HistogramConfig {
        highest: ONE_HOUR_NS,
        sigfig,
    })
}

fn record_all(cfg: HistogramConfig, values: &[u64]) -> Snapshot {
    let h = Histogram::new(cfg);
    values.iter().for_each(|&v| h.record(v));
    h.snapshot()
}

/// What the histogram stores for `v`: 0 as 1, above `highest` as `highest`.
fn stored(cfg: HistogramConfig, v: u64) -> u64 {
    v.clamp(1, cfg.highest)
}

fn slots(s: &Snapshot) -> Vec<(u64, u64, u64)> {
    s.iter_recorded().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quantiles_are_within_relative_error_and_match_hdrhistogram(
        cfg in config(),
        values in prop::collection::vec(value(), 1..400),
    ) {
        let s = record_all(cfg, &values);
        let mut sorted: Vec<u64> = values.iter().map(|&v| stored(cfg, v)).collect();
        sorted.sort_unstable();
        let n = sorted.len() as u64;
        prop_assert_eq!(s.count(), n);
        prop_assert_eq!(s.sum_ns(), sorted.iter().map(|&v| u128::from(v)).sum::<u128>());
        prop_assert_eq!(s.min(), sorted[0]);
        prop_assert_eq!(s.max(), sorted[sorted.len() - 1]);
        prop_assert_eq!(s.clamped(), values.iter().filter(|&&v| v > cfg.highest).count() as u64);

        let mut hdr =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, cfg.highest, cfg.sigfig).unwrap();
        for &v in &sorted {
            hdr.record(v).unwrap();
        }
        let tolerance = 10f64.powi(-i32::from(cfg.sigfig));
        for q in QUANTILES {
            let got = s.value_at_quantile(q);
            // Same rank rule as HdrHistogram: the ceil(q*n)-th smallest value.
            let rank = ((q * n as f64).ceil() as u64).max(1);
            let exact = sorted[(rank - 1) as usize];
            prop_assert!(got >= exact, "q={} got {} < exact {}", q, got, exact);
            prop_assert!(
                (got - exact) as f64 <= exact as f64 * tolerance,
                "q={} got {} exact {} sigfig {}", q, got, exact, cfg.sigfig
            );
            let theirs = hdr.value_at_quantile(q).clamp(s.min(), s.max());
            prop_assert_eq!(got, theirs, "q={} vs hdrhistogram", q);
        }
        prop_assert_eq!(s.value_at_quantile(0.0), sorted[0]);
        prop_assert_eq!(s.value_at_quantile(1.0), sorted[sorted.len() - 1]);
        prop_assert_eq!(s.to_hdr(), hdr);
    }

    #[test]
    fn count_le_brackets_the_exact_count(
        cfg in small_config(),
        values in prop::collection::vec(value(), 0..300),
        probes in prop::collection::vec(value(), 1..20),
    ) {
        let s = record_all(cfg, &values);
        let stored_values: Vec<u64> = values.iter().map(|&v| stored(cfg, v)).collect();
        let hdr = s.to_hdr();
        let le = |x: u64| stored_values.iter().filter(|&&v| v <= x).count() as u64;
        for p in probes {
            let got = s.count_le(p);
            let slot_top = if p >= cfg.highest { p } else { hdr.highest_equivalent(p) };
            prop_assert!(le(p) <= got && got <= le(slot_top), "probe {}: {} not in [{}, {}]",
                p, got, le(p), le(slot_top));
        }
        prop_assert_eq!(s.count_le(u64::MAX), s.count());
    }

    #[test]
    fn merge_is_associative_commutative_and_equals_concatenation(
        cfg in small_config(),
        a in prop::collection::vec(value(), 0..200),
        b in prop::collection::vec(value(), 0..200),
        c in prop::collection::vec(value(), 0..200),
    ) {
        let (sa, sb, sc) = (record_all(cfg, &a), record_all(cfg, &b), record_all(cfg, &c));
        let mut ab = sa.clone();
        ab.merge(&sb).unwrap();
        let mut ba = sb.clone();
        ba.merge(&sa).unwrap();
        prop_assert_eq!(&ab, &ba);

        let mut ab_c = ab.clone();
        ab_c.merge(&sc).unwrap();
        let mut bc = sb.clone();
        bc.merge(&sc).unwrap();
        let mut a_bc = sa.clone();
        a_bc.merge(&bc).unwrap();
        prop_assert_eq!(&ab_c, &a_bc);

        let all: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
        prop_assert_eq!(&ab_c, &record_all(cfg, &all));
    }

    #[test]
    fn delta_equals_the_values_recorded_in_between(
        cfg in small_config(),
        before in prop::collection::vec(value(), 0..200),
        between in prop::collection::vec(value(), 0..200),
    ) {
        let h = Histogram::new(cfg);
        before.iter().for_each(|&v| h.record(v));
        let earlier = h.snapshot();
        let mut reader = IntervalReader::new(&h);
        between.iter().for_each(|&v| h.record(v));
        let d = h.snapshot().delta(&earlier);
        let expected = record_all(cfg, &between);

        prop_assert_eq!(slots(&d), slots(&expected));
        prop_assert_eq!(d.count(), expected.count());
        prop_assert_eq!(d.sum_ns(), expected.sum_ns());
        prop_assert_eq!(d.clamped(), expected.clamped());
        if let (Some(lo), Some(hi)) = (slots(&d).first().copied(), slots(&d).last().copied()) {
            prop_assert!(lo.0 <= d.min() && d.min() <= lo.1);
            prop_assert!(hi.0 <= d.max() && d.max() <= hi.1);
            // Exact when the window holds a new overall extreme.
            if earlier.count() == 0 || expected.min() < earlier.min() {
                prop_assert_eq!(d.min(), expected.min());
            }
            if earlier.count() == 0 || expected.max() > earlier.max() {
                prop_assert_eq!(d.max(), expected.max());
            }
        } else {
            prop_assert_eq!((d.min(), d.max()), (0, 0));
        }
        prop_assert_eq!(reader.next(&h), d);
    }

    #[test]
    fn v2_base64_round_trips_through_hdrhistogram_deserializer(
        cfg in config(),
        values in prop::collection::vec(value(), 0..300),
    ) {
        let s = record_all(cfg, &values);
        let text = s.to_v2_base64();
        let bytes = base64::engine::general_purpose::STANDARD.decode(&text).unwrap();
        let decoded: hdrhistogram::Histogram<u64> =
            hdrhistogram::serialization::Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
        prop_assert_eq!(decoded.high(), cfg.highest);
        prop_assert_eq!(decoded.low(), 1);
        prop_assert_eq!(decoded.sigfig(), cfg.sigfig);
        prop_assert_eq!(decoded.len(), s.count());
        let theirs: Vec<(u64, u64)> = decoded
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let ours: Vec<(u64, u64)> = s.iter_recorded().map(|(_, hi, c)| (hi, c)).collect();
        prop_assert_eq!(theirs, ours);
    }
}

/// The eager reference model: the `hdrhistogram` crate's histogram, every
/// slot allocated up front, fed the stored values.
fn eager(cfg: HistogramConfig, values: &[u64]) -> hdrhistogram::Histogram<u64> {
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, cfg.highest, cfg.sigfig).unwrap();
    for &v in values {
        h.record(stored(cfg, v)).unwrap();
    }
    h
}

fn eager_v2(h: &hdrhistogram::Histogram<u64>) -> String {
    use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Rows allocated on first record change nothing a reader sees: the
    /// counts, percentiles, V2 encoding, merge and delta equal the eager
    /// model's, for values anywhere in the range (rows far apart, empty
    /// rows between them, a histogram with no row at all).
    #[test]
    fn lazy_rows_match_the_eager_reference(
        cfg in config(),
        a in prop::collection::vec(value(), 0..300),
        b in prop::collection::vec(value(), 0..300),
    ) {
        let h = Histogram::new(cfg);
        a.iter().for_each(|&v| h.record(v));
        let sa = h.snapshot();
        let ea = eager(cfg, &a);
        prop_assert_eq!(sa.to_hdr(), ea.clone());
        prop_assert_eq!(sa.to_v2_base64(), eager_v2(&ea));
        for q in QUANTILES {
            let theirs = if sa.count() == 0 { 0 } else { ea.value_at_quantile(q).clamp(sa.min(), sa.max()) };
            prop_assert_eq!(sa.value_at_quantile(q), theirs, "q={}", q);
        }

        // Merge: lazily built snapshots add up to the eager sum.
        let sb = record_all(cfg, &b);
        let mut eab = ea.clone();
        eab.add(eager(cfg, &b)).unwrap();
        let mut merged = sa.clone();
        merged.merge(&sb).unwrap();
        prop_assert_eq!(merged.to_hdr(), eab.clone());
        prop_assert_eq!(merged.to_v2_base64(), eager_v2(&eab));

        // Delta: what was recorded after `sa` is the eager model of `b`.
        b.iter().for_each(|&v| h.record(v));
        let d = h.snapshot().delta(&sa);
        prop_assert_eq!(d.to_hdr(), eager(cfg, &b));
        prop_assert_eq!(d.count(), b.len() as u64);

        // take_interval empties every row it read; the rows stay allocated.
        let bytes = h.memory_bytes();
        let all = h.take_interval();
        prop_assert_eq!(all.to_hdr(), eab);
        prop_assert_eq!(h.snapshot().count(), 0);
        prop_assert_eq!(h.memory_bytes(), bytes);
    }
}

/// A count for `record_n`: mostly small, some near and past the 32-bit
/// counters' limits (promotion to 64-bit), a few huge.
fn weight() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1u64..1_000,
        2 => (1u64 << 24) - 2..(1u64 << 24) + 2,
        2 => (1u64 << 30)..(1u64 << 32) + 5,
        1 => (1u64 << 32)..(1u64 << 40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Counts past 32 bits: the narrow counters hand over to 64-bit ones
    /// (per histogram, once a counter reaches 2^31) and a reader sees the
    /// exact counts of the eager 64-bit model, before and after the
    /// promotion, through snapshots, intervals and V2.
    #[test]
    fn counts_past_32_bits_match_the_eager_reference(
        cfg in small_config(),
        a in prop::collection::vec((value(), weight()), 1..40),
        b in prop::collection::vec((value(), weight()), 0..40),
    ) {
        let h = Histogram::new(cfg);
        let mut eager_a =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, cfg.highest, cfg.sigfig).unwrap();
        for &(v, n) in &a {
            h.record_n(v, n);
            eager_a.record_n(stored(cfg, v), n).unwrap();
        }
        let sa = h.snapshot();
        prop_assert_eq!(sa.to_hdr(), eager_a.clone());
        prop_assert_eq!(sa.count(), a.iter().map(|&(_, n)| n).sum::<u64>());
        let mut eager_ab = eager_a.clone();
        for &(v, n) in &b {
            h.record_n(v, n);
            h.record(v);
            eager_ab.record_n(stored(cfg, v), n + 1).unwrap();
        }
        let d = h.snapshot().delta(&sa);
        prop_assert_eq!(d.count(), b.iter().map(|&(_, n)| n + 1).sum::<u64>());
        let all = h.take_interval();
        prop_assert_eq!(all.to_hdr(), eager_ab.clone());
        prop_assert_eq!(all.to_v2_base64(), eager_v2(&eager_ab));
        prop_assert_eq!(h.snapshot().count(), 0);
        h.record(7);
        prop_assert_eq!(h.snapshot().count(), 1);
    }
}

/// Deterministic mixed values for stress tests (xorshift): half in a few hot
/// slots (so racing writers and readers meet on the same slot), the rest
/// log-spread, with zeros and values above one hour.
fn stress_value(seed: u64, i: u64) -> u64 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    match x % 64 {
        0 => 0,
        1 => ONE_HOUR_NS + (x >> 20),
        2..=33 => 100_000 + (x >> 8) % 4_000,
        _ => (x >> 8) & ((1u64 << (x % 43)) - 1),
    }
}

#[test]
fn eight_threads_recording_lose_nothing() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200_000;
    let cfg = HistogramConfig::default();
    let h = Histogram::new(cfg);
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (h, barrier) = (&h, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for i in 0..PER_THREAD {
                    h.record(stress_value(t, i));
                }
            });
        }
    });
    let reference = Histogram::new(cfg);
    let mut sum = 0u128;
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let v = stress_value(t, i);
            reference.record(v);
            sum += u128::from(stored(cfg, v));
        }
    }
    let s = h.snapshot();
    assert_eq!(s.count(), 1_600_000);
    assert_eq!(s.sum_ns(), sum);
    assert_eq!(s, reference.snapshot());
}

#[test]
fn take_interval_racing_four_writers_loses_and_duplicates_nothing() {
    const WRITERS: u64 = 4;
    const PER_THREAD: u64 = 150_000;
    let cfg = HistogramConfig::default();
    let h = Histogram::new(cfg);
    let done = AtomicBool::new(false);
    let barrier = Barrier::new(WRITERS as usize + 1);
    let (total, intervals) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (h, barrier) = (&h, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..PER_THREAD {
                        if i % 4 == 3 {
                            h.record_n(stress_value(t, i), 2);
                        } else {
                            h.record(stress_value(t, i));
                        }
                    }
                })
            })
            .collect();
        let reader = scope.spawn(|| {
            let mut total = Snapshot::empty(cfg);
            let mut intervals = 0u64;
            barrier.wait();
            while !done.load(Ordering::Acquire) {
                let interval = h.take_interval();
                assert!(interval.count() == 0 || interval.min() <= interval.max());
                total.merge(&interval).unwrap();
                intervals += 1;
            }
            (total, intervals)
        });
        writers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    let mut total = total;
    total.merge(&h.take_interval()).unwrap();

    let reference = Histogram::new(cfg);
    for t in 0..WRITERS {
        for i in 0..PER_THREAD {
            reference.record_n(stress_value(t, i), if i % 4 == 3 { 2 } else { 1 });
        }
    }
    let reference = reference.snapshot();
    assert!(intervals > 1, "the reader never raced the writers");
    assert_eq!(total.count(), WRITERS * PER_THREAD * 5 / 4);
    assert_eq!(total.count(), reference.count());
    assert_eq!(total.sum_ns(), reference.sum_ns());
    assert_eq!(total.clamped(), reference.clamped());
    assert_eq!(slots(&total), slots(&reference), "per-slot counts differ");
    assert_eq!(
        (total.min(), total.max()),
        (reference.min(), reference.max())
    );
}

#[test]
fn interval_reader_windows_add_up_while_writers_run() {
    const WRITERS: u64 = 2;
    const PER_THREAD: u64 = 100_000;
    let cfg = HistogramConfig::default();
    let h = Histogram::new(cfg);
    let done = AtomicBool::new(false);
    let mut reader = IntervalReader::new(&h);
    let windows = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let h = &h;
                scope.spawn(move || (0..PER_THREAD).for_each(|i| h.record(stress_value(t, i))))
            })
            .collect();
        let read = scope.spawn(|| {
            let mut windows = Snapshot::empty(cfg);
            while !done.load(Ordering::Acquire) {
                windows.merge(&reader.next(&h)).unwrap();
            }
            windows
        });
        writers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Ordering::Release);
        read.join().unwrap()
    });
    let mut windows = windows;
    windows.merge(&reader.next(&h)).unwrap();
    let s = h.snapshot();
    assert_eq!(s.count(), WRITERS * PER_THREAD);
    assert_eq!(slots(&windows), slots(&s));
    assert_eq!(windows.count(), s.count());
    assert_eq!(windows.sum_ns(), s.sum_ns());
}
