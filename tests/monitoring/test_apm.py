"""The APM endpoints against a live monitoring server: transactions with
exact counts and percentiles over windows (an injected clock), recent
traces with their span trees from the ring buffer (filters, bounds),
errors grouped by a real raised exception's type and location, and
tracing switched off and on at run time with the counts kept."""

from __future__ import annotations

import time

import pytest
from monitoring_support import monitoring_server

import pulsetrace
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.export.ring import RingBufferExporter
from pulsetrace.monitoring import apm, apm_windows

flask = pytest.importorskip("flask")
TOKEN = "apm-token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    windows = apm_windows.Windows(clock=c)
    monkeypatch.setattr(windows, "start", lambda: None)  # no thread: the test ticks
    monkeypatch.setattr(apm, "WINDOWS", windows)
    monkeypatch.setattr(apm, "_transactions_cache", {})
    yield c


@pytest.fixture
def client(clock):
    apm.RING.clear()
    with monitoring_server(token=TOKEN) as c:
        assert apm.RING in pulsetrace._runtime.exporters()
        yield c
    assert apm.RING not in pulsetrace._runtime.exporters()  # detached with the server
    apm.RING.clear()


def record(name: str, durations_ms: list[float], error: bool = False) -> None:
    """Spans of exactly the given durations (explicit start and end times)."""
    t0 = time.time_ns()
    for d in durations_ms:
        span = pulsetrace.start_span(name, kind="server", start_time=t0)
        if error:
            span.set_status("error")
        span.end(t0 + int(d * 1e6))


def op(body: dict, name: str) -> dict:
    (row,) = [r for r in body["operations"] if r["name"] == name]
    return row


def close(got: float, want: float) -> bool:
    """Within the histograms' 2 significant digits."""
    return abs(got - want) <= want * 0.01 + 1e-9


def test_transactions_since_start_have_exact_counts_and_percentiles(client):
    durations = [float(i) for i in range(1, 101)]  # 1..100 ms
    record("GET /orders", durations)
    record("GET /orders", [7.0, 9.0], error=True)
    status, _, body = client.get("/apm/transactions", token=TOKEN)
    assert status == 200 and body["window"] == "all"
    row = op(body, "GET /orders")
    assert row["kind"] == "server" and row["count"] == 102 and row["errors"] == 2
    assert row["error_rate"] == round(2 / 102, 6)
    everything = sorted([*durations, 7.0, 9.0])
    assert close(row["p50_ms"], everything[50]) and close(row["p90_ms"], everything[91])
    assert close(row["p99_ms"], everything[100]) and close(row["max_ms"], 100.0)
    assert row["throughput_per_s"] > 0


def test_windows_are_exact_differences_of_the_copies(client, clock):
    apm.WINDOWS.tick()  # t=1000: nothing yet
    record("GET /w", [100.0] * 5)
    clock.now += 30
    apm.WINDOWS.tick()  # t=1030: the five slow ones
    record("GET /w", [1.0] * 3)
    clock.now += 65  # t=1095: the 1m window starts at the t=1030 copy
    status, _, body = client.get("/apm/transactions?window=1m", token=TOKEN)
    assert status == 200 and body["window_s"] == 65
    row = op(body, "GET /w")
    assert row["count"] == 3 and close(row["p99_ms"], 1.0) and close(row["max_ms"], 1.0)
    assert row["throughput_per_s"] == round(3 / 65, 6)
    # No copy is five minutes old: the window is everything so far.
    status, _, body = client.get("/apm/transactions?window=5m", token=TOKEN)
    row = op(body, "GET /w")
    assert row["count"] == 8 and close(row["max_ms"], 100.0) and close(row["p50_ms"], 100.0)


def test_an_unknown_window_is_a_json_400(client):
    status, _, body = client.get("/apm/transactions?window=2m", token=TOKEN)
    assert status == 400 and "window must be one of" in body["error"]
    status, _, body = client.get("/apm/transactions?windw=1m", token=TOKEN)
    assert status == 400 and "windw" in body["error"]


def test_kept_copies_thin_out_with_age():
    c = Clock()
    w = apm_windows.Windows(clock=c, read=dict)
    for _ in range(500):
        w.tick()
        c.now += 10
    ages = sorted(round(c.now - at) for _, at, _ in w._ticks)
    # 7 at 10 s, then every minute to 6 minutes, then every 10 minutes to 70.
    assert ages[:7] == [10, 20, 30, 40, 50, 60, 70]
    assert len(ages) <= 20 and 3600 <= max(ages) <= 4200
    base, age = w.baseline(300)
    assert base is not None and 300 <= age <= 360
    base, age = w.baseline(3600)
    assert base is not None and 3600 <= age <= 4200


