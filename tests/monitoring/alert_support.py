"""What the alerting tests share: an HTTP receiver standing for Slack, the
generic webhook, PagerDuty and the SMS and phone webhooks (it checks each
signed request's HMAC and can be told to fail), a clock the test moves, and
a manager over a SQLite file of the test's own."""

from __future__ import annotations

import datetime
import email
import email.policy
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import aiosmtpd.controller as aiosmtpd_controller
from cryptography import x509

from pulsetrace.monitoring.alerts import channels as _ch
from pulsetrace.monitoring.alerts.engine import Manager
from pulsetrace.monitoring.alerts.store import Store

SECRET = "whsec-test-secret"
SIGNED = ("/webhook", "/sms", "/phone")


class Receiver:
    """Records every request by path; a signed path whose signature does
    not verify is answered 401 (and recorded as ``bad_signature``)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.got: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}  # path -> requests still to answer 500
        self.hang: dict[str, float] = {}  # path -> seconds to wait before answering
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path, _, query = self.path.partition("?")
                ok_sig = None
                if path in SIGNED:
                    ts = self.headers.get("X-Pulsetrace-Timestamp", "")
                    want = hmac.new(
                        outer.secret.encode(), ts.encode() + b"." + body, hashlib.sha256
                    ).hexdigest()
                    given = self.headers.get("X-Pulsetrace-Signature", "")
                    ok_sig = hmac.compare_digest(given, "sha256=" + want)
                    fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
                    ok_sig = ok_sig and fresh
                with outer.lock:
                    failing = outer.fail.get(path, 0)
                    if failing:
                        outer.fail[path] = failing - 1
                    outer.got.append(
                        {
                            "path": path,
                            "query": query,
                            "json": json.loads(body),
                            "headers": dict(self.headers),
                            "bad_signature": ok_sig is False,
                            "failed": bool(failing),
                        }
                    )
                hang = outer.hang.pop(path, 0.0)
                if hang:
                    outer.got[-1]["hung"] = True
                    time.sleep(hang)
                status = 401 if ok_sig is False else 500 if failing else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        """The paths of the requests accepted, in order."""
        with self.lock:
            return [g["path"] for g in self.got if not g["failed"] and not g["bad_signature"]]

    def of(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [g for g in self.got if g["path"] == path and not g["failed"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, minutes: float) -> None:
        self.t += minutes * 60.0


def http_channels(rx: Any, secret: Optional[str] = SECRET) -> dict[str, _ch.Channel]:
    """Every HTTP channel, to ``rx`` (a Receiver or its URL)."""
    url = rx if isinstance(rx, str) else rx.url
    return {
        "slack": _ch.Slack(url + "/slack"),
        "webhook": _ch.Webhook("webhook", url + "/webhook", secret),
        "pagerduty": _ch.PagerDuty("routing-key-123", url + "/pagerduty"),
        "sms": _ch.Webhook("sms", url + "/sms", secret),
        "phone": _ch.Webhook("phone", url + "/phone", secret),
    }


def manager(path: str, rx: Receiver, clock: Clock, **kw: Any) -> Manager:
    chans = kw.pop("channels", None) or http_channels(rx)
    return Manager(Store(path), chans, clock=clock, backoff_s=0.01, **kw)


def settle(m: Manager) -> None:
    """Wait until every delivery queued so far has its outcome."""
    assert m.deliverer.wait_idle(20.0)


# --- a real SMTP server with STARTTLS (aiosmtpd) -------------------------------


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


@contextmanager
def smtp_server(tmp_path: Any) -> Iterator[tuple[Inbox, int, str]]:
    """An SMTP server on a free port that requires STARTTLS, with a
    throwaway self-signed certificate: (inbox, port, the certificate's path)."""
    from servers import free_port

    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    inbox = Inbox()
    ctl = aiosmtpd_controller.Controller(
        inbox, hostname="127.0.0.1", port=free_port(), tls_context=tls, require_starttls=True
    )
    ctl.start()
    try:
        yield inbox, ctl.port, cert
    finally:
        ctl.stop()
