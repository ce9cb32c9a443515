"""Tail sampling through the public API: policies, bounds and counters."""

from __future__ import annotations

import pulsetrace

from conftest import finished, fresh


def run_traces(n: int, *, error_every: int = 0, attrs=None) -> None:
    for i in range(n):
        with pulsetrace.start_span("GET /items", kind="server", attributes=attrs) as root:
            with pulsetrace.start_span("SELECT", kind="client"):
                pass
            if error_every and i % error_every == 0:
                root.set_attribute("http.response.status_code", 500)


def test_sample_rate_zero_keeps_only_errors(exporter):
    fresh(sample_rate=0.0)
    pulsetrace.add_exporter(exporter)
    run_traces(100, error_every=10)
    spans = finished(exporter)
    assert len(spans) == 20  # 10 error traces of 2 spans
    assert {s.keep_reason for s in spans if s.local_root} == {"error"}
    c = pulsetrace.counters()
    assert c["traces_kept_error"] == 10 and c["traces_dropped_sampled_out"] == 90


def test_the_baseline_probability_is_consistent_and_converges(exporter):
    fresh(sample_rate=0.25)
    pulsetrace.add_exporter(exporter)
    run_traces(4000)
    kept = {s.trace_id for s in finished(exporter)}
    assert 850 <= len(kept) <= 1150  # 25% of 4000, with room for chance
    # Another service deciding on the same trace ids with the same rate keeps
    # the same traces: decide again on the kept ids as remote parents.
    fresh(sample_rate=0.25)
    exporter.clear()
    pulsetrace.add_exporter(exporter)
    for trace_id in list(kept)[:200]:
        ctx = pulsetrace.SpanContext(trace_id, 1)
        with pulsetrace.use_context(ctx), pulsetrace.start_span("downstream"):
            pass
    assert len({s.trace_id for s in finished(exporter)}) == 200


def test_slow_threshold_keeps_slow_traces(exporter):
    fresh(sample_rate=0.0, slow_threshold_ms=50)
    pulsetrace.add_exporter(exporter)
    t0 = 1_800_000_000_000_000_000
    pulsetrace.start_span("fast", start_time=t0).end(end_time=t0 + 10_000_000)
    pulsetrace.start_span("slow", start_time=t0).end(end_time=t0 + 60_000_000)
    spans = finished(exporter)
    assert [(s.name, s.keep_reason) for s in spans] == [("slow", "slow")]


def test_adaptive_policy_keeps_what_is_slower_than_its_own_p99(exporter):
    fresh(sample_rate=0.0, adaptive_percentile=99.0, adaptive_min_count=100)
    pulsetrace.add_exporter(exporter)
    t0 = 1_800_000_000_000_000_000
    for i in range(1000):
        pulsetrace.start_span("op", start_time=t0).end(end_time=t0 + 1_000_000 + i * 100)
    pulsetrace.flush()  # thresholds refresh off the request path
    exporter.clear()
    pulsetrace.start_span("op", start_time=t0).end(end_time=t0 + 5_000_000)
    pulsetrace.start_span("op", start_time=t0).end(end_time=t0 + 1_050_000)
    spans = finished(exporter)
    assert [(s.duration_ns, s.keep_reason) for s in spans] == [(5_000_000, "adaptive")]


def test_attribute_rules_keep_matching_traces(exporter):
    fresh(sample_rate=0.0, keep_attributes=[("tenant", "vip"), ("debug", None)])
    pulsetrace.add_exporter(exporter)
    run_traces(3, attrs={"tenant": "vip"})
    run_traces(3, attrs={"tenant": "free"})
    run_traces(2, attrs={"debug": 1})
    roots = [s for s in finished(exporter) if s.local_root]
    assert len(roots) == 5 and {s.keep_reason for s in roots} == {"attribute"}


def test_the_rate_limit_caps_kept_traces(exporter):
    fresh(sample_rate=1.0, rate_limit=10)
    pulsetrace.add_exporter(exporter)
    run_traces(100)
    c = pulsetrace.counters()
    kept = c["traces_kept_probabilistic"]
    assert 10 <= kept <= 12  # a burst of 10, plus what refills while it runs
    assert c["traces_dropped_rate_limited"] == 100 - kept


def test_late_spans_follow_their_trace(exporter):
    with pulsetrace.start_span("root") as root:
        pass
    late = pulsetrace.start_span("late", parent=root)
    late.end()
    traces = exporter.traces() or (pulsetrace.flush() and exporter.traces())
    names = sorted(s.name for t in traces for s in t)
    assert names == ["late", "root"]
    assert pulsetrace.counters()["spans_late_kept"] == 1


def test_a_failed_consumer_run_is_kept_in_a_trace_already_dropped(exporter):
    """One request sends two tasks: the first task's run ends and is dropped
    (rate 0); the second fails in its own consumer span of the same trace,
    and is kept by the error, with the child that failed."""
    fresh(sample_rate=0.0, adaptive_percentile=0.0)
    pulsetrace.add_exporter(exporter)
    producer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parent = pulsetrace.extract({"traceparent": producer})
    with pulsetrace.start_span("process ok", kind="consumer", parent=parent):
        pass
    run = pulsetrace.start_span("process broken", kind="consumer", parent=parent)
    step = pulsetrace.start_span("charge", parent=run)
    step.set_status("error", "card declined")
    step.end()
    run.set_status("error", "task failed")
    run.end()
    names = sorted(s.name for s in finished(exporter))
    assert names == ["charge", "process broken"]
    assert pulsetrace.counters()["traces_kept_error"] == 1


def test_the_export_queue_is_bounded_and_drops_are_counted(queued):
    fresh(export_queue_size=50)
    for _ in range(100):
        pulsetrace.start_span("x").end()
    c = pulsetrace.counters()
    assert c["export_queue_spans"] == 50
    assert c["spans_dropped_export_full"] == 50 and c["traces_dropped_export_full"] == 50


def test_open_traces_and_spans_per_trace_are_bounded(queued):
    fresh(max_open_traces=64, max_spans_per_trace=5, export_queue_size=10**6)
    with pulsetrace.start_span("root") as root:
        for _ in range(10):
            pulsetrace.start_span("child").end()
        # 1000 traces whose roots are still open elsewhere: bounded buffer.
        for i in range(1000):
            ctx = pulsetrace.SpanContext(root.trace_id + i + 1, 7, is_remote=False)
            pulsetrace.start_span("orphan", parent=ctx).end()
        c = pulsetrace.counters()
        assert c["open_traces"] <= 64
        assert c["traces_evicted"] >= 1000 - 64
    c = pulsetrace.counters()
    # 5 of the 10 children were over the limit. The root's trace was then
    # evicted (decided early) by the orphans; the root still ends and is kept.
    assert c["spans_dropped_trace_limit"] == 5
    exported = [s.name for t in pulsetrace._runtime.tracer().drain(10**9) for s in t]
    assert exported.count("root") == 1 and exported.count("child") == 5