def make_app():
    app = flask.Flask("apm_test")

    def charge(amount: int) -> None:
        raise ValueError(f"card declined for {amount}")

    @app.route("/pay/<int:amount>")
    def pay(amount: int):
        with pulsetrace.start_span("charge card"):
            charge(amount)
        return "paid"

    @app.route("/ok")
    def ok():
        with pulsetrace.start_span("query", kind="client"):
            pass
        return "ok"

    return app


@pytest.fixture
def app(client):
    flask_hook.patch()
    yield make_app()
    flask_hook.unpatch()


def call(app, path: str) -> int:
    with app.test_client() as c:
        r = c.get(path)
        r.get_data()
        r.close()
        return r.status_code


def test_traces_have_span_trees_filters_and_errors_grouped(app, client):
    for _ in range(3):
        assert call(app, "/pay/5") == 500
    assert call(app, "/ok") == 200
    assert pulsetrace.flush(5)
    status, _, body = client.get("/apm/traces", token=TOKEN)
    assert status == 200
    names = [t["operation"] for t in body["traces"]]
    assert names[0] == "GET /ok" and names.count("GET /pay/<int:amount>") == 3  # newest first
    status, _, body = client.get("/apm/traces?error=true", token=TOKEN)
    assert {t["operation"] for t in body["traces"]} == {"GET /pay/<int:amount>"}
    status, _, body = client.get("/apm/traces?operation=GET%20/ok&limit=1", token=TOKEN)
    (summary,) = body["traces"]
    assert summary["error"] is False and summary["spans"] == 2
    status, _, body = client.get("/apm/traces?min_duration_ms=100000", token=TOKEN)
    assert body["traces"] == []

    status, _, trace = client.get(f"/apm/traces/{summary['trace_id']}", token=TOKEN)
    assert status == 200
    (root,) = trace["tree"]
    assert root["name"] == "GET /ok" and [c["name"] for c in root["children"]] == ["query"]
    assert root["children"][0]["parent_span_id"] == root["span_id"]

    status, _, body = client.get("/apm/errors", token=TOKEN)
    groups = {(g["type"], g["location"].rsplit(" in ", 1)[-1]): g for g in body["errors"]}
    group = groups[("ValueError", "charge")]  # the innermost frame of the raise
    assert group["count"] >= 3 and group["location"].startswith(__file__)
    assert group["first_seen"] <= group["last_seen"]
    status, _, t = client.get(f"/apm/traces/{group['sample_trace_id']}", token=TOKEN)
    assert status == 200 and t["error"] is True


def test_unknown_and_malformed_trace_ids(client):
    status, _, body = client.get("/apm/traces/" + "ab" * 16, token=TOKEN)
    assert status == 404 and "no buffered trace" in body["error"]
    status, _, body = client.get("/apm/traces/not-an-id", token=TOKEN)
    assert status == 400 and "32 hexadecimal" in body["error"]
    status, _, body = client.get("/apm/traces?min_duration_ms=slow", token=TOKEN)
    assert status == 400 and "min_duration_ms" in body["error"]


def test_control_switches_tracing_and_keeps_counts(client):
    record("GET /c", [2.0] * 4)
    status, _, body = client.post("/apm/control", {"enabled": False})
    assert status == 401  # mutating: the token is required
    status, _, body = client.post("/apm/control", {"enabled": False}, token=TOKEN)
    assert status == 200 and body["enabled"] is False
    record("GET /c", [2.0] * 10)  # not traced
    _, _, status_body = client.get("/apm/status", token=TOKEN)
    assert status_body["status"] == "disabled"
    status, _, body = client.post("/apm/control", {"enabled": True}, token=TOKEN)
    assert status == 200 and body["enabled"] is True
    record("GET /c", [2.0])
    apm._transactions_cache.clear()
    _, _, body = client.get("/apm/transactions", token=TOKEN)
    assert op(body, "GET /c")["count"] == 5  # the four before, one after
    status, _, body = client.post("/apm/control", {"enabled": "no"}, token=TOKEN)
    assert status == 400 and "'enabled'" in body["error"]
    status, _, body = client.post("/apm/control", {"sample": 1}, token=TOKEN)
    assert status == 400 and "sample" in body["error"]


