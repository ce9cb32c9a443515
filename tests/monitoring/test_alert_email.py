"""Alert e-mail through a real SMTP server (aiosmtpd) that offers STARTTLS
with a throwaway self-signed certificate: delivered encrypted to the team
of the alert's severity; a server without STARTTLS gets nothing."""

from __future__ import annotations

import aiosmtpd.controller as aiosmtpd_controller
import pytest
from alert_support import Clock, Inbox, Receiver, manager, settle, smtp_server

from pulsetrace.config import Config
from pulsetrace.monitoring import alerts
from pulsetrace.monitoring.alerts.rules import Verdict, make_rule


@pytest.fixture
def smtp(tmp_path):
    with smtp_server(tmp_path) as server:
        yield server


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def _config(port, cert, **kw):
    return Config(
        smtp_host="localhost",
        smtp_port=port,
        smtp_certificate=cert,
        alert_from_email="alerts@example.com",
        critical_alert_emails=("oncall@example.com", "devops@example.com"),
        high_alert_emails=("leads@example.com",),
        dba_team_emails=("dba@example.com",),
        manager_emails=("cto@example.com",),
        **kw,
    )


def test_a_critical_alert_is_mailed_over_starttls_to_oncall_and_its_team(tmp_path, smtp, rx):
    inbox, port, cert = smtp
    chans = alerts.channels_from(_config(port, cert))
    assert set(chans) == {"email", "managers"}
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock, channels=chans)
    verdict = Verdict(True, 3.0, 1.0, "db.connect")
    m.add(make_rule("db", "Database down", lambda s: verdict, severity="critical", team="dba"))
    m.cycle()
    settle(m)
    (msg,) = inbox.messages
    assert msg["tls"] is True
    assert msg["from"] == "alerts@example.com"
    assert msg["to"] == ["oncall@example.com", "devops@example.com", "dba@example.com"]
    assert msg["message"]["Subject"] == "[CRITICAL] Database down (unknown_service)"
    text = msg["message"].get_content()
    assert "operation db.connect; 3 against a threshold of 1" in text
    # An hour unacknowledged: the managers.
    clock.advance(60)
    m.cycle()
    settle(m)
    assert inbox.messages[-1]["to"] == ["cto@example.com"]
    assert [d["status"] for d in m.store.deliveries()] == ["sent", "sent"]


def test_a_server_without_starttls_gets_nothing_and_the_failure_is_recorded(tmp_path, rx):
    from servers import free_port

    inbox, port = Inbox(), free_port()
    ctl = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        chans = alerts.channels_from(_config(port, None))
        m = manager(str(tmp_path / "a.db"), rx, Clock(), channels=chans)
        m.add(make_rule("r", "R", lambda s: True, severity="critical"))
        m.cycle()
        settle(m)
    finally:
        ctl.stop()
    assert inbox.messages == []
    (row,) = m.store.deliveries()
    assert row["status"] == "failed" and "STARTTLS" in row["error"]
