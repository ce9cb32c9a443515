//! Buckets, sums, quantiles and exemplars; extra families; empty and
//! repeated renders.

use super::golden::{golden_exemplars, golden_setup, GOLDEN_OPENMETRICS};
use super::*;

#[test]
fn buckets_are_cumulative_count_le_and_inf_is_count() {
    let r = Registry::new(HistogramConfig::default(), 10);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut sum = 0u128;
    for _ in 0..5_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = x % 20_000_000_000;
        sum += u128::from(v.max(1));
        r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, v);
    }
    let cfg = ExpositionConfig::default();
    let out = text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004);
    let buckets: Vec<u64> = lines(&out, "http_server_request_duration_seconds_bucket")
        .iter()
        .map(|l| value(l).parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), DEFAULT_BUCKETS_S.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let snap = r
        .get(SpanKind::Server, "GET /", StatusClass::Http2xx)
        .unwrap()
        .snapshot();
    for (b, &(_, ns)) in buckets.iter().zip(cfg.bounds().iter()) {
        assert_eq!(*b, snap.count_le(ns));
    }
    assert_eq!(buckets.last(), Some(&5_000));
    let count = lines(&out, "http_server_request_duration_seconds_count");
    assert_eq!(value(count[0]), "5000");
    let sum_line = lines(&out, "http_server_request_duration_seconds_sum");
    let secs = sum / 1_000_000_000;
    let frac = format!("{:09}", sum % 1_000_000_000);
    let expected = format!("{secs}.{}", frac.trim_end_matches('0'));
    assert_eq!(value(sum_line[0]), expected.trim_end_matches('.'));

    // The one-pass cumulative counts equal count_le at any bound.
    let bounds: Vec<u64> = (0..200).map(|i| i * 97_000_000 + i * i).collect();
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let d = Dist::read(&snap, &mut buf);
    cumulative_buckets(&d, &buf, &bounds, &mut got);
    let want: Vec<u64> = bounds.iter().map(|&b| snap.count_le(b)).collect();
    assert_eq!(got, want);
    let empty = crate::histogram::Snapshot::empty(HistogramConfig::default());
    got.clear();
    let d = Dist::read(&empty, &mut buf);
    cumulative_buckets(&d, &buf, &bounds, &mut got);
    assert!(got.iter().all(|&c| c == 0));
}

#[test]
fn exemplars_land_in_their_bucket_and_only_in_openmetrics() {
    let r = Registry::new(HistogramConfig::default(), 10);
    for v in [2_000_000, 60_000_000, 70_000_000, 30_000_000_000] {
        r.record(SpanKind::Client, "GET", StatusClass::Ok, v);
    }
    let cfg = ExpositionConfig {
        buckets_s: vec![0.01, 0.1, 1.0],
        ..ExpositionConfig::default()
    };
    let calls = std::cell::Cell::new(0);
    let exemplars = |_: &Entry| {
        calls.set(calls.get() + 1);
        vec![
            // Misplaced (0.06 s belongs to le=0.1): moved there.
            Some(ex(60_000_000, 5_000_000_000)),
            // Same bucket, newer: wins.
            Some(ex(70_000_000, 6_000_000_000)),
            // le=1.0 counts nothing beyond le=0.1... but its cumulative
            // count is not zero, so it is kept.
            Some(ex(500_000_000, 0)),
            // Above every bound: the +Inf bucket.
            Some(ex(30_000_000_000, 7_000_000_001)),
        ]
    };
    let plain = text(&r, &exemplars, &[], &cfg, Format::Prometheus004);
    assert_eq!(calls.get(), 0, "0.0.4 never asks for exemplars");
    assert!(!plain.contains("trace_id"));
    let om = text(&r, &exemplars, &[], &cfg, Format::OpenMetrics100);
    assert_eq!(calls.get(), 1);
    let b = lines(&om, "pulsetrace_client_operation_duration_seconds_bucket");
    let t = "trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"";
    assert_eq!(b[0], "pulsetrace_client_operation_duration_seconds_bucket{operation=\"GET\",status_class=\"ok\",le=\"0.01\"} 1");
    assert_eq!(b[1], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"0.1\"}} 3 # {{{t}}} 0.07 6"));
    assert_eq!(b[2], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"1.0\"}} 3 # {{{t}}} 0.5"));
    assert_eq!(b[3], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"+Inf\"}} 4 # {{{t}}} 30 7.000000001"));
    // Every exemplar value is within its bucket: (previous bound, le].
    let mut prev = 0.0f64;
    for l in &b {
        let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        if let Some(e) = l.split(" # ").nth(1) {
            let v: f64 = e
                .split("} ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(prev < v && v <= le, "{l}");
        }
        prev = le;
    }

    // No exemplar on a bucket that counts nothing.
    let r = Registry::new(HistogramConfig::default(), 10);
    r.record(SpanKind::Client, "GET", StatusClass::Ok, 500_000_000);
    let om = text(
        &r,
        &|_: &Entry| vec![Some(ex(1_000, 1))],
        &[],
        &cfg,
        Format::OpenMetrics100,
    );
    assert!(!om.contains("trace_id"), "{om}");
}

