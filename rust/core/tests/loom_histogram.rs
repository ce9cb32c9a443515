//! Loom model check of the histogram's interval contract. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p pulsetrace-core --test loom_histogram --release`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use pulsetrace_core::histogram::{Histogram, HistogramConfig, Snapshot};

/// sigfig 1 and `highest` 20: a single bucket of 32 slots.
const CFG: HistogramConfig = HistogramConfig {
    highest: 20,
    sigfig: 1,
};

/// Explores every interleaving with at most `preemptions` preemptions
/// (`LOOM_MAX_PREEMPTIONS` overrides). Losing a record to a non-atomic
/// read-then-clear needs one preemption; 2 keeps the run to seconds.
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

fn assert_consistent(s: &Snapshot) {
    if s.count() == 0 {
        assert_eq!((s.min(), s.max()), (0, 0));
    } else {
        assert!(s.min() <= s.max(), "{} > {}", s.min(), s.max());
        let q50 = s.value_at_quantile(0.5);
        assert!(s.min() <= q50 && q50 <= s.max());
    }
}

/// Two writers race one `take_interval`: every record lands in exactly one
/// of the two intervals (never lost, never counted twice).
#[test]
fn take_interval_loses_and_duplicates_nothing() {
    model(2, || {
        let h = Arc::new(Histogram::new(CFG));
        let writers: Vec<_> = [[3u64, 25], [3, 7]]
            .into_iter()
            .map(|values| {
                let h = h.clone();
                thread::spawn(move || values.into_iter().for_each(|v| h.record(v)))
            })
            .collect();
        let first = h.take_interval();
        assert_consistent(&first);
        writers.into_iter().for_each(|w| w.join().unwrap());
        let second = h.take_interval();
        assert_consistent(&second);

        let mut total = first;
        total.merge(&second).unwrap();
        assert_eq!(total.count(), 4);
        assert_eq!(total.sum_ns(), 3 + 20 + 3 + 7);
        assert_eq!(total.clamped(), 1);
        assert_eq!(total.count_le(3), 2);
        assert_eq!(total.count_le(7), 3);
        assert_eq!((total.min(), total.max()), (3, 20));
        assert_eq!(h.take_interval().count(), 0);
    });
}

/// A concurrent cumulative snapshot never sees more than was written and is
/// self-consistent; once writers are done, the snapshot is exact. (Under
/// loom, `record_n` of 2 goes to the 64-bit counters: the snapshot reads
/// the table being published.)
#[test]
fn concurrent_snapshot_is_consistent() {
    model(3, || {
        let h = Arc::new(Histogram::new(CFG));
        let writer = {
            let h = h.clone();
            thread::spawn(move || {
                h.record(5);
                h.record_n(2, 2);
            })
        };
        let during = h.snapshot();
        assert!(during.count() <= 3);
        assert_consistent(&during);
        writer.join().unwrap();
        let after = h.snapshot();
        assert_eq!((after.count(), after.sum_ns()), (3, 9));
        assert_eq!((after.min(), after.max()), (2, 5));
    });
}

/// Two recorders race to allocate the same (still empty) group and row while
/// a snapshot reads them: one of each is published, the loser's blocks are
/// freed, and no record is lost.
#[test]
fn racing_first_records_publish_one_row_and_lose_nothing() {
    model(3, || {
        let h = Arc::new(Histogram::new(CFG));
        let writers: Vec<_> = [3u64, 7]
            .into_iter()
            .map(|v| {
                let h = h.clone();
                thread::spawn(move || h.record(v))
            })
            .collect();
        let during = h.snapshot();
        assert!(during.count() <= 2);
        assert_consistent(&during);
        writers.into_iter().for_each(|w| w.join().unwrap());
        let after = h.snapshot();
        assert_eq!((after.count(), after.sum_ns()), (2, 10));
        assert_eq!((after.min(), after.max()), (3, 7));
        // What one record costs, in the same row (loom's atomics have their
        // own size).
        let one = Histogram::new(CFG);
        one.record(3);
        assert_eq!(h.memory_bytes(), one.memory_bytes(), "one group and row");
    });
}

/// Under loom a 32-bit counter hands over to 64-bit ones when it reaches 3:
/// two writers race to promote the histogram while an interval is taken.
/// One wide table is published (the loser's is freed), and every record
/// lands in exactly one counter of one interval.
#[test]
fn promotion_racing_an_interval_loses_and_duplicates_nothing() {
    model(2, || {
        let h = Arc::new(Histogram::new(CFG));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                thread::spawn(move || {
                    h.record(3);
                    h.record(3);
                })
            })
            .collect();
        let first = h.take_interval();
        assert_consistent(&first);
        writers.into_iter().for_each(|w| w.join().unwrap());
        h.record(9);
        let second = h.take_interval();
        assert_consistent(&second);
        let mut total = first;
        total.merge(&second).unwrap();
        assert_eq!((total.count(), total.sum_ns()), (5, 4 * 3 + 9));
        assert_eq!(total.count_le(3), 4);
        assert_eq!(h.snapshot().count(), 0);
    });
}
