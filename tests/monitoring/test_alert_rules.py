"""Alert rules as users write them: declarative thresholds over the live
histograms (error ratio and rate over a window, a percentile), gauges and
health checks, loaded from JSON or YAML; bad rules are refused naming what
is wrong; code conditions see the snapshot."""

from __future__ import annotations

import json

import pytest
from alert_support import Clock, Receiver, manager

import pulsetrace
import pulsetrace.monitoring
from pulsetrace.monitoring.alerts import rules as _rules
from pulsetrace.monitoring.alerts.rules import Threshold, make_rule

from conftest import fresh


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def _requests(name, ok, errors):
    for i in range(ok + errors):
        with pulsetrace.start_span(name, kind="server") as s:
            if i < errors:
                s.set_status("error")


def test_error_ratio_over_a_window_fires_and_resolves_on_live_traffic(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    cond = Threshold("error_ratio", "GET /orders", threshold=0.05, window="5m", min_count=10)
    m.add(make_rule("errors", "Error rate", cond, severity="high"))
    _requests("GET /orders", ok=100, errors=0)
    m.cycle()  # the first evaluation: what was counted before it is a sample
    assert m.store.open_alert("errors") is None
    clock.advance(1)
    _requests("GET /orders", ok=80, errors=20)
    m.cycle()
    alert = m.store.open_alert("errors")
    assert alert is not None and alert["operation"] == "GET /orders"
    # 20 errors of the window's 200 requests.
    assert alert["value"] == pytest.approx(0.1) and alert["threshold"] == 0.05
    assert "0.1 against a threshold of 0.05" in alert["message"]
    # Ten minutes of clean traffic: the window no longer holds the errors.
    for _ in range(10):
        clock.advance(1)
        _requests("GET /orders", ok=20, errors=0)
        m.cycle()
    assert m.store.open_alert("errors") is None
    assert m.store.get(alert["id"])["state"] == "resolved"


def test_percentile_gauge_and_health_conditions(tmp_path, rx):
    fresh()
    m = manager(str(tmp_path / "a.db"), rx, Clock())
    t0 = 1_700_000_000_000_000_000
    for _ in range(50):
        pulsetrace.start_span("GET /slow", kind="server", start_time=t0).end(
            end_time=t0 + 2_000_000_000
        )
    m.add(
        make_rule(
            "p99",
            "Slow",
            {"kind": "percentile", "operation": "GET /slow", "threshold": 1.5, "min_count": 10},
        )
    )
    m.add(
        make_rule(
            "queue", "Backlog", {"kind": "gauge", "operation": "queue.depth", "threshold": 1000}
        )
    )
    m.add(make_rule("db", "DB down", {"kind": "health", "operation": "db", "threshold": 0}))
    m.health_fn = lambda: {"db": False}
    m.gauges["queue.depth"] = 10
    m.cycle()
    assert m.store.open_alert("p99")["value"] == pytest.approx(2.0, rel=0.02)
    assert m.store.open_alert("queue") is None
    assert m.store.open_alert("db") is not None
    m.gauges["queue.depth"] = 5000
    m.cycle()
    assert m.store.open_alert("queue")["value"] == 5000


def test_a_code_condition_sees_operations_and_health(tmp_path, rx):
    fresh()
    seen = {}

    def cond(operations, health):
        seen["names"] = {o["name"] for o in operations}
        seen["health"] = health
        return True

    m = manager(str(tmp_path / "a.db"), rx, Clock())
    m.health_fn = lambda: {"redis": True}
    m.add(make_rule("code", "Code", cond))
    # One required parameter (a default does not count): the snapshot.
    m.add(make_rule("snap", "Snap", lambda snap, op="job": snap.operation(op)["count"] == 1))
    _requests("job", ok=1, errors=0)
    m.cycle()
    assert "job" in seen["names"] and seen["health"] == {"redis": True}
    assert m.store.open_alert("code") is not None
    assert m.rules["snap"].broken is None and m.store.open_alert("snap") is not None


def test_rules_load_from_json_and_yaml(tmp_path):
    spec = {
        "rules": [
            {
                "id": "api-errors",
                "name": "API errors",
                "severity": "critical",
                "condition": {"kind": "error_ratio", "operation": "GET /api", "threshold": 0.1},
                "for": "2m",
                "cooldown": "15m",
                "channels": ["slack", {"type": "pagerduty", "enabled": False}],
                "team": "dba",
            }
        ]
    }
    (tmp_path / "r.json").write_text(json.dumps(spec))
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    for name in ("r.json", "r.yaml"):
        (rule,) = _rules.load(str(tmp_path / name))
        assert rule.id == "api-errors" and rule.for_s == 120 and rule.cooldown == 900
        assert rule.channels == ("slack",) and rule.team == "dba"
        assert rule.condition == Threshold("error_ratio", "GET /api", threshold=0.1)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"severity": "urgent"}, "severity 'urgent'"),
        ({"cooldown": "soon"}, "cooldown='soon'"),
        ({"condition": {"kind": "p42", "operation": "x"}}, "condition kind 'p42'"),
        ({"condition": {"kind": "rate", "operation": "x", "threshold": "high"}}, "threshold"),
        ({"channels": ["carrier-pigeon"]}, "channel type 'carrier-pigeon'"),
        ({"id": "has space"}, "rule id 'has space'"),
        ({"bogus": 1}, "unknown field 'bogus'"),
    ],
)
def test_a_bad_rule_is_refused_naming_what_is_wrong(tmp_path, change, named):
    item = {"id": "r", "name": "R", "condition": {"kind": "rate", "operation": "x"}, **change}
    (tmp_path / "r.json").write_text(json.dumps([item]))
    with pytest.raises(ValueError, match="r.json: rule 0: .*" + _escape(named)):
        _rules.load(str(tmp_path / "r.json"))


