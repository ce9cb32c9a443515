//! Criterion benchmarks of the tail-sampling path: the decision on a
//! finished trace, and a whole trace through the pipeline (end_span ×N,
//! process, drain).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::pipeline::{BufferConfig, Core, CoreConfig};
use pulsetrace_core::registry::Registry;
use pulsetrace_core::sampler::{SamplerConfig, TailSampler};
use pulsetrace_core::span::{AttrValue, SpanKind, SpanRecord, StatusClass};
use std::hint::black_box;
use std::time::Duration;

fn trace(id: u128, spans: u64) -> Vec<SpanRecord> {
    (0..spans)
        .map(|i| {
            let mut s = SpanRecord::new(id, i + 1, i, "GET /users/{id}");
            s.duration_ns = 1_000_000 - i * 1000;
            s.attributes
                .push(("http.route".into(), AttrValue::Str("/users/{id}".into())));
            s
        })
        .collect()
}

fn decision(c: &mut Criterion) {
    let registry = Registry::new(HistogramConfig::default(), 1000);
    for i in 0..10_000u64 {
        registry.record(
            SpanKind::Internal,
            "GET /users/{id}",
            StatusClass::Ok,
            500_000 + i * 10,
        );
    }
    let sampler = TailSampler::new(SamplerConfig {
        probability: 0.1,
        slow_threshold_ns: 5_000_000,
        ..SamplerConfig::default()
    });
    sampler.refresh_thresholds(&registry);
    let spans = trace(0x1234_5678_9abc_def0_1234_5678_9abc_def0, 5);
    let mut g = c.benchmark_group("sampler");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1));
    let mut now = 1u64;
    g.bench_function("decide_5_span_trace", |b| {
        b.iter(|| {
            now += 1000;
            black_box(sampler.decide(black_box(&spans), now))
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let core = Core::new(CoreConfig {
        max_metric_keys: 1000,
        sampler: SamplerConfig {
            probability: 0.5,
            ..SamplerConfig::default()
        },
        buffer: BufferConfig {
            export_queue_spans: 1 << 20,
            ..BufferConfig::default()
        },
        access_log_entries: 0,
        ..CoreConfig::default()
    });
    let mut g = c.benchmark_group("pipeline");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1));
    let mut id = 1u128;
    g.bench_function("end_span", |b| {
        b.iter_batched(
            || {
                id += 1;
                trace(id, 1).pop().unwrap()
            },
            |s| core.end_span(s, 1),
            BatchSize::SmallInput,
        );
        core.drain_export(usize::MAX);
    });
    g.bench_function("trace_of_5_end_to_export", |b| {
        b.iter_batched(
            || {
                id += 1;
                trace(id, 5)
            },
            |spans| {
                for s in spans.into_iter().rev() {
                    core.end_span(s, 1);
                }
                black_box(core.drain_export(usize::MAX))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decision, pipeline);
criterion_main!(benches);
