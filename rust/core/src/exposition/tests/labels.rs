//! Names, label values, label sets: escaping, sanitising, merging, and the
//! constant labels.

use super::*;

#[test]
fn label_values_and_help_are_escaped() {
    let r = Registry::new(HistogramConfig::default(), 100);
    r.record(SpanKind::Internal, "a\"b\nc\\d é", StatusClass::Ok, 1_000);
    let cfg = ExpositionConfig {
        const_labels: vec![("env".into(), "pro\"d\\\n".into())],
        ..ExpositionConfig::default()
    };
    let extra = vec![ExtraFamily {
        name: "x".into(),
        help: "say \"hi\"\\\nbye".into(),
        kind: ExtraKind::Gauge,
        samples: vec![(vec![("path".into(), "C:\\tmp\n\"q\"".into())], 1.0)],
    }];
    for f in [Format::Prometheus004, Format::OpenMetrics100] {
        let out = text(&r, &no_exemplars, &extra, &cfg, f);
        let ops = lines(&out, "pulsetrace_internal_operations_total");
        assert_eq!(
            ops,
            [
                r#"pulsetrace_internal_operations_total{operation="a\"b\nc\\d é",env="pro\"d\\\n"} 1"#
            ]
        );
        assert!(out.contains(r#"x{path="C:\\tmp\n\"q\"",env="pro\"d\\\n"} 1"#));
        let help = match f {
            Format::Prometheus004 => r#"# HELP x say "hi"\\\nbye"#,
            Format::OpenMetrics100 => r#"# HELP x say \"hi\"\\\nbye"#,
        };
        assert!(out.lines().any(|l| l == help), "{out}");
        // Every line is a comment or a sample: no raw newline leaked.
        assert!(out
            .lines()
            .all(|l| l.starts_with('#') || l.starts_with("pulsetrace_") || l.starts_with("x{")));
    }
}

#[test]
fn names_are_sanitised() {
    assert_eq!(
        sanitize_metric_name("http.server.duration"),
        "http_server_duration"
    );
    assert_eq!(sanitize_metric_name("9lives"), "_9lives");
    assert_eq!(sanitize_metric_name("a:b-c é"), "a:b_c__");
    assert_eq!(sanitize_metric_name(""), "_");
    assert_eq!(sanitize_label_name("a:b"), "a_b");
    assert_eq!(sanitize_label_name("1x"), "_1x");
    assert_eq!(sanitize_label_name("ok_Name9"), "ok_Name9");

    let r = Registry::new(HistogramConfig::default(), 10);
    let extra = vec![
        ExtraFamily {
            name: "2xx.rate/ms".into(),
            help: String::new(),
            kind: ExtraKind::Gauge,
            samples: vec![(vec![("my-label".into(), "v".into())], 0.5)],
        },
        ExtraFamily {
            name: "jobs.done_total".into(),
            help: "done".into(),
            kind: ExtraKind::Counter,
            samples: vec![(vec![], 3.0)],
        },
    ];
    let cfg = ExpositionConfig {
        namespace: "my app".into(),
        const_labels: vec![("service.name".into(), "s".into())],
        ..ExpositionConfig::default()
    };
    let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
    assert!(
        out.contains("# HELP _2xx_rate_ms _2xx_rate_ms\n# TYPE _2xx_rate_ms gauge\n")
            && out.contains("\n_2xx_rate_ms{my_label=\"v\",service_name=\"s\"} 0.5\n"),
        "{out}"
    );
    assert!(out.contains("# TYPE jobs_done_total counter\njobs_done_total{service_name=\"s\"} 3\n"));
    let om = text(&r, &no_exemplars, &extra, &cfg, Format::OpenMetrics100);
    assert!(om.contains("# TYPE jobs_done counter\njobs_done_total{service_name=\"s\"} 3\n"));
    let health = health_families(&cfg, &r, &[("spans_exported", "spans", 7)]);
    assert_eq!(health[0].name, "my_app_spans_exported");
    let out = text(&r, &no_exemplars, &health, &cfg, Format::Prometheus004);
    assert!(out.contains("\nmy_app_spans_exported_total{service_name=\"s\"} 7\n"));
    assert!(out.contains("\nmy_app_registry_max_keys{service_name=\"s\"} 10\n"));
    assert!(out.contains("\nmy_app_registry_overflowed_total{service_name=\"s\"} 0\n"));
}

#[test]
fn duplicate_label_sets_are_merged() {
    // A real operation named like the overflow key, and the overflow key.
    let r = Registry::new(HistogramConfig::default(), 2);
    r.record(
        SpanKind::Server,
        crate::registry::OVERFLOW_NAME,
        StatusClass::Http2xx,
        1_000_000,
    );
    r.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, 1_000_000);
    r.record(SpanKind::Server, "GET /b", StatusClass::Http2xx, 50_000_000);
    r.record(
        SpanKind::Server,
        "GET /c",
        StatusClass::Http5xx,
        2_000_000_000,
    );
    assert_eq!(r.overflowed(), 2);
    let entries = r.entries();
    assert_eq!(
        entries
            .iter()
            .filter(|e| &*e.name == crate::registry::OVERFLOW_NAME)
            .count(),
        3
    );
    for f in [Format::Prometheus004, Format::OpenMetrics100] {
        let out = text(&r, &no_exemplars, &[], &ExpositionConfig::default(), f);
        let counts = lines(&out, "http_server_request_duration_seconds_count");
        assert_eq!(
            counts,
            [
                "http_server_request_duration_seconds_count{operation=\"(overflow)\",status_class=\"2xx\"} 2",
                "http_server_request_duration_seconds_count{operation=\"(overflow)\",status_class=\"5xx\"} 1",
                "http_server_request_duration_seconds_count{operation=\"GET /a\",status_class=\"2xx\"} 1",
            ]
        );
        assert_eq!(
            lines(&out, "http_server_request_duration_seconds_sum")[0],
            "http_server_request_duration_seconds_sum{operation=\"(overflow)\",status_class=\"2xx\"} 0.051"
        );
        assert_eq!(
            lines(&out, "http_server_requests_total"),
            [
                "http_server_requests_total{operation=\"(overflow)\"} 3",
                "http_server_requests_total{operation=\"GET /a\"} 1",
            ]
        );
        assert_eq!(
            lines(&out, "http_server_errors_total")[0],
            "http_server_errors_total{operation=\"(overflow)\"} 1"
        );
        // Each series exactly once.
        let mut seen = HashSet::new();
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let series = l.rsplit_once(' ').unwrap().0;
            assert!(seen.insert(series.to_string()), "duplicate series {series}");
        }
    }
}

