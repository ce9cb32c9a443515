"""Notification channels and their background delivery.

Channels are configured once (from the environment, or in code) and rules
refer to them by type, so rule listings never hold a URL, key or password;
a channel's ``repr`` shows neither. Every delivery runs on the delivery
thread under pulsetrace's suppression context: nothing it does is traced,
so a failing channel cannot feed an alert about itself.

Webhooks (generic, SMS, phone) are signed: ``X-Pulsetrace-Timestamp: <unix
seconds>`` and ``X-Pulsetrace-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>." + body>`` with ``ALERT_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import queue
import smtplib
import ssl
import threading
import time
import urllib.request
from email.message import EmailMessage
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace._suppress import suppressed

TIMEOUT_S = 10.0
#: Attempts of one delivery, and the waits between them (doubling).
ATTEMPTS = 4
FIRST_BACKOFF_S = 1.0
QUEUE_SIZE = 1000


class Channel:
    """Sends one notice (a dict: see ``engine.notice``); raises on failure."""

    type = "channel"

    def send(self, notice: dict[str, Any]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type}>"


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    req = urllib.request.Request(url, data=body, method="POST")
    for k, v in headers.items():
        req.add_header(k, v)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        resp.read(65536)
        if not 200 <= resp.status < 300:
            raise OSError(f"HTTP {resp.status}")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Webhook(Channel):
    """A JSON POST of the notice, signed when a secret is set (the generic
    webhook, SMS and phone channels)."""

    def __init__(self, type: str, url: str, secret: Optional[str] = None) -> None:
        self.type, self._url, self._secret = type, url, secret

    def send(self, notice: dict[str, Any]) -> None:
        body = json.dumps(notice, sort_keys=True).encode()
        ts = str(int(time.time()))
        headers = {"X-Pulsetrace-Timestamp": ts, "X-Pulsetrace-Delivery": notice["delivery"]}
        if self._secret:
            headers["X-Pulsetrace-Signature"] = sign(self._secret, ts, body)
        _post(self._url, body, headers)


class Slack(Channel):
    type = "slack"

    def __init__(self, url: str) -> None:
        self._url = url

    def send(self, notice: dict[str, Any]) -> None:
        body = json.dumps({"text": notice["text"]}).encode()
        _post(self._url, body, {"X-Pulsetrace-Delivery": notice["delivery"]})


_PD_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "warning": "warning"}


class PagerDuty(Channel):
    """PagerDuty Events API v2: trigger, and resolve on resolution (the
    alert's id is the ``dedup_key``)."""

    type = "pagerduty"

    def __init__(self, routing_key: str, url: str) -> None:
        self._key, self._url = routing_key, url

    def send(self, notice: dict[str, Any]) -> None:
        event: dict[str, Any] = {
            "routing_key": self._key,
            "event_action": "resolve" if notice["kind"] == "resolved" else "trigger",
            "dedup_key": notice["alert_id"],
        }
        if notice["kind"] != "resolved":
            event["payload"] = {
                "summary": notice["text"][:1024],
                "source": notice["service"],
                "severity": _PD_SEVERITY.get(notice["severity"], "info"),
                "custom_details": {k: notice[k] for k in ("value", "threshold", "operation")},
            }
            if notice.get("trace_url"):
                event["links"] = [{"href": notice["trace_url"], "text": "example trace"}]
        _post(self._url, json.dumps(event).encode(), {})


class Email(Channel):
    """E-mail over SMTP; STARTTLS is required (a server that does not offer
    it is a failed delivery: nothing is sent in clear)."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Callable[[dict[str, Any]], list[str]],
        username: Optional[str] = None,
        password: Optional[str] = None,
        context: Optional[ssl.SSLContext] = None,
        type: str = "email",
    ) -> None:
        self.type = type
        self._host, self._port, self._sender = host, port, sender
        self._recipients, self._user, self._password = recipients, username, password
        self._context = context or ssl.create_default_context()

    def send(self, notice: dict[str, Any]) -> None:
        to = self._recipients(notice)
        if not to:
            raise ValueError(f"no recipients for a {notice['severity']} alert")
        msg = EmailMessage()
        msg["From"], msg["To"] = self._sender, ", ".join(to)
        msg["Subject"] = notice["subject"]
        msg["X-Pulsetrace-Delivery"] = notice["delivery"]
        msg.set_content(notice["text"])
        with smtplib.SMTP(self._host, self._port, timeout=TIMEOUT_S) as smtp:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise OSError("the SMTP server does not offer STARTTLS")
            smtp.starttls(context=self._context)
            smtp.ehlo()
            if self._user:
                smtp.login(self._user, self._password or "")
            smtp.send_message(msg)


Done = Callable[[dict[str, Any], bool, int, Optional[str]], None]


class Deliverer:
    """A bounded queue of deliveries and the one thread that sends them,
    retrying with doubling backoff; ``done(item, ok, attempts, error)`` is
    called once per delivery with its final outcome."""

    def __init__(
        self, channels: dict[str, Channel], done: Done, backoff_s: float = FIRST_BACKOFF_S
    ) -> None:
        self.channels, self._done, self._backoff = channels, done, backoff_s
        self._q: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._retry: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._thread: Optional[threading.Thread] = None

    def submit(self, item: dict[str, Any]) -> None:
        """Queue ``item`` (``channel``, ``notice``); a full queue is a final
        failure, recorded at once."""
        self._start()
        with self._idle:
            self._busy += 1
        try:
            self._q.put_nowait({**item, "attempts": 0})
        except queue.Full:
            self._finish(item, False, 0, "the delivery queue is full")

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="pulsetrace-alert-delivery", daemon=True
            )
            self._thread.start()

    def _finish(self, item: dict[str, Any], ok: bool, attempts: int, error: Optional[str]) -> None:
        try:
            self._done(item, ok, attempts, error)
        except Exception as exc:
            _diag.internal_error("alert delivery record", exc)
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted delivery has its final outcome."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        with suppressed():
            while not self._stop.is_set():
                now = time.monotonic()
                if self._retry and self._retry[0][0] <= now:
                    item = heapq.heappop(self._retry)[2]
                else:
                    wait = self._retry[0][0] - now if self._retry else 0.5
                    try:
                        item = self._q.get(timeout=max(0.0, min(wait, 0.5)))
                    except queue.Empty:
                        continue
                self._attempt(item)

    def _attempt(self, item: dict[str, Any]) -> None:
        channel = self.channels.get(item["channel"])
        item["attempts"] += 1
        if channel is None:
            self._finish(item, False, item["attempts"], "the channel is not configured")
            return
        try:
            channel.send(item["notice"])
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            if item["attempts"] >= ATTEMPTS:
                _diag.log.warning(
                    "pulsetrace: alert delivery to %s failed %d times: %s",
                    item["channel"],
                    item["attempts"],
                    error,
                )
                self._finish(item, False, item["attempts"], error)
                return
            delay = self._backoff * 2 ** (item["attempts"] - 1)
            self._seq += 1
            heapq.heappush(self._retry, (time.monotonic() + delay, self._seq, item))
            return
        self._finish(item, True, item["attempts"], None)
