//! `cargo bench -p pulsetrace-core --bench histogram` (about 30 s).
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pulsetrace_core::histogram::{Histogram, HistogramConfig, Snapshot};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const VALUES: usize = 4096;

/// Log-spread latencies from 1 µs to about 1 s (xorshift, fixed seed).
fn values() -> Vec<u64> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..VALUES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let magnitude = 10 + x % 20; // 2^10 ns .. 2^30 ns
            (1u64 << magnitude) + (x >> 40) % (1u64 << magnitude)
        })
        .collect()
}

fn filled_snapshot(values: &[u64]) -> Snapshot {
    let h = Histogram::new(HistogramConfig::default());
    for _ in 0..25 {
        values.iter().for_each(|&v| h.record(v));
    }
    h.snapshot()
}

fn record(c: &mut Criterion) {
    let values = values();
    let h = Histogram::new(HistogramConfig::default());
    let mut i = 0usize;
    c.bench_function("record/uncontended", |b| {
        b.iter(|| {
            h.record(black_box(values[i % VALUES]));
            i = i.wrapping_add(1);
        })
    });

    for threads in [2usize, 4] {
        // Time per record per thread, all threads recording into one histogram.
        c.bench_function(&format!("record/contended_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let h = Histogram::new(HistogramConfig::default());
                let barrier = Barrier::new(threads + 1);
                // The clock starts when all writers are released and stops
                // once the scope has joined them.
                let start = std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (h, barrier, values) = (&h, &barrier, &values);
                        scope.spawn(move || {
                            barrier.wait();
                            for n in 0..iters as usize {
                                h.record(black_box(values[(n + t * 977) % VALUES]));
                            }
                        });
                    }
                    barrier.wait();
                    Instant::now()
                });
                start.elapsed()
            })
        });
    }
}

fn read(c: &mut Criterion) {
    let values = values();
    let h = Histogram::new(HistogramConfig::default());
    values.iter().for_each(|&v| h.record(v));
    c.bench_function("snapshot/sigfig2", |b| b.iter(|| black_box(h.snapshot())));
    // After the first iteration the histogram is empty: the cost of a
    // periodic take on an idle histogram (loads only, no swaps).
    c.bench_function("take_interval/idle_sigfig2", |b| {
        b.iter(|| black_box(h.take_interval()))
    });

    let s = filled_snapshot(&values);
    c.bench_function("value_at_quantile/p50", |b| {
        b.iter(|| s.value_at_quantile(black_box(0.5)))
    });
    c.bench_function("value_at_quantile/p99", |b| {
        b.iter(|| s.value_at_quantile(black_box(0.99)))
    });
    c.bench_function("to_v2_base64/sigfig2", |b| b.iter(|| s.to_v2_base64()));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = record, read
}
criterion_main!(benches);
