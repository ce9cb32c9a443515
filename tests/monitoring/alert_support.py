"""What the alerting tests share: an HTTP receiver standing for Slack, the
generic webhook, PagerDuty and the SMS and phone webhooks (it checks each
signed request's HMAC and can be told to fail), a clock the test moves, and
a manager over a SQLite file of the test's own."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

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