#[test]
fn const_labels_never_shadow_registry_labels() {
    let r = Registry::new(HistogramConfig::default(), 10);
    r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
    let http = attrs(&[("http.request.method", "GET"), ("server.address", "h")]);
    let target = TargetRef::of(SpanKind::Client, &http);
    r.record_target(SpanKind::Client, "GET", target, StatusClass::Http2xx, 1_000);
    let cfg = ExpositionConfig {
        const_labels: vec![
            ("operation".into(), "x".into()),
            ("le".into(), "x".into()),
            ("q".into(), "x".into()),
            ("region".into(), "eu".into()),
            ("region".into(), "us".into()),
            ("server.address".into(), "x".into()),
            ("http_response_status_code".into(), "x".into()),
        ],
        ..ExpositionConfig::default()
    };
    let extra = vec![ExtraFamily {
        name: "up".into(),
        help: "h".into(),
        kind: ExtraKind::Gauge,
        samples: vec![(vec![("region".into(), "local".into())], 1.0)],
    }];
    let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
    assert!(
        out.contains("http_server_requests_total{operation=\"GET /\",region=\"eu\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains("http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h\",http_response_status_code=\"2xx\",status_class=\"2xx\",region=\"eu\"} 1\n"),
        "{out}"
    );
    // Extra families keep the constant labels the registry drops.
    assert!(
        out.contains("up{region=\"local\",operation=\"x\",le=\"x\",q=\"x\",server_address=\"x\",http_response_status_code=\"x\"} 1\n"),
        "{out}"
    );
}

