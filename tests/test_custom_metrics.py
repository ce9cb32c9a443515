"""Custom and business metrics: label rules enforced at the call site, the
series bound with its overflow counted, histograms on the native HDR
histogram, everything in the Prometheus exposition (parsed) and in the JSON
endpoints, and campaign/company ids kept out of Prometheus labels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pulsetrace
import pulsetrace.metrics as metrics
from pulsetrace import prometheus
from pulsetrace.monitoring import metrics_business, metrics_custom
from test_prometheus import parse


def monitoring_server():
    """The monitoring tests' server (tests/monitoring/monitoring_support.py)."""
    sys.path.insert(0, str(Path(__file__).parent / "monitoring"))
    import monitoring_support

    return monitoring_support.monitoring_server()


@pytest.fixture(autouse=True)
def clean():
    metrics_custom.clear()
    metrics_business.clear()
    yield
    metrics_custom.clear()
    metrics_business.clear()


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition's samples, parsed strictly and linted by promtool."""
    body, _ = prometheus.exposition()
    promtool = shutil.which("promtool")
    if promtool is not None:
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert b"error" not in r.stdout.lower() + r.stderr.lower(), r.stdout + r.stderr
    out = {}
    for s in parse(body.decode(), om=False).samples:
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "service_name"))
        out[(s.name, labels)] = s.value
    return out


def test_counter_gauge_histogram_in_the_exposition():
    sent = metrics.create_custom_counter("orders_total", "orders placed", ["plan"])
    sent.inc(plan="pro")
    sent.inc(2, plan="pro")
    sent.inc(plan="free")
    active = metrics.create_custom_gauge("active_users", "active users", ["company_id"])
    active.set(150, company_id="comp_123")
    latency = metrics.create_custom_histogram("checkout_seconds", "checkout time", ["step"])
    for v in range(1, 101):
        latency.observe(v / 100, step="pay")  # 0.01 .. 1.00
    got = samples()
    assert got[("orders_total", (("plan", "pro"),))] == 3
    assert got[("orders_total", (("plan", "free"),))] == 1
    assert got[("active_users", (("company_id", "comp_123"),))] == 150
    assert got[("checkout_seconds_count", (("step", "pay"),))] == 100
    assert got[("checkout_seconds_sum", (("step", "pay"),))] == pytest.approx(50.5)
    # A Prometheus histogram: cumulative buckets at pulsetrace's latency bounds.
    bucket = "checkout_seconds_bucket"
    assert got[(bucket, (("le", "0.1"), ("step", "pay")))] == 10
    assert got[(bucket, (("le", "0.5"), ("step", "pay")))] == 50
    assert got[(bucket, (("le", "1.0"), ("step", "pay")))] == 100
    assert got[(bucket, (("le", "+Inf"), ("step", "pay")))] == 100
    les = sorted(float(dict(k[1])["le"]) for k in got if k[0] == bucket)
    assert les == [*metrics_custom.DEFAULT_BUCKETS, float("inf")]
    assert not [k for k in got if k[0] == "checkout_seconds"]  # no quantile gauges any more


def test_a_histogram_has_the_buckets_it_was_given_and_promtool_accepts_it():
    from test_prometheus import promtool

    h = metrics.create_custom_histogram(
        "payload_bytes", "payload size", ["route"], buckets=[1000, 100, 10_000, float("inf")]
    )
    for v in (50, 100, 150, 5_000, 20_000):
        h.observe(v, route="/upload")
    h.observe(7, route="/ping")
    body, _ = prometheus.exposition()
    r = promtool("check", "metrics", stdin=body)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r
    lines = [ln for ln in body.decode().splitlines() if ln.startswith("payload_bytes")]
    upload = [ln.split("{")[0] + " " + ln.rsplit(" ", 1)[1] for ln in lines if "/upload" in ln]
    assert upload == [
        "payload_bytes_bucket 2",  # le=100
        "payload_bytes_bucket 3",  # le=1000
        "payload_bytes_bucket 4",  # le=10000
        "payload_bytes_bucket 5",  # +Inf
        "payload_bytes_sum 25300",
        "payload_bytes_count 5",
    ]
    les = [ln.split('le="')[1].split('"')[0] for ln in lines if "/upload" in ln and "le=" in ln]
    assert les == ["100.0", "1000.0", "10000.0", "+Inf"]
    # The same name with other buckets is another metric: refused.
    with pytest.raises(ValueError, match=r"buckets \[100.0, 1000.0, 10000.0\]"):
        metrics.create_custom_histogram("payload_bytes", "payload size", ["route"], buckets=[1])
    for bad, why in [
        ([], "at least one"),
        (["1"], "is a number"),
        ([0], "between 0.001 and 3.6e9"),
        ([float("nan")], "between 0.001 and 3.6e9"),
        ("1,2", "list of numbers"),
    ]:
        with pytest.raises(ValueError, match=why):
            metrics.create_custom_histogram("other_bytes", "x", buckets=bad)
    with pytest.raises(ValueError, match="only a histogram has buckets"):
        metrics_custom.create(metrics_custom.Counter, "c_total", "c", (), 10, buckets=[1])