#[test]
fn non_finite_values_and_empty_histograms() {
    let r = Registry::new(HistogramConfig::default(), 10);
    r.record(SpanKind::Internal, "job", StatusClass::Ok, 5);
    let _ = r
        .get(SpanKind::Internal, "job", StatusClass::Ok)
        .unwrap()
        .take_interval();
    let extra = vec![ExtraFamily {
        name: "g".into(),
        help: "h".into(),
        kind: ExtraKind::Gauge,
        samples: vec![
            (vec![("v".into(), "nan".into())], f64::NAN),
            (vec![("v".into(), "pinf".into())], f64::INFINITY),
            (vec![("v".into(), "ninf".into())], f64::NEG_INFINITY),
            (vec![("v".into(), "big".into())], 1e21),
            (vec![("v".into(), "tenth".into())], 0.1),
            (vec![("v".into(), "neg".into())], -3.0),
            (vec![("v".into(), "negzero".into())], -0.0),
        ],
    }];
    let out = text(
        &r,
        &no_exemplars,
        &extra,
        &ExpositionConfig::default(),
        Format::OpenMetrics100,
    );
    for want in [
        "g{v=\"big\"} 1e21",
        "g{v=\"nan\"} NaN",
        "g{v=\"neg\"} -3",
        "g{v=\"negzero\"} 0",
        "g{v=\"ninf\"} -Inf",
        "g{v=\"pinf\"} +Inf",
        "g{v=\"tenth\"} 0.1",
        "pulsetrace_internal_operation_duration_quantile_seconds{operation=\"job\",q=\"0.99\"} NaN",
        "pulsetrace_internal_operation_duration_seconds_bucket{operation=\"job\",status_class=\"ok\",le=\"+Inf\"} 0",
        "pulsetrace_internal_operation_duration_seconds_sum{operation=\"job\",status_class=\"ok\"} 0",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing in\n{out}");
    }
    let mut s = String::new();
    write_seconds(&mut s, 3);
    s.push(' ');
    write_seconds(&mut s, 12_000_000_000);
    s.push(' ');
    write_seconds(&mut s, u128::MAX);
    assert_eq!(s, "0.000000003 12 340282366920938463463374607431.768211455");
}

#[test]
fn extra_families_merge_samples_and_never_collide() {
    let r = Registry::new(HistogramConfig::default(), 10);
    r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
    let fam = |name: &str, kind, samples: Vec<(Vec<(String, String)>, f64)>| ExtraFamily {
        name: name.into(),
        help: "h".into(),
        kind,
        samples,
    };
    let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let extra = vec![
        fam(
            "c",
            ExtraKind::Counter,
            vec![
                (l(&[("b", "2"), ("a", "1")]), 1.0),
                (l(&[("a", "1"), ("b", "2")]), 2.0),
                (l(&[("a", "0")]), 5.0),
            ],
        ),
        fam("g", ExtraKind::Gauge, vec![(l(&[]), 1.0), (l(&[]), 4.0)]),
        // Collisions: skipped.
        fam("c_total", ExtraKind::Counter, vec![(l(&[]), 9.0)]),
        fam("c", ExtraKind::Gauge, vec![(l(&[]), 9.0)]),
        fam(
            "http_server_request_duration_seconds_count",
            ExtraKind::Gauge,
            vec![(l(&[]), 9.0)],
        ),
        fam(
            "http_server_requests",
            ExtraKind::Counter,
            vec![(l(&[]), 9.0)],
        ),
        // A duplicate label name in one sample: the first is kept.
        fam(
            "d",
            ExtraKind::Gauge,
            vec![(l(&[("x", "1"), ("x", "2")]), 1.0)],
        ),
    ];
    let out = text(
        &r,
        &no_exemplars,
        &extra,
        &ExpositionConfig::default(),
        Format::Prometheus004,
    );
    assert!(!out.contains(" 9\n"), "{out}");
    assert!(
        out.contains("# TYPE c_total counter\nc_total{a=\"0\"} 5\nc_total{a=\"1\",b=\"2\"} 3\n")
    );
    assert!(out.contains("# TYPE g gauge\ng 4\n"));
    assert!(out.contains("\nd{x=\"1\"} 1\n"));
    assert_eq!(out.matches("# TYPE ").count(), 4 + 3);
}

