"""The built-in rules that judge windows of the live histograms, each
driven by real spans through the native histograms as the injectable clock
moves, firing and not firing: performance degradation against the
operation's own baseline, slow queries, high memory, rate-limit violations
(429s) and unusual traffic (a spike, a drop to nothing)."""

from __future__ import annotations

import json
import re

import pytest
from alert_spans import answered, timed
from alert_support import Clock, Receiver, manager, settle

from pulsetrace.health import check_memory
from pulsetrace.monitoring import health as _health
from pulsetrace.monitoring.alerts.builtin import builtin_rules
from pulsetrace.monitoring.alerts.conditions import memory_limit_bytes
from pulsetrace.monitoring.checks import rss_bytes

from conftest import fresh

MB = 1 << 20


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def setup(tmp_path, rx):
    """(manager, clock) with the built-in rule of the test only."""
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)

    def add(rule_id, **thresholds):
        (rule,) = [r for r in builtin_rules(**thresholds) if r.id == rule_id]
        m.add(rule)
        return rule

    yield m, clock, add
    settle(m)


def minutes(m, clock, n, traffic):
    """``n`` minutes: each, ``traffic()`` then an evaluation."""
    for _ in range(n):
        clock.advance(1)
        traffic()
        m.cycle()


def test_latency_degradation_against_each_operations_own_baseline(setup):
    m, clock, add = setup
    add("builtin.latency-degradation", latency_factor=3, latency_min="10ms", min_count=20)

    def usual(search_ms=40, list_ms=60, ping_ms=1):
        timed("GET /search", 30, ms=search_ms)
        timed("GET /list", 30, ms=list_ms)
        timed("GET /home", 30, ms=400)  # slow, but that is its normal
        if ping_ms is not None:
            timed("GET /ping", 30, ms=ping_ms)

    # In the first minutes the baselines hold too few requests (under 100):
    # nothing is judged.
    minutes(m, clock, 10, lambda: usual(ping_ms=None))
    assert m.rules["builtin.latency-degradation"].last_verdict.known is False
    minutes(m, clock, 55, usual)
    assert m.store.alerts() == []
    verdict = m.rules["builtin.latency-degradation"].last_verdict
    assert verdict.known is True and verdict.active is False
    # GET /list twice as slow (under the factor of 3) for 7 minutes, and a
    # new slow operation without a baseline: neither fires.
    minutes(m, clock, 7, lambda: (usual(list_ms=120), timed("GET /new", 30, ms=2000)))
    assert m.store.alerts() == []
    # GET /search four times slower: active at once, fired after `for` (5m).
    # (GET /ping five times slower too, but under latency_min: not named.)
    minutes(m, clock, 4, lambda: usual(search_ms=160, ping_ms=5))
    assert m.store.open_alert("builtin.latency-degradation") is None
    minutes(m, clock, 2, lambda: usual(search_ms=160, ping_ms=5))
    alert = m.store.open_alert("builtin.latency-degradation")
    assert alert is not None and alert["operation"] == "GET /search"
    assert alert["severity"] == "high"
    assert alert["value"] == pytest.approx(0.16, rel=0.02)
    assert alert["threshold"] == pytest.approx(3 * 0.04, rel=0.02)
    assert re.search(
        r"p99 16\d\.?\d* ms over the last 300s, [34]\.?\d*x its baseline of 40", alert["message"]
    )
    # Still slow ten minutes on: the baseline from before holds (a slow
    # stretch does not become its own baseline).
    minutes(m, clock, 10, lambda: usual(search_ms=160))
    assert m.store.open_alert("builtin.latency-degradation") is not None
    # Fast again: once the window holds only fast requests, resolved.
    minutes(m, clock, 6, usual)
    assert m.store.open_alert("builtin.latency-degradation") is None
    assert m.store.get(alert["id"])["state"] == "resolved"