def test_wrong_labels_and_values_raise_value_error_at_the_call():
    c = metrics.create_custom_counter("jobs_total", "jobs", ["queue"])
    with pytest.raises(ValueError, match=r"missing \['queue'\]"):
        c.inc()
    with pytest.raises(ValueError, match=r"unknown \['queu'\]"):
        c.inc(queu="a", queue="b")
    with pytest.raises(ValueError, match="must be a str or int, not list"):
        c.inc(queue=["a"])
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, queue="a")
    with pytest.raises(ValueError, match="must be a number, not str"):
        c.inc("1", queue="a")
    with pytest.raises(ValueError, match="cannot be a label name"):
        metrics.create_custom_gauge("g", "g", ["bad-label"])
    with pytest.raises(ValueError, match="metric name"):
        metrics.create_custom_gauge("9lives", "g")
    with pytest.raises(ValueError, match="exists as a counter"):
        metrics.create_custom_gauge("jobs_total", "jobs", ["queue"])
    assert metrics.create_custom_counter("jobs_total", "jobs", ["queue"]) is c
    h = metrics.create_custom_histogram("h_seconds", "h")
    with pytest.raises(ValueError, match="between 0 and 3.6e9"):
        h.observe(-1)
    with pytest.raises(ValueError, match="finite"):
        h.observe(float("nan"))


def test_series_are_bounded_and_the_overflow_counted():
    c = metrics.create_custom_counter("per_user_total", "per user", ["user"], max_series=3)
    for i in range(10):
        c.inc(user=str(i))
    got = samples()
    kept = [k for k in got if k[0] == "per_user_total"]
    assert len(kept) == 3
    assert got[("pulsetrace_custom_series_overflowed_total", (("metric", "per_user_total"),))] == 7


def test_business_metrics_keep_ids_out_of_prometheus_labels():
    for status in ("sent", "delivered", "delivered", "failed"):
        metrics.record_message(status, "text", campaign_id="camp_1", company_id="comp_9")
    metrics.record_message("delivered", "image", campaign_id="camp_2")
    metrics.record_contacts(5, company_id="comp_9")
    metrics.record_contacts(-2)
    metrics.record_template_use("welcome")
    metrics.record_api_call("evolution", "send", 0.25, ok=True)
    metrics.record_api_call("evolution", "send", 0.75, ok=False)
    metrics.record_auth_event("login", success=False)
    got = samples()
    msgs = "pulsetrace_business_messages_total"
    assert got[(msgs, (("message_type", "text"), ("status", "delivered")))] == 2
    assert got[(msgs, (("message_type", "image"), ("status", "delivered")))] == 1
    for _name, labels in got:
        for k, v in labels:
            assert "camp_" not in v and "comp_" not in v and k not in ("campaign_id", "company_id")
    calls = "pulsetrace_business_api_calls_total"
    assert got[(calls, (("api", "evolution"), ("operation", "send"), ("outcome", "failure")))] == 1
    auth = "pulsetrace_business_auth_events_total"
    assert got[(auth, (("event", "login"), ("outcome", "failure")))] == 1

    with monitoring_server() as client:
        status, _, body = client.get("/health/business-metrics")
    assert status == 200
    assert body["campaigns"]["camp_1"] == {
        "sent": 1,
        "delivered": 2,
        "failed": 1,
        "success_rate": round(2 / 3, 6),
    }
    assert body["companies"]["comp_9"]["contacts"] == 5
    assert body["contacts"]["added"] == 5 and body["contacts"]["removed"] == 2
    assert body["templates"] == {"welcome": 1.0}
    (api,) = body["external_apis"]
    assert api["count"] == 2 and api["max"] == pytest.approx(0.75, rel=0.01)
    with pytest.raises(ValueError, match="status must be a non-empty str"):
        metrics.record_message("", "text")


def test_custom_metrics_in_health_metrics_json():
    g = metrics.create_custom_gauge("queue_depth", "depth", ["queue"])
    g.set(7, queue="mail")
    with monitoring_server() as client:
        status, _, body = client.get("/health/metrics")
    assert status == 200
    (m,) = [m for m in body["custom"] if m["name"] == "queue_depth"]
    assert m["series"] == [{"labels": {"queue": "mail"}, "value": 7.0}]
    pulsetrace.configure(pulsetrace.Config())  # histograms afresh: custom metrics stay
    assert samples()[("queue_depth", (("queue", "mail"),))] == 7