#[test]
fn bucket_and_quantile_config_is_normalised() {
    let cfg = ExpositionConfig {
        buckets_s: vec![
            1.0,
            f64::NAN,
            0.5,
            -1.0,
            0.0,
            f64::INFINITY,
            0.5,
            0.5000000000001,
        ],
        quantiles: vec![0.99, 2.0, -0.1, f64::NAN, 0.5, 0.5],
        ..ExpositionConfig::default()
    };
    assert_eq!(cfg.bounds(), vec![(0.5, 500_000_000), (1.0, 1_000_000_000)]);
    assert_eq!(cfg.bucket_bounds_ns(), vec![500_000_000, 1_000_000_000]);
    assert_eq!(cfg.quantiles_used(), vec![0.5, 0.99]);
    let r = Registry::new(HistogramConfig::default(), 10);
    r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
    let out = text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004);
    assert_eq!(
        lines(&out, "http_server_request_duration_seconds_bucket").len(),
        3
    );
    assert_eq!(
        lines(&out, "http_server_request_duration_quantile_seconds").len(),
        2
    );
    let none = ExpositionConfig {
        quantiles: Vec::new(),
        ..ExpositionConfig::default()
    };
    let out = text(&r, &no_exemplars, &[], &none, Format::Prometheus004);
    assert!(!out.contains("quantile"));
}

#[test]
fn empty_registry_renders_only_extras_and_eof() {
    let r = Registry::new(HistogramConfig::default(), 10);
    let cfg = ExpositionConfig::default();
    assert_eq!(
        text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004),
        ""
    );
    assert_eq!(
        text(&r, &no_exemplars, &[], &cfg, Format::OpenMetrics100),
        "# EOF\n"
    );
}

#[test]
fn renders_are_stable_and_append() {
    let (r, cfg, extra) = golden_setup();
    let mut out = String::from("prefix\n");
    render(
        &r,
        &golden_exemplars,
        &extra,
        &cfg,
        Format::OpenMetrics100,
        &mut out,
    );
    assert_eq!(out, format!("prefix\n{GOLDEN_OPENMETRICS}"));
    r.record(SpanKind::Server, "A /first", StatusClass::Http2xx, 1);
    let again = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
    let again2 = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
    assert_eq!(again, again2);
    let first = lines(&again, "http_server_requests_total");
    assert!(first[0].contains("A /first"), "{first:?}");
}

/// An extra histogram family (an application's custom histogram): samples
/// with `le` are cumulative buckets, the one without is the sum; rendered
/// in ascending `le` with `+Inf` and `_count`, series by label set.
#[test]
fn an_extra_histogram_renders_buckets_sum_and_count() {
    let r = Registry::new(HistogramConfig::default(), 100);
    let s = |labels: &[(&str, &str)], v: f64| {
        let l = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (l, v)
    };
    let extra = vec![ExtraFamily {
        name: "payload_bytes".into(),
        help: "payload size".into(),
        kind: ExtraKind::Histogram,
        samples: vec![
            s(&[("route", "/b"), ("le", "+Inf")], 1.0),
            s(&[("route", "/a"), ("le", "1000")], 3.0),
            s(&[("route", "/a"), ("le", "100")], 2.0),
            s(&[("route", "/a"), ("le", "+Inf")], 5.0),
            s(&[("route", "/a")], 25300.0),
            s(&[("route", "/b"), ("le", "100")], 1.0),
            s(&[("route", "/b"), ("le", "not a number")], 9.0),
            s(&[("route", "/b")], 7.0),
        ],
    }];
    for f in [Format::Prometheus004, Format::OpenMetrics100] {
        let out = text(&r, &no_exemplars, &extra, &ExpositionConfig::default(), f);
        assert!(out.contains("# TYPE payload_bytes histogram\n"), "{out}");
        assert_eq!(
            lines(&out, "payload_bytes_bucket"),
            [
                r#"payload_bytes_bucket{route="/a",le="100.0"} 2"#,
                r#"payload_bytes_bucket{route="/a",le="1000.0"} 3"#,
                r#"payload_bytes_bucket{route="/a",le="+Inf"} 5"#,
                r#"payload_bytes_bucket{route="/b",le="100.0"} 1"#,
                r#"payload_bytes_bucket{route="/b",le="+Inf"} 1"#,
            ]
        );
        assert_eq!(
            lines(&out, "payload_bytes_sum"),
            [
                r#"payload_bytes_sum{route="/a"} 25300"#,
                r#"payload_bytes_sum{route="/b"} 7"#
            ]
        );
        assert_eq!(
            lines(&out, "payload_bytes_count"),
            [
                r#"payload_bytes_count{route="/a"} 5"#,
                r#"payload_bytes_count{route="/b"} 1"#
            ]
        );
    }
}