def test_slow_queries_counts_database_calls_above_the_duration(setup):
    m, clock, add = setup
    add("builtin.slow-queries", slow_query="500ms", slow_queries=5, window="5m")
    pg = {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "db.collection.name": "orders",
    }
    redis = {"db.system.name": "redis", "db.operation.name": "GET"}

    def fast_queries():
        timed("SELECT orders", 50, ms=20, kind="client", attributes=pg)
        timed("GET", 50, ms=1, kind="client", attributes=redis)

    fast_queries()
    timed("SELECT orders", 4, ms=800, kind="client", attributes=pg)
    # Slow, but not database calls: a request, an HTTP call.
    timed("GET /report", 20, ms=3000)
    http = {"http.request.method": "GET", "server.address": "api.example.com"}
    timed("GET", 20, ms=3000, kind="client", attributes=http)
    m.cycle()
    assert m.store.open_alert("builtin.slow-queries") is None
    assert m.rules["builtin.slow-queries"].last_verdict.value == 4
    # Two more slow ones (one just above the duration): 6 in the window.
    minutes(
        m,
        clock,
        1,
        lambda: (
            fast_queries(),
            timed("SELECT orders", 1, ms=900, kind="client", attributes=pg),
            timed("SELECT orders", 1, ms=520, kind="client", attributes=pg),
        ),
    )
    alert = m.store.open_alert("builtin.slow-queries")
    assert alert is not None and alert["value"] == 6 and alert["threshold"] == 5
    assert alert["operation"] == "SELECT orders"
    assert "the most SELECT orders (postgresql): 6" in alert["message"]
    assert alert["severity"] == "medium"
    assert m.rules["builtin.slow-queries"].team == "dba"
    # Six minutes of fast queries: the slow ones left the window.
    minutes(m, clock, 6, fast_queries)
    assert m.store.open_alert("builtin.slow-queries") is None
    assert m.rules["builtin.slow-queries"].last_verdict.value == 0


def test_high_memory_warns_at_its_own_level(setup):
    m, clock, add = setup
    level = rss_bytes() + 96 * MB
    add("builtin.high-memory", memory_warning_bytes=level)
    m.cycle()
    minutes(m, clock, 6, lambda: None)
    assert m.store.open_alert("builtin.high-memory") is None
    block = b"\x01" * (160 * MB)  # resident: every page written
    try:
        m.cycle()
        minutes(m, clock, 4, lambda: None)
        assert m.store.open_alert("builtin.high-memory") is None  # `for` is 5m
        minutes(m, clock, 1, lambda: None)
        alert = m.store.open_alert("builtin.high-memory")
        assert alert is not None and alert["severity"] == "warning"
        assert alert["value"] > level and alert["threshold"] == level
    finally:
        del block
    minutes(m, clock, 1, lambda: None)
    assert m.store.open_alert("builtin.high-memory") is None


def test_high_memory_warns_below_the_memory_checks_limit(setup):
    m, clock, add = setup
    rss = rss_bytes()
    critical = int((rss + 64 * MB) / 0.8)  # the warning's default: 80% of it
    _health.REGISTRY.clear()
    check_memory(max_rss_bytes=critical, ttl=0.0)
    try:
        add("builtin.high-memory")
        m.cycle()
        verdict = m.rules["builtin.high-memory"].last_verdict
        assert verdict.active is False and verdict.threshold == int(critical * 0.8)
        block = b"\x01" * (160 * MB)
        try:
            m.cycle()
            minutes(m, clock, 5, lambda: None)
            alert = m.store.open_alert("builtin.high-memory")
            assert alert is not None and alert["threshold"] == int(critical * 0.8)
        finally:
            del block
    finally:
        _health.REGISTRY.clear()


def test_high_memory_without_a_memory_limit_warns_below_what_the_process_may_use():
    _health.REGISTRY.clear()
    (rule,) = [r for r in builtin_rules() if r.id == "builtin.high-memory"]
    limit = memory_limit_bytes()
    assert limit and rule.condition.level_bytes() == int(limit * 0.8)
    with pytest.raises(ValueError, match="memory_warning_bytes must be a positive integer"):
        builtin_rules(memory_warning_bytes=-1)


def test_rate_limit_violations_are_429s_of_one_operation(setup):
    m, clock, add = setup
    add("builtin.rate-limited", rate_limited=10, window="5m")

    def ok():
        answered("POST /messages", 200, 30)
        answered("GET /contacts", 200, 30)

    ok()
    answered("POST /messages", 429, 6)
    answered("GET /contacts", 429, 6)  # 12 together, but 6 each
    answered("GET /contacts", 404, 20)  # other 4xx are not rate limiting
    m.cycle()
    assert m.store.open_alert("builtin.rate-limited") is None
    assert m.rules["builtin.rate-limited"].last_verdict.value == 6
    minutes(m, clock, 1, lambda: (ok(), answered("POST /messages", 429, 5)))
    alert = m.store.open_alert("builtin.rate-limited")
    assert alert is not None and alert["operation"] == "POST /messages"
    assert alert["value"] == 11 and alert["severity"] == "medium"
    assert "429" in alert["message"]
    # No more 429s: resolved once they left the window.
    minutes(m, clock, 6, ok)
    assert m.store.open_alert("builtin.rate-limited") is None


