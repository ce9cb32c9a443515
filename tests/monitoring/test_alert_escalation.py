"""Escalation as users rely on it, with real HTTP receivers and a clock the
test moves: the ladder per severity, acknowledgement stops it, resolution
notifies, cooldown deduplicates, failures are retried then recorded."""

from __future__ import annotations

import pytest
from alert_support import SECRET, Clock, Receiver, http_channels, manager, settle

from pulsetrace.monitoring.alerts import channels as _ch
from pulsetrace.monitoring.alerts.rules import Verdict, make_rule


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


class Switch:
    """A code condition the test turns on and off."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, snap):
        return Verdict(self.on, value=0.25 if self.on else 0.0, threshold=0.05, operation="GET /x")


def _rule(cond, severity="critical", **kw):
    return make_rule("err", "High error rate", cond, severity=severity, **kw)


def test_critical_alert_escalates_in_order_and_the_ack_stops_it(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond, description="Errors above 5%"))
    m.cycle()
    settle(m)
    assert rx.paths() == []
    cond.on = True
    m.cycle()
    settle(m)
    assert sorted(rx.paths()) == ["/slack", "/webhook"]  # immediately
    (slack,) = rx.of("/slack")
    assert "GET /x" in slack["json"]["text"] and "0.25" in slack["json"]["text"]
    assert "0.05" in slack["json"]["text"]
    (hook,) = rx.of("/webhook")
    assert hook["bad_signature"] is False and hook["json"]["severity"] == "critical"
    clock.advance(14)
    m.cycle()
    settle(m)
    assert len(rx.paths()) == 2  # nothing new before 15 minutes
    clock.advance(1)
    m.cycle()
    settle(m)
    assert sorted(rx.paths()[2:]) == ["/pagerduty", "/sms"]
    (pd,) = rx.of("/pagerduty")
    assert pd["json"]["routing_key"] == "routing-key-123"
    assert pd["json"]["event_action"] == "trigger"
    assert pd["json"]["dedup_key"] == hook["json"]["alert_id"]
    clock.advance(15)
    m.cycle()
    settle(m)
    assert rx.paths()[4:] == ["/phone"]
    # Acknowledged: no manager step at 60 minutes, nothing else sent.
    alert_id = hook["json"]["alert_id"]
    acked = m.acknowledge(alert_id, "alice")
    assert acked["state"] == "acknowledged" and acked["acked_by"] == "alice"
    assert acked["acked_at"] == clock.t
    clock.advance(120)
    m.cycle()
    settle(m)
    assert len(rx.paths()) == 5
    # Each step was decided once, and every delivery recorded as sent.
    rows = m.store.deliveries(alert_id)
    assert [(d["step"], d["channel"], d["status"]) for d in rows] == [
        (0, "slack", "sent"),
        (0, "webhook", "sent"),
        (1, "pagerduty", "sent"),
        (1, "sms", "sent"),
        (2, "phone", "sent"),
    ]


def test_a_high_alert_waits_its_response_time_before_paging(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond, severity="high"))
    cond.on = True
    m.cycle()
    clock.advance(30)  # the response time (30 min), not yet + 15
    m.cycle()
    settle(m)
    assert sorted(rx.paths()) == ["/slack", "/webhook"]
    clock.advance(15)
    m.cycle()
    settle(m)
    assert sorted(rx.paths()[2:]) == ["/pagerduty", "/sms"]


def test_resolution_notifies_the_channels_that_were_told_and_cooldown_dedupes(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond, cooldown="10m"))
    cond.on = True
    m.cycle()
    clock.advance(16)
    m.cycle()
    settle(m)
    assert len(rx.paths()) == 4
    cond.on = False
    m.cycle()
    settle(m)
    resolved = rx.paths()[4:]
    assert sorted(resolved) == ["/pagerduty", "/slack", "/sms", "/webhook"]
    assert rx.of("/pagerduty")[-1]["json"]["event_action"] == "resolve"
    assert rx.of("/slack")[-1]["json"]["text"].startswith("[RESOLVED]")
    # Firing again within the cooldown: deduplicated, nothing sent.
    clock.advance(5)
    cond.on = True
    m.cycle()
    settle(m)
    assert len(rx.paths()) == 8
    assert m.store.open_alert("err") is None
    # After the cooldown: a new alert.
    clock.advance(6)
    m.cycle()
    settle(m)
    assert sorted(rx.paths()[8:]) == ["/slack", "/webhook"]
    assert m.store.open_alert("err")["state"] == "firing"


def test_for_duration_must_hold_before_firing(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond, for_="5m"))
    cond.on = True
    m.cycle()
    clock.advance(4)
    m.cycle()
    assert m.store.open_alert("err") is None
    clock.advance(1)
    m.cycle()
    assert m.store.open_alert("err") is not None


def test_rule_channels_limit_who_is_told(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond, channels=[{"type": "slack", "config": {"url": "x"}, "enabled": True}]))
    cond.on = True
    m.cycle()
    settle(m)
    assert rx.paths() == ["/slack"]


def test_a_failing_channel_is_retried_then_the_final_failure_recorded(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond))
    rx.fail["/slack"] = 2  # two 500s, then accepted
    rx.fail["/webhook"] = 100  # never accepted
    cond.on = True
    m.cycle()
    settle(m)
    rows = {d["channel"]: d for d in m.store.deliveries()}
    assert rows["slack"]["status"] == "sent" and rows["slack"]["attempts"] == 3
    assert rows["webhook"]["status"] == "failed"
    assert rows["webhook"]["attempts"] == _ch.ATTEMPTS
    assert "500" in rows["webhook"]["error"]
    assert m.store.counts()["deliveries_failed"] == 1


def test_a_wrong_signature_is_refused_by_the_receiver_and_recorded_failed(tmp_path, rx):
    clock, cond = Clock(), Switch()
    chans = http_channels(rx, secret="not-" + SECRET)
    m = manager(str(tmp_path / "a.db"), rx, clock, channels=chans)
    m.add(_rule(cond))
    cond.on = True
    m.cycle()
    settle(m)
    rows = {d["channel"]: d["status"] for d in m.store.deliveries()}
    assert rows == {"slack": "sent", "webhook": "failed"}
    assert any(g["bad_signature"] for g in rx.got)


def test_a_broken_rule_is_marked_and_the_others_still_fire(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(make_rule("bad", "Broken", lambda snap: 1 / 0, severity="critical"))
    m.add(_rule(cond))
    cond.on = True
    m.cycle()
    m.cycle()
    assert m.rules["bad"].broken == "ZeroDivisionError: division by zero"
    assert m.store.open_alert("err") is not None
    assert m.cycles == 2


def test_the_message_links_an_example_kept_trace_when_one_exists(tmp_path, rx):
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock, link_base="http://mon:9464")
    m.example_trace = {"GET /x": "4bf92f3577b34da6a3ce929d0e0e4736"}.get
    m.add(_rule(cond))
    cond.on = True
    m.cycle()
    settle(m)
    (slack,) = rx.of("/slack")
    link = "http://mon:9464/apm/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    assert slack["json"]["text"].endswith(f"(example trace: {link})")
    assert rx.of("/webhook")[0]["json"]["trace_url"] == link


def test_an_ack_landing_between_the_evaluators_read_and_its_decision_wins(tmp_path, rx):
    """Another worker acknowledges while the evaluator holds a stale list
    of firing alerts: the step is not decided, nothing is sent."""
    clock, cond = Clock(), Switch()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(_rule(cond))
    cond.on = True
    m.cycle()
    settle(m)
    stale = m.store.firing()
    other = manager(str(tmp_path / "a.db"), rx, clock)  # another process's view
    assert other.acknowledge(stale[0]["id"], "bob")["state"] == "acknowledged"
    m.store.firing = lambda: stale
    clock.advance(20)
    m.escalate(clock())
    settle(m)
    assert sorted(rx.paths()) == ["/slack", "/webhook"]
    assert m.store.get(stale[0]["id"])["step"] == 0
