//! `cargo bench -p pulsetrace-core --bench exposition` (about a minute): one
//! scrape's rendering of 1,000 and 10,000 histogram series, in Prometheus
//! 0.0.4 and in OpenMetrics with the registry's exemplars. The output size
//! of each is printed once to stderr.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pulsetrace_core::exposition::{render, ExpositionConfig, Format};
use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::registry::{Entry, ExemplarSample, Registry};
use pulsetrace_core::span::{SpanKind, StatusClass};
use pulsetrace_core::target::TargetRef;
use std::hint::black_box;
use std::time::Duration;

/// `series` histogram keys: half as many SERVER routes, each with a 2xx and
/// a 5xx series (plus every tenth route's CLIENT call, to have several
/// families), 50 log-spread latencies each, and an exemplar per key.
fn registry(series: usize) -> Registry {
    let r = Registry::new(HistogramConfig::default(), series + 10);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let magnitude = 17 + x % 17; // 2^17 ns (131 µs) .. 2^33 ns (8.6 s)
        (1u64 << magnitude) + (x >> 40) % (1u64 << magnitude)
    };
    let mut made = 0;
    let mut route = 0;
    while made < series {
        let name = format!("GET /api/v1/resource{route}/{{id}}");
        let keys: &[(SpanKind, StatusClass)] = if route % 10 == 9 {
            &[(SpanKind::Client, StatusClass::Ok)]
        } else {
            &[
                (SpanKind::Server, StatusClass::Http2xx),
                (SpanKind::Server, StatusClass::Http5xx),
            ]
        };
        for &(kind, class) in keys.iter().take(series - made) {
            for _ in 0..50 {
                r.record(kind, &name, class, next());
            }
            let value_ns = next();
            r.record(kind, &name, class, value_ns);
            r.record_exemplar(
                kind,
                &name,
                TargetRef::NONE,
                class,
                ExemplarSample {
                    value_ns,
                    trace_id: u128::from(value_ns) << 32 | route as u128,
                    span_id: value_ns,
                    timestamp_unix_ns: 1_700_000_000_000_000_000 + value_ns,
                },
            );
            made += 1;
        }
        route += 1;
    }
    assert_eq!(r.entries().len(), series);
    r
}

fn exposition(c: &mut Criterion) {
    let cfg = ExpositionConfig {
        const_labels: vec![("service_name".into(), "api".into())],
        ..ExpositionConfig::default()
    };
    let bounds = cfg.bucket_bounds_ns();
    for series in [1_000usize, 10_000] {
        let r = registry(series);
        let exemplars = |e: &Entry| r.exemplars(e.kind, &e.name, e.target.view(), e.class, &bounds);
        let mut group = c.benchmark_group(format!("render/{series}_series"));
        group.throughput(Throughput::Elements(series as u64));
        for (label, format) in [
            ("prometheus_0.0.4", Format::Prometheus004),
            ("openmetrics_exemplars", Format::OpenMetrics100),
        ] {
            let mut out = String::new();
            render(&r, &exemplars, &[], &cfg, format, &mut out);
            eprintln!(
                "render/{series}_series/{label}: {} bytes, {} lines",
                out.len(),
                out.lines().count()
            );
            group.bench_function(label, |b| {
                b.iter(|| {
                    out.clear();
                    render(&r, &exemplars, &[], &cfg, format, &mut out);
                    black_box(out.len())
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = exposition
}
criterion_main!(benches);
