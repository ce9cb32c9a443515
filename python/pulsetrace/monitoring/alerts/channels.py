"""Notification channels and their background delivery.

Channels are configured once (from the environment, or in code) and rules
refer to them by type, so rule listings never hold a URL, key or password;
a channel's ``repr`` shows neither. Every delivery runs on the one
delivery thread (:class:`Deliverer`) under pulsetrace's suppression
context: nothing it does is traced, so a failing channel cannot feed an
alert about itself.

Webhooks (generic, SMS, phone) are signed: ``X-Pulsetrace-Timestamp: <unix
seconds>`` and ``X-Pulsetrace-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>." + body>`` with ``ALERT_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import smtplib
import ssl
import threading
import time
import urllib.request
from collections import deque
from email.message import EmailMessage
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace._suppress import suppressed

#: How long one attempt may take (connect, send, answer): the most a dead
#: channel holds the delivery thread before the others go ahead of it.
TIMEOUT_S = 5.0
#: Attempts of one delivery, and the waits between them (doubling).
ATTEMPTS = 4
FIRST_BACKOFF_S = 1.0
#: Deliveries held at most (first attempts, retries and the one being
#: attempted together).
QUEUE_SIZE = 1000


class Channel:
    """Sends one notice (a dict: see ``engine.notice``); raises on failure."""

    type = "channel"
    #: One attempt's time limit (seconds).
    timeout_s = TIMEOUT_S

    def send(self, notice: dict[str, Any]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type}>"


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
    req = urllib.request.Request(url, data=body, method="POST")
    for k, v in headers.items():
        req.add_header(k, v)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
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
        _post(self._url, body, headers, self.timeout_s)


class Slack(Channel):
    type = "slack"

    def __init__(self, url: str) -> None:
        self._url = url

    def send(self, notice: dict[str, Any]) -> None:
        body = json.dumps({"text": notice["text"]}).encode()
        _post(self._url, body, {"X-Pulsetrace-Delivery": notice["delivery"]}, self.timeout_s)


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
        _post(self._url, json.dumps(event).encode(), {}, self.timeout_s)


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
        with smtplib.SMTP(self._host, self._port, timeout=self.timeout_s) as smtp:
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
    """The deliveries held (at most ``queue_size``: first attempts, retries
    and the one being attempted together) and the one thread that sends them; ``done(item, ok,
    attempts, error)`` is called once per delivery with its final outcome.

    The thread takes, in this order: the oldest first attempt to a channel
    whose last attempt did not fail; a retry whose backoff (doubling from
    ``backoff_s``) has passed; a first attempt to a failing channel. So a
    dead channel holds the thread for one attempt (at most its
    ``timeout_s``), and from then on neither its retries nor its new
    deliveries go before the other channels' first attempts. A delivery
    submitted while ``queue_size`` are held is not queued: it fails at once
    ("the delivery queue is full"), counted in ``overflowed``.
    """

    def __init__(
        self,
        channels: dict[str, Channel],
        done: Done,
        backoff_s: float = FIRST_BACKOFF_S,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(
                f"the delivery queue size must be a positive integer, not {queue_size!r}"
            )
        self.channels, self._done, self._backoff = channels, done, backoff_s
        self.queue_size = queue_size
        self._cv = threading.Condition()
        self._fresh: deque[dict[str, Any]] = deque()  # first attempts, oldest first
        self._retry: list[tuple[float, int, dict[str, Any]]] = []  # (due, seq, item)
        self._failing: set[str] = set()  # channels whose last attempt failed
        self._seq = 0
        self._busy = 0  # submitted, final outcome not yet recorded
        self.overflowed = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def submit(self, item: dict[str, Any]) -> None:
        """Queue ``item`` (``channel``, ``notice``); when ``queue_size``
        deliveries are already held, it is a final failure, recorded at once."""
        with self._cv:
            # Waiting, retrying or being attempted: every delivery held.
            waiting = self._busy
            full = waiting >= self.queue_size
            if full:
                self.overflowed += 1
                first = self.overflowed == 1
            else:
                self._busy += 1
                self._fresh.append({**item, "attempts": 0})
                self._cv.notify()
        if full:
            if first:
                _diag.log.warning(
                    "pulsetrace: the alert delivery queue is full (%d held): deliveries"
                    " fail until it drains (counted in /monitoring/status)",
                    waiting,
                )
            self._record(item, False, 0, f"the delivery queue is full ({waiting} held)")
            return
        self._start()

    def stats(self) -> dict[str, Any]:
        """What ``/monitoring/status`` shows of the queue."""
        with self._cv:
            return {
                "waiting": len(self._fresh),
                "retrying": len(self._retry),
                "queue_size": self.queue_size,
                "overflowed": self.overflowed,
                "failing_channels": sorted(self._failing),
            }

    def _start(self) -> None:
        t = self._thread
        if t is None or not t.is_alive():
            with self._cv:
                t = self._thread
                if t is None or not t.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="pulsetrace-alert-delivery", daemon=True
                    )
                    self._thread.start()

    def _record(self, item: dict[str, Any], ok: bool, attempts: int, error: Optional[str]) -> None:
        try:
            self._done(item, ok, attempts, error)
        except Exception as exc:
            _diag.internal_error("alert delivery record", exc)

    def _finish(self, item: dict[str, Any], ok: bool, attempts: int, error: Optional[str]) -> None:
        self._record(item, ok, attempts, error)
        with self._cv:
            self._busy -= 1
            self._cv.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted delivery has its final outcome."""
        with self._cv:
            return self._cv.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def _next(self, now: float) -> tuple[Optional[dict[str, Any]], Optional[float]]:
        """The next delivery to attempt (see the class doc), or None and
        how long until a retry is due (None: until something is queued)."""
        for i, item in enumerate(self._fresh):
            if item["channel"] not in self._failing:
                del self._fresh[i]
                return item, None
        if self._retry and self._retry[0][0] <= now:
            return heapq.heappop(self._retry)[2], None
        if self._fresh:
            return self._fresh.popleft(), None
        return None, (self._retry[0][0] - now if self._retry else None)

    def _run(self) -> None:
        with suppressed():
            while True:
                with self._cv:
                    while True:
                        if self._stop.is_set():
                            return
                        item, wait = self._next(time.monotonic())
                        if item is not None:
                            break
                        self._cv.wait(wait)
                self._attempt(item)

    def _attempt(self, item: dict[str, Any]) -> None:
        name = item["channel"]
        channel = self.channels.get(name)
        item["attempts"] += 1
        if channel is None:
            self._finish(item, False, item["attempts"], "the channel is not configured")
            return
        try:
            channel.send(item["notice"])
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            with self._cv:
                self._failing.add(name)
                retry = item["attempts"] < ATTEMPTS
                if retry:
                    delay = self._backoff * 2 ** (item["attempts"] - 1)
                    self._seq += 1
                    heapq.heappush(self._retry, (time.monotonic() + delay, self._seq, item))
            if not retry:
                _diag.log.warning(
                    "pulsetrace: alert delivery to %s failed %d times: %s",
                    name,
                    item["attempts"],
                    error,
                )
                self._finish(item, False, item["attempts"], error)
            return
        with self._cv:
            self._failing.discard(name)
        self._finish(item, True, item["attempts"], None)
