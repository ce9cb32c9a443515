"""Native histograms: live latency, precision, and the standard encoding."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

import pulsetrace
import three_systems
from servers import free_port

from conftest import fresh

T0 = 1_800_000_000_000_000_000


def exact_quantile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(0, int(q * len(s) + 0.999999) - 1)]


def test_latency_reports_each_operation_within_precision():
    fresh()
    rng = random.Random(1)
    durations = [int(rng.lognormvariate(13, 1)) + 1 for _ in range(5000)]
    for d in durations:
        pulsetrace.start_span("GET /users/{id}", kind="server", start_time=T0).end(end_time=T0 + d)
    for _ in range(7):
        with pulsetrace.start_span("job") as s:
            s.set_status("error")
    rows = {r["name"]: r for r in pulsetrace.latency()}
    r = rows["GET /users/{id}"]
    assert r["kind"] == "server" and r["count"] == 5000 and r["errors"] == 0
    for key, q in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)]:
        exact = exact_quantile(durations, q) / 1e9
        assert r[key] == pytest.approx(exact, rel=0.01), key
    assert r["max"] == pytest.approx(max(durations) / 1e9, rel=0.01)
    assert r["min"] == pytest.approx(min(durations) / 1e9, rel=0.01)
    assert r["mean"] == pytest.approx(sum(durations) / len(durations) / 1e9, rel=1e-6)
    assert rows["job"]["errors"] == 7


def test_histogram_encoding_decodes_with_the_reference_implementation():
    h = pulsetrace.Histogram(significant_digits=3)
    rng = random.Random(2)
    values = [int(rng.expovariate(1 / 2e6)) + 1 for _ in range(20_000)]
    for v in values:
        h.record(v)
    decoded = HdrHistogram.decode(h.encode())
    assert decoded.get_total_count() == len(values) == h.count
    for q in (50, 90, 99, 99.9):
        assert decoded.get_value_at_percentile(q) == pytest.approx(
            exact_quantile(values, q / 100), rel=0.001
        )
    assert decoded.get_max_value() == pytest.approx(max(values), rel=0.001)


def test_operation_histograms_are_exported_in_the_same_encoding():
    fresh()
    for d in (1_000, 2_000, 3_000):
        pulsetrace.start_span("op", start_time=T0).end(end_time=T0 + d)
    tracer = pulsetrace._runtime.tracer()
    decoded = HdrHistogram.decode(tracer.histogram_v2("op", "internal"))
    assert decoded.get_total_count() == 3
    assert tracer.histogram_v2("missing") is None


def test_metric_keys_are_bounded():
    fresh(max_metric_keys=10)
    for i in range(50):
        pulsetrace.start_span(f"/users/{i}").end()
    rows = {r["name"]: r for r in pulsetrace.latency()}
    assert len(rows) == 11
    assert rows["(overflow)"]["count"] == 40
    c = pulsetrace.counters()
    assert c["metric_keys"] == 10 and c["metric_keys_overflowed"] == 40


def test_histogram_rejects_bad_settings_clearly():
    with pytest.raises(ValueError, match="sigfig"):
        pulsetrace.Histogram(significant_digits=9)


def test_every_span_counts_even_when_the_intake_overflows(queued):
    """Ended spans wait in a small intake for the core's worker; when it is
    full the ending thread does the work itself. Nothing is lost, every
    trace stays whole, and readers see every span ended before them."""
    import threading

    fresh(intake_queue_size=16)
    per_thread = 3_000

    def work():
        for _ in range(per_thread):
            with pulsetrace.start_span("parent", kind="server"):
                with pulsetrace.start_span("child"):
                    pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r["name"]: r["count"] for r in pulsetrace.latency()}
    assert rows == {"parent": 4 * per_thread, "child": 4 * per_thread}
    counters = pulsetrace.counters()
    assert counters["spans_processed_inline"] > 0
    assert counters["spans_late_kept"] == 0, "no child reached its trace after the root"
    traces = pulsetrace._runtime.tracer().drain(10**9)
    assert counters["traces_kept_probabilistic"] == 4 * per_thread
    assert traces and all(len(t) == 2 for t in traces)


# ---------------------------------------------------------------------------
# Keys by system: one span name, one row per system it talks to.
# ---------------------------------------------------------------------------

STATS = {"count", "errors", "rate_limited", "min", "mean", "p50", "p90", "p99", "p999", "max"}


def keys(rows: list[dict]) -> list[tuple[dict, int, int]]:
    """(key fields, count, errors) of each row, sorted."""
    out = [({k: v for k, v in r.items() if k not in STATS}, r["count"], r["errors"]) for r in rows]
    return by_fields(out)


def by_fields(rows: list[tuple[dict, int, int]]) -> list[tuple[dict, int, int]]:
    return sorted(rows, key=lambda r: sorted(r[0].items()))


def test_latency_has_a_row_per_system_for_one_name(redis_server):
    fresh()
    three_systems.calls_named_get(redis_server, http=5, redis_gets=3, sql=2)
    rows = [r for r in pulsetrace.latency() if r["name"] == "GET"]
    client = {"name": "GET", "kind": "client"}
    assert keys(rows) == by_fields(
        [
            ({**client, "http.request.method": "GET", "server.address": "127.0.0.1"}, 5, 0),
            ({**client, "db.system.name": "redis", "db.operation.name": "GET"}, 3, 0),
            ({**client, "db.system.name": "sqlite", "db.operation.name": "GET"}, 2, 2),
        ]
    )


def test_system_keys_stay_bounded_and_the_overflow_is_counted(redis_server):
    fresh(max_metric_keys=3)
    three_systems.calls_named_get(redis_server, http=5, redis_gets=3, sql=2)
    # 20 more HTTP servers (refused connections, each its server.address):
    # beyond the bound, they fold into the overflow key and are counted.
    three_systems.refused_gets(free_port(), hosts=20)
    rows = pulsetrace.latency()
    assert len(rows) == 4
    assert keys([r for r in rows if r["name"] == "(overflow)"]) == [
        ({"name": "(overflow)", "kind": "client"}, 20, 20)
    ]
    assert sum(r["count"] for r in rows) == 30, "every span still counted"
    c = pulsetrace.counters()
    assert c["metric_keys"] == 3 and c["metric_keys_overflowed"] == 20


def test_a_long_server_address_is_cut_to_a_bounded_key():
    fresh()
    host = "a" * 300 + ".example.com"
    for _ in range(2):
        attributes = {"http.request.method": "GET", "server.address": host}
        pulsetrace.start_span("GET", kind="client", attributes=attributes).end()
    (row,) = [r for r in pulsetrace.latency() if r["name"] == "GET"]
    assert row["server.address"] == "a" * 128
    assert row["count"] == 2