def test_status_and_metrics(client):
    record("GET /m", [3.0] * 2, error=True)
    status, _, body = client.get("/apm/status", token=TOKEN)
    assert status == 200 and body["enabled"] is True and "RingBufferExporter" in body["exporters"]
    status, _, body = client.get("/apm/metrics", token=TOKEN)
    assert status == 200
    server = body["by_kind"]["server"]
    assert server["count"] == 2 and server["errors"] == 2 and server["error_rate"] == 1.0


class _Span:
    """What the ring reads of a span (SpanData's fields)."""

    def __init__(self, trace_id: int, span_id: int, size: int = 10) -> None:
        self.trace_id, self.span_id, self.parent_span_id = trace_id, span_id, None
        self.name, self.kind, self.start_time_unix_nano = "op", "internal", trace_id
        self.duration_ns, self.status, self.status_message = 1000, "unset", ""
        self.end_time_unix_nano = trace_id + 1000
        self.attributes, self.events, self.keep_reason = {"pad": "x" * size}, [], None


def test_the_ring_is_bounded_by_traces_and_bytes_newest_first():
    ring = RingBufferExporter(max_traces=3)
    ring.export([[_Span(i, 1)] for i in range(1, 6)])
    assert [t["trace_id"] for t in ring.traces()] == [f"{i:032x}" for i in (5, 4, 3)]
    assert ring.counters()["ring_traces_evicted"] == 2
    # A late span of a buffered trace joins it.
    ring.export([[_Span(4, 2)]])
    assert ring.trace(f"{4:032x}")["spans"] == 2
    small = RingBufferExporter(max_bytes=2000)
    small.export([[_Span(i, 1, size=500)] for i in range(1, 10)])
    c = small.counters()
    assert c["ring_bytes"] <= 2000 and 1 <= c["ring_traces"] < 9
    with pytest.raises(ValueError, match="max_traces"):
        RingBufferExporter(max_traces=0)


def test_control_changes_the_sample_rate_and_keeps_counts(client):
    def kept_after(name: str) -> int:
        before = apm.RING.counters()["ring_traces"]
        record(name, [2.0])
        assert pulsetrace.flush(5)
        return apm.RING.counters()["ring_traces"] - before

    assert kept_after("GET /s") == 1
    status, _, body = client.post("/apm/control", {"sample_rate": 0}, token=TOKEN)
    assert status == 200 and body["sample_rate"] == 0.0
    assert [kept_after("GET /s") for _ in range(5)] == [0] * 5  # sampled out
    status, _, body = client.post("/apm/control", {"sample_rate": 1.0}, token=TOKEN)
    assert status == 200 and body["sample_rate"] == 1.0
    assert kept_after("GET /s") == 1
    apm._transactions_cache.clear()
    _, _, body = client.get("/apm/transactions", token=TOKEN)
    assert op(body, "GET /s")["count"] == 7  # every span, kept or not
    status, _, body = client.post("/apm/control", {"sample_rate": 2}, token=TOKEN)
    assert status == 400 and "'sample_rate'" in body["error"]


def test_trace_filters_read_numbers_as_the_document_writes_them(client):
    """What Python's float() and int() read but the OpenAPI document's
    number and integer are not (underscores, spaces, a sign, other scripts'
    digits, a fraction for an integer) is a 400, as the schemathesis fuzz
    expects of schema-violating input; numbers as JSON writes them pass."""
    bad = {
        "limit": ["1_0", "%205", "5%20", "%2B5", "%D9%A3", "1.0", "1e2", "0x10", "9" * 5000],
        "min_duration_ms": ["1_0", "%201", "%2B1", "%D9%A3", "inf", "nan", "1e400", ".5"],
    }
    for name, values in bad.items():
        for v in values:
            status, _, body = client.get(f"/apm/traces?{name}={v}", token=TOKEN)
            assert status == 400 and name in body["error"], (name, v, status, body)
    good = ["limit=5", "limit=1000", "min_duration_ms=0", "min_duration_ms=2.5"]
    good += ["min_duration_ms=1e-05", "min_duration_ms=1.5E%2B16", "limit=05"]
    for q in good:
        status, _, body = client.get(f"/apm/traces?{q}", token=TOKEN)
        assert status == 200, (q, status, body)