#[test]
fn a_systems_overflow_stays_in_its_family_and_is_counted() {
    let r = Registry::new(HistogramConfig::default(), 2);
    let c = SpanKind::Client;
    for i in 0..5u64 {
        let host = format!("h{i}");
        let a = attrs(&[("http.request.method", "GET"), ("server.address", &host)]);
        for _ in 0..=i {
            r.record_target(c, "GET", TargetRef::of(c, &a), StatusClass::Http2xx, 1_000);
        }
    }
    let sql = attrs(&[
        ("db.system.name", "sqlite"),
        ("db.operation.name", "SELECT"),
    ]);
    r.record_target(c, "SELECT", TargetRef::of(c, &sql), StatusClass::Ok, 1_000);
    let extra = health_families(&ExpositionConfig::default(), &r, &[]);
    for f in [Format::Prometheus004, Format::OpenMetrics100] {
        let out = text(&r, &no_exemplars, &extra, &ExpositionConfig::default(), f);
        assert_eq!(
            lines(&out, "http_client_request_duration_seconds_count"),
            [
                "http_client_request_duration_seconds_count{operation=\"(overflow)\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 12",
                "http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h0\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 1",
                "http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h1\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 2",
            ]
        );
        assert_eq!(
            lines(&out, "db_client_operation_duration_seconds_count"),
            ["db_client_operation_duration_seconds_count{operation=\"(overflow)\",status_class=\"ok\"} 1"]
        );
        assert_eq!(
            lines(&out, "pulsetrace_registry_overflowed_total"),
            ["pulsetrace_registry_overflowed_total 13"]
        );
        assert_eq!(
            lines(&out, "pulsetrace_registry_keys"),
            ["pulsetrace_registry_keys 2"]
        );
    }
}

#[test]
fn target_values_are_bounded_label_values() {
    let r = Registry::new(HistogramConfig::default(), 10);
    let long = format!("{}.example.com", "a".repeat(1_000));
    let a = attrs(&[("http.request.method", "GET"), ("server.address", &long)]);
    let c = SpanKind::Client;
    r.record_target(c, "GET", TargetRef::of(c, &a), StatusClass::Http2xx, 1_000);
    let out = text(
        &r,
        &no_exemplars,
        &[],
        &ExpositionConfig::default(),
        Format::Prometheus004,
    );
    let short = "a".repeat(crate::target::MAX_VALUE_BYTES);
    assert_eq!(
        lines(&out, "http_client_requests_total"),
        [format!("http_client_requests_total{{operation=\"GET\",http_request_method=\"GET\",server_address=\"{short}\"}} 1")]
    );
}

#[test]
fn a_target_in_a_family_without_target_labels_merges_by_label_set() {
    // Only CLIENT/PRODUCER/CONSUMER spans get a target from TargetRef::of;
    // a key recorded with one anyway renders without it, merged.
    let r = Registry::new(HistogramConfig::default(), 10);
    let a = attrs(&[("db.system.name", "redis")]);
    let b = attrs(&[("db.system.name", "sqlite")]);
    for t in [&a, &b] {
        let target = TargetRef::of(SpanKind::Client, t);
        r.record_target(SpanKind::Internal, "job", target, StatusClass::Ok, 1_000);
    }
    r.record(SpanKind::Internal, "job", StatusClass::Ok, 1_000);
    let out = text(
        &r,
        &no_exemplars,
        &[],
        &ExpositionConfig::default(),
        Format::Prometheus004,
    );
    assert_eq!(
        lines(&out, "pulsetrace_internal_operations_total"),
        ["pulsetrace_internal_operations_total{operation=\"job\"} 3"]
    );
}

#[test]
fn a_constant_label_a_sample_also_sets_makes_one_series() {
    // Found by the property test: `{}` and `{env="p"}` are the same series
    // once the constant label env="p" is added to the first.
    let r = Registry::new(HistogramConfig::default(), 10);
    let cfg = ExpositionConfig {
        const_labels: vec![("env".into(), "p".into())],
        ..ExpositionConfig::default()
    };
    let extra = vec![ExtraFamily {
        name: "g".into(),
        help: "h".into(),
        kind: ExtraKind::Gauge,
        samples: vec![
            (vec![], 1.0),
            (vec![("env".into(), "p".into())], 2.0),
            (vec![("env".into(), "q".into())], 3.0),
        ],
    }];
    let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
    assert_eq!(lines(&out, "g"), ["g{env=\"p\"} 2", "g{env=\"q\"} 3"]);
}
