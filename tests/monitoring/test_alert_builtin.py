"""The built-in rules for the alert categories, on live traffic, health
results and gauges, with thresholds the application sets."""

from __future__ import annotations

import pytest
from alert_support import Clock, Receiver, manager, settle

import pulsetrace
from pulsetrace.monitoring.alerts.builtin import builtin_rules

from conftest import fresh


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def _traffic(name, kind, ok, errors):
    for i in range(ok + errors):
        with pulsetrace.start_span(name, kind=kind) as s:
            if i < errors:
                s.set_status("error")


def _open(m):
    return {a["rule_id"]: a for a in m.store.alerts(state="firing")}


def test_builtin_rules_fire_on_what_the_process_sees(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    for rule in builtin_rules(error_ratio=0.05, min_count=20):
        m.add(rule)
    health = {"database": True, "memory": True, "cpu": True}
    m.health_fn = lambda: dict(health)
    m.gauges.update({"queue.backlog": 10, "campaign.success_rate": 0.97})
    m.cycle()
    # Clean traffic: nothing fires.
    for _ in range(3):
        clock.advance(1)
        _traffic("GET /a", "server", ok=50, errors=1)
        _traffic("GET /b", "server", ok=50, errors=1)
        _traffic("process message", "consumer", ok=20, errors=0)
        m.cycle()
    assert _open(m) == {}
    # Each operation fails 4% + 8%: together above 5% (every server
    # operation counts); the consumer fails 25%; the database check fails;
    # the campaign success rate drops. Held past each rule's `for`.
    health["database"] = False
    m.gauges["campaign.success_rate"] = 0.5
    for _ in range(11):
        clock.advance(1)
        _traffic("GET /a", "server", ok=48, errors=2)
        _traffic("GET /b", "server", ok=46, errors=4)
        _traffic("process message", "consumer", ok=15, errors=5)
        m.cycle()
    firing = _open(m)
    assert set(firing) == {
        "builtin.database-connection",
        "builtin.high-error-rate",
        "builtin.message-processing",
        "builtin.campaign-success",
    }
    assert firing["builtin.database-connection"]["severity"] == "critical"
    assert firing["builtin.high-error-rate"]["value"] == pytest.approx(0.06)
    assert firing["builtin.message-processing"]["severity"] == "business"
    assert m.rules["builtin.database-connection"].team == "dba"
    settle(m)


def test_builtin_thresholds_are_the_applications(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    for rule in builtin_rules(queue_backlog=50):
        m.add(rule)
    m.health_fn = dict
    m.gauges["queue.backlog"] = 60
    m.cycle()
    clock.advance(5)
    m.cycle()
    assert set(_open(m)) == {"builtin.queue-backlog"}
    settle(m)


def test_the_campaign_success_rule_reads_the_business_metrics_when_no_gauge_is_set(tmp_path, rx):
    from pulsetrace import metrics
    from pulsetrace.monitoring import metrics_business
    from pulsetrace.monitoring.alerts.builtin import derived_gauges

    fresh()
    metrics_business.clear()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.derive_gauges = derived_gauges
    m.add(next(r for r in builtin_rules() if r.id == "builtin.campaign-success"))
    m.health_fn = dict
    # "spring" succeeds; "fall" fails half its messages, but is judged only
    # once it has 20 of them (delivered or failed).
    for _ in range(40):
        metrics.record_message("delivered", "sms", campaign_id="spring")
    for i in range(19):
        metrics.record_message("delivered" if i % 2 else "failed", "sms", campaign_id="fall")
    metrics.record_message("queued", "sms", campaign_id="fall")  # neither: not counted
    assert derived_gauges()["campaign.success_rate"] == 1.0
    for _ in range(12):
        clock.advance(1)
        m.cycle()
    assert _open(m) == {}
    metrics.record_message("failed", "sms", campaign_id="fall")
    assert derived_gauges()["campaign.success_rate"] == pytest.approx(0.45)
    for _ in range(12):
        clock.advance(1)
        m.cycle()
    (alert,) = _open(m).values()
    assert alert["rule_id"] == "builtin.campaign-success"
    assert alert["value"] == pytest.approx(0.45)
    # The application's own gauge, when it sets one, is the one judged.
    m.gauges["campaign.success_rate"] = 0.99
    assert m.snapshot(clock()).gauges["campaign.success_rate"] == 0.99
    metrics_business.clear()
    settle(m)
