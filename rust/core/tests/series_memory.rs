//! What one histogram series costs in heap bytes, counted by a global
//! allocator that sums what is live: the registry entry (operation, table
//! link, name), the histogram and its counters, and the exemplar ring of a
//! key whose traces are kept. Latencies are log-uniform with every slot of
//! their range recorded (the worst case for a range). Prints the figures:
//! `cargo test -p pulsetrace-core --test series_memory -- --nocapture` (on stderr).
#![cfg(not(loom))]

mod common;

use common::{live, Counting, SERIAL};
use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::registry::{ExemplarSample, Registry};
use pulsetrace_core::span::{SpanKind, StatusClass};
use pulsetrace_core::target::TargetRef;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `n` log-uniform values over `[lo, lo * 10^decades)`, ascending.
fn spread(lo: f64, decades: f64, n: u32) -> Vec<u64> {
    (0..n)
        .map(|i| (lo * 10f64.powf(decades * f64::from(i) / f64::from(n))) as u64)
        .collect()
}

fn name(i: usize) -> String {
    format!("GET /api/v1/resource{i}/{{id}}")
}

/// Heap bytes per series of a registry of `series` SERVER series (one per
/// operation name), each recorded with `values`, and with a full exemplar
/// ring when `exemplars`. Allocated outside the counted part: the names and
/// the registry itself (its bucket array is sized by its bound, not by use).
fn bytes_per_series(series: usize, values: &[u64], exemplars: bool) -> f64 {
    let names: Vec<String> = (0..series).map(name).collect();
    let r = Registry::new(HistogramConfig::default(), series);
    let before = live();
    for (i, n) in names.iter().enumerate() {
        for &v in values {
            r.record(SpanKind::Server, n, StatusClass::Http2xx, v);
        }
        if exemplars {
            for (k, &v) in values.iter().enumerate().take(64) {
                let sample = ExemplarSample {
                    value_ns: v,
                    trace_id: (i as u128) << 64 | k as u128,
                    span_id: k as u64 + 1,
                    timestamp_unix_ns: 1_700_000_000_000_000_000,
                };
                let none = TargetRef::NONE;
                r.record_exemplar(SpanKind::Server, n, none, StatusClass::Http2xx, sample);
            }
        }
    }
    let after = live();
    assert_eq!(r.key_count(), series);
    (after - before) as f64 / series as f64
}

/// Where a decade starts decides how many rows and groups its slots touch:
/// decades starting at 100 µs, 250 µs, ... 10 ms, the worst one counts.
const DECADE_STARTS: [f64; 7] = [1e5, 2.5e5, 5e5, 1e6, 2e6, 4e6, 1e7];

#[test]
fn a_series_spanning_one_decade_costs_at_most_4_kb() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut bare, mut with_exemplars) = (0f64, 0f64);
    for lo in DECADE_STARTS {
        let values = spread(lo, 1.0, 10_000);
        bare = bare.max(bytes_per_series(50, &values, false));
        with_exemplars = with_exemplars.max(bytes_per_series(50, &values, true));
    }
    eprintln!(
        "one decade (every slot, worst of {} starts): {bare:.0} B per series, \
         {with_exemplars:.0} B with a full exemplar ring",
        DECADE_STARTS.len()
    );
    assert!(bare <= 4096.0, "{bare:.0} B per series");
    assert!(with_exemplars <= 4096.0, "{with_exemplars:.0} B per series");
}

#[test]
fn ten_thousand_series_spanning_two_decades_cost_under_60_mb() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let values = spread(1e5, 2.0, 2_000); // 100 µs .. 10 ms
    let per_series = bytes_per_series(10_000, &values, true);
    let total_mb = per_series * 10_000.0 / 1e6;
    eprintln!(
        "two decades (100 µs .. 10 ms, every slot, exemplars): {per_series:.0} B per \
         series, {total_mb:.1} MB for 10,000 series"
    );
    assert!(total_mb < 60.0, "{total_mb:.1} MB");
}