def test_unusual_traffic_a_spike_then_a_drop_to_nothing(setup):
    m, clock, add = setup
    add("builtin.unusual-traffic", traffic_spike=3, traffic_drop=0.1)

    def usual():
        timed("GET /a", 40, ms=5)
        timed("GET /b", 20, ms=5)
        timed("job", 100, ms=1, kind="internal")  # not requests

    minutes(m, clock, 65, usual)
    assert m.store.alerts() == []
    assert m.rules["builtin.unusual-traffic"].last_verdict.known is True
    # Almost eight times the usual requests: active once the 5-minute
    # window's rate is over 3x the hour's (the second minute), fired 5
    # minutes later.
    spike = lambda: (usual(), timed("GET /a", 400, ms=5))  # noqa: E731
    minutes(m, clock, 6, spike)
    assert m.store.open_alert("builtin.unusual-traffic") is None
    minutes(m, clock, 3, spike)
    alert = m.store.open_alert("builtin.unusual-traffic")
    assert alert is not None and alert["severity"] == "business"
    assert "traffic spike" in alert["message"]
    assert alert["threshold"] == pytest.approx(3.0, rel=0.05)  # 3 x 1 request/s
    minutes(m, clock, 6, usual)
    assert m.store.open_alert("builtin.unusual-traffic") is None
    # No request at all: the window's rate drops under a tenth of the
    # baseline's after 4 or 5 silent minutes (as much of the spike as the
    # baseline still holds), fired 5 minutes later.
    minutes(m, clock, 8, lambda: None)
    assert m.store.open_alert("builtin.unusual-traffic") is None
    minutes(m, clock, 2, lambda: None)
    drop = m.store.open_alert("builtin.unusual-traffic")
    assert drop is not None and "traffic drop" in drop["message"]
    assert drop["value"] == 0


def test_built_in_rules_list_their_thresholds_and_refuse_bad_ones():
    rules = {r.id: r for r in builtin_rules(latency_factor=4, slow_query="250ms")}
    shown = json.loads(json.dumps(rules["builtin.latency-degradation"].to_json()))
    assert shown["condition"]["kind"] == "latency_degradation"
    assert shown["condition"]["factor"] == 4 and shown["condition"]["baseline"] == 3600
    assert "_held" not in shown["condition"]
    slow = rules["builtin.slow-queries"].to_json()["condition"]
    assert slow == {"kind": "slow_queries", "slower_than_s": 0.25, "count": 10, "window": 300}
    with pytest.raises(ValueError, match="latency factor must be a number more than 1"):
        builtin_rules(latency_factor=0.5)
    with pytest.raises(ValueError, match="latency baseline must be a number .* at most 3600"):
        builtin_rules(latency_baseline="2h")
    with pytest.raises(ValueError, match="traffic drop ratio"):
        builtin_rules(traffic_drop=1.5)


def test_rate_limit_violations_from_a_flask_apps_429s(setup):
    import flask

    from pulsetrace.contrib import flask as flask_hook

    m, clock, add = setup
    add("builtin.rate-limited", rate_limited=10, window="5m")
    flask_hook.patch()
    try:
        app = flask.Flask("limited")
        limited = {"now": False}

        @app.post("/campaigns/<cid>/messages")
        def send(cid):
            return ("slow down", 429) if limited["now"] else ("queued", 202)

        client = app.test_client()

        def requests(ok, refused):
            for i in range(ok + refused):
                limited["now"] = i >= ok
                client.post(f"/campaigns/{i}/messages")

        requests(ok=40, refused=5)
        m.cycle()
        assert m.store.open_alert("builtin.rate-limited") is None
        minutes(m, clock, 1, lambda: requests(ok=40, refused=6))
    finally:
        flask_hook.unpatch()
    alert = m.store.open_alert("builtin.rate-limited")
    assert alert is not None and alert["value"] == 11
    assert alert["operation"] == "POST /campaigns/<cid>/messages"
