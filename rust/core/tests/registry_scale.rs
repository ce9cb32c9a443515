//! The cost of adding a key does not grow with the registry: creating the
//! 10,000th operation costs about what creating the 10th does.
#![cfg(not(loom))]

use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::registry::Registry;
use pulsetrace_core::span::{SpanKind, StatusClass};
use std::time::Instant;

/// Seconds to create `names` new operations (one record each).
fn create(r: &Registry, names: &[String]) -> f64 {
    let t = Instant::now();
    for n in names {
        r.record(SpanKind::Server, n, StatusClass::Http2xx, 1_000_000);
    }
    t.elapsed().as_secs_f64()
}

#[test]
fn new_keys_cost_the_same_at_10_and_at_10000_keys() {
    let keys = 10_000;
    let r = Registry::new(HistogramConfig::default(), keys);
    let names: Vec<String> = (0..keys)
        .map(|i| format!("GET /api/v1/r{i}/{{id}}"))
        .collect();
    let first = create(&r, &names[..1_000]);
    create(&r, &names[1_000..9_000]);
    let last = create(&r, &names[9_000..]);
    assert_eq!(r.key_count(), keys);
    assert_eq!(r.overflowed(), 0);
    // A copy of the whole map per insert made the last thousand ~100x slower
    // than the first; O(1) inserts keep them within noise of each other.
    assert!(
        last < first * 4.0 + 0.005,
        "first 1,000 keys {:.1} ms, last 1,000 {:.1} ms",
        first * 1e3,
        last * 1e3
    );
    // Every key is found again (the records went to their own histograms).
    for n in names.iter().step_by(997) {
        let h = r.get(SpanKind::Server, n, StatusClass::Http2xx).unwrap();
        assert_eq!(h.snapshot().count(), 1);
    }
}
