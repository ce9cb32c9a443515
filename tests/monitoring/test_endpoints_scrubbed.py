"""Personal data in an operation's name (a span named after a raw path)
leaves through no endpoint and no alert: the monitoring server's JSON and
the alert notices are scrubbed like exported spans."""

from __future__ import annotations

import json
import time

from test_apm import TOKEN, client, clock, record  # noqa: F401 (fixtures)

EMAIL = "maria.silva@example.com"
PHONE = "+5511987654321"
NAME = f"GET /users/{EMAIL}/{PHONE}"


def test_transactions_and_metrics_carry_no_personal_data(client):  # noqa: F811
    record(NAME, [5.0, 7.0])
    for path in ("/apm/transactions", "/apm/transactions?window=1m", "/health/metrics"):
        status, _, body = client.get(path, token=TOKEN)
        assert status == 200, path
        text = json.dumps(body)
        assert "maria.silva" not in text and "5511987654321" not in text, path
        assert "@example.com" in text, path  # the operation is there, masked
    status, _, body = client.get("/apm/transactions", token=TOKEN)
    names = [op["name"] for op in body["operations"]]
    assert "GET /users/m**********@example.com/+55*********21" in names


def test_an_alert_notice_carries_no_personal_data(tmp_path):
    from pulsetrace.monitoring.alerts.engine import Manager
    from pulsetrace.monitoring.alerts.store import Store

    engine = Manager(Store(str(tmp_path / "alerts.db")), {}, service="shop")
    alert = {
        "id": "a1",
        "rule_id": "r1",
        "name": "slow users",
        "severity": "high",
        "message": f"p99 of {NAME} is 2.0 s over 1.0 s",
        "operation": NAME,
        "fired_at": time.time(),
    }
    notice = engine.notice(alert, 1, "slack")
    sent = json.dumps(notice)
    assert "maria.silva" not in sent and "5511987654321" not in sent
    assert notice["operation"] == "GET /users/m**********@example.com/+55*********21"
