"""The alerting endpoints on a live monitoring server: status, alerts with
filters, acknowledgement behind the token, rule listings without secrets,
the test endpoint's dry run and its delivered test notice."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from alert_support import SECRET, Clock, Receiver
from monitoring_support import monitoring_server

from pulsetrace.monitoring import alerts
from pulsetrace.monitoring.alerts.rules import Verdict

TOKEN = "alert-token"


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


@contextmanager
def served(tmp_path, rx):
    """A monitoring server whose alert manager uses the receiver's channels
    (URLs carrying credentials, which no listing may show)."""
    settings = dict(
        alert_dir=str(tmp_path),
        slack_webhook_url=rx.url + "/slack?token=slack-credential",
        alert_webhook_url=rx.url + "/webhook",
        alert_webhook_secret=SECRET,
        pagerduty_routing_key="pd-routing-credential",
        pagerduty_url=rx.url + "/pagerduty",
    )
    alerts.reset()
    try:
        with monitoring_server(token=TOKEN, **settings) as client:
            m = alerts.manager()
            m.clock = Clock()
            m.deliverer._backoff = 0.01
            yield client, m
    finally:
        alerts.reset()


def _fire(m, rule_id="errors", severity="critical", active=True):
    alerts.add_alert_rule(
        id=rule_id,
        name=f"Rule {rule_id}",
        condition=lambda snap: Verdict(active, 0.3, 0.05, "GET /x"),
        severity=severity,
    )
    m.cycle()
    assert m.deliverer.wait_idle(20)


def test_alerts_listed_filtered_and_acknowledged_through_the_endpoint(tmp_path, rx):
    with served(tmp_path, rx) as (client, m):
        _fire(m, "errors", "critical")
        _fire(m, "slow", "high")
        status, _, body = client.get("/monitoring/alerts", token=TOKEN)
        assert status == 200 and len(body["alerts"]) == 2
        status, _, body = client.get("/monitoring/alerts?severity=critical", token=TOKEN)
        (alert,) = body["alerts"]
        assert alert["rule_id"] == "errors" and alert["state"] == "firing"
        assert {d["channel"] for d in alert["deliveries"]} == {"slack", "webhook"}
        # Acknowledging needs the token.
        path = f"/monitoring/alerts/{alert['id']}/acknowledge"
        assert client.post(path, {"by": "alice"})[0] == 401
        status, _, body = client.post(path, {"by": "alice"}, token=TOKEN)
        assert status == 200 and body["state"] == "acknowledged"
        assert body["acked_by"] == "alice"
        assert [h["event"] for h in body["history"]] == ["fired", "escalated", "acknowledged"]
        _, _, body = client.get("/monitoring/alerts?state=acknowledged", token=TOKEN)
        assert [a["id"] for a in body["alerts"]] == [alert["id"]]
        _, _, body = client.get("/monitoring/alerts?state=firing", token=TOKEN)
        assert [a["rule_id"] for a in body["alerts"]] == ["slow"]
        # Escalation stops for the acknowledged one only.
        m.clock.advance(45)
        m.cycle()
        assert m.deliverer.wait_idle(20)
        steps = {a["rule_id"]: a["step"] for a in m.store.alerts()}
        assert steps == {"errors": 0, "slow": 1}
        # Bad input: JSON errors.
        status, _, body = client.post("/monitoring/alerts/nope/acknowledge", {}, token=TOKEN)
        assert status == 404 and "nope" in body["error"]
        status, _, body = client.post(path, {"by": 5}, token=TOKEN)
        assert status == 400 and "'by'" in body["error"]
        status, _, body = client.get("/monitoring/alerts?state=burning", token=TOKEN)
        assert status == 400 and "burning" in body["error"]


def test_rules_and_status_never_show_a_url_key_or_password(tmp_path, rx):
    with served(tmp_path, rx) as (client, m):
        alerts.add_alert_rule(
            id="broken", name="Broken", condition=lambda snap: 1 / 0, severity="medium"
        )
        rx.fail["/webhook"] = 100
        _fire(m, "errors")
        for path in ("/monitoring/rules", "/monitoring/status", "/monitoring/alerts"):
            status, _, body = client.get(path, token=TOKEN)
            text = json.dumps(body)
            assert status == 200
            for secret in ("slack-credential", "pd-routing-credential", SECRET, rx.url):
                assert secret not in text, (path, secret)
        _, _, body = client.get("/monitoring/rules", token=TOKEN)
        by_id = {r["id"]: r for r in body["rules"]}
        assert by_id["broken"]["broken"] == "ZeroDivisionError: division by zero"
        assert by_id["errors"]["condition"] == {"kind": "code"}
        _, _, body = client.get("/monitoring/status", token=TOKEN)
        assert body["broken_rules"] == [
            {"id": "broken", "error": "ZeroDivisionError: division by zero"}
        ]
        assert body["channels"] == ["pagerduty", "slack", "webhook"]
        (failed,) = body["failed_deliveries"]
        assert failed["channel"] == "webhook" and "500" in failed["error"]
        assert body["counts"]["firing"] == 1


def test_the_test_endpoint_is_a_dry_run_unless_asked_to_deliver(tmp_path, rx):
    with served(tmp_path, rx) as (client, m):
        alerts.add_alert_rule(
            id="errors",
            name="Errors",
            condition={"kind": "gauge", "operation": "error.ratio", "threshold": 0.05},
        )
        alerts.set_gauge("error.ratio", 0.2)
        status, _, body = client.post("/monitoring/test/errors", token=TOKEN)
        assert status == 200 and body["active"] is True and body["value"] == 0.2
        assert body["would_send"]["channels"] == ["slack", "webhook"]
        assert "0.2 against a threshold of 0.05" in body["would_send"]["text"]
        assert body["delivered"] is False
        assert m.store.alerts() == [] and rx.got == []
        status, _, body = client.post("/monitoring/test/errors?deliver=true", token=TOKEN)
        assert status == 200 and body["delivered"] is True
        assert m.deliverer.wait_idle(20)
        assert sorted(rx.paths()) == ["/slack", "/webhook"]
        assert rx.of("/slack")[0]["json"]["text"].startswith("[TEST] Errors")
        assert m.store.alerts() == []  # a test notice is not an alert
        assert client.post("/monitoring/test/nope", token=TOKEN)[0] == 404
        assert client.post("/monitoring/test/errors")[0] == 401
        # Only the document's spelling: no notice goes out on a near miss.
        status, _, body = client.post("/monitoring/test/errors?deliver=TRUE", token=TOKEN)
        assert status == 400 and "deliver" in body["error"]
        assert len(rx.paths()) == 2