def _escape(s):
    import re

    return re.escape(s)


def test_add_alert_rule_is_the_public_api(tmp_path, monkeypatch):
    from pulsetrace.monitoring import alerts

    fresh(alert_dir=str(tmp_path))
    alerts.reset()
    try:
        rule = pulsetrace.monitoring.add_alert_rule(
            id="custom-business-alert",
            name="Low Conversion Rate",
            description="Message conversion rate below threshold",
            condition=lambda metrics, health: False,
            severity="high",
            cooldown=10,
            channels=[{"type": "slack", "config": {"url": "https://hooks/x"}, "enabled": True}],
            enabled=True,
        )
        assert alerts.manager().rules["custom-business-alert"] is rule
        assert "hooks" not in json.dumps(rule.to_json())
        assert (tmp_path / "alerts.db").exists()
    finally:
        alerts.reset()


def test_an_operation_first_seen_counts_from_zero_and_no_data_keeps_the_state(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    cond = Threshold("error_ratio", "POST /pay", threshold=0.5, window="5m", min_count=5)
    m.add(make_rule("pay", "Payments failing", cond, severity="critical"))
    m.cycle()  # before the operation's first request
    clock.advance(1)
    _requests("POST /pay", ok=2, errors=8)
    m.cycle()
    alert = m.store.open_alert("pay")
    assert alert is not None and alert["value"] == pytest.approx(0.8)
    # A fresh process (histograms empty): no data is no verdict; the alert stays.
    fresh()
    m.history.clear()
    clock.advance(1)
    m.cycle()
    m.cycle()
    assert m.store.get(alert["id"])["state"] == "firing"


def test_failures_before_the_first_evaluation_are_judged(tmp_path, rx):
    fresh()
    m = manager(str(tmp_path / "a.db"), rx, Clock())
    cond = Threshold("error_ratio", "GET /pay", threshold=0.05, min_count=5)
    m.add(make_rule("pay", "Payments failing", cond))
    _requests("GET /pay", ok=0, errors=20)
    m.cycle()
    assert m.store.open_alert("pay")["value"] == 1.0
