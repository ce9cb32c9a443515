"""Alert e-mail through a real SMTP server (aiosmtpd) that offers STARTTLS
with a throwaway self-signed certificate: delivered encrypted to the team
of the alert's severity; a server without STARTTLS gets nothing."""

from __future__ import annotations

import datetime
import email
import email.policy
import ssl

import aiosmtpd.controller as aiosmtpd_controller
import pytest
from alert_support import Clock, Receiver, manager, settle
from cryptography import x509

from pulsetrace.config import Config
from pulsetrace.monitoring import alerts
from pulsetrace.monitoring.alerts.rules import Verdict, make_rule


def _self_signed(tmp_path):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class Inbox:
    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {
                "to": list(envelope.rcpt_tos),
                "from": envelope.mail_from,
                "tls": session.ssl is not None,
                "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
            }
        )
        return "250 OK"


@pytest.fixture
def smtp(tmp_path):
    from servers import free_port

    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    ctl = aiosmtpd_controller.Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True
    )
    ctl.start()
    yield inbox, port, cert
    ctl.stop()


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
