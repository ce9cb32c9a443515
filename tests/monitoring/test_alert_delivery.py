"""One delivery thread for every channel, with real local receivers: a
dead channel (a server that accepts and never answers) holds the thread
for one attempt, then the other channels' deliveries go first and its
retries wait their backoff behind them; the queue's bound holds, and what
it refuses is recorded and shown by ``/monitoring/status``."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

import pytest
from alert_support import SECRET, Clock, Receiver, manager, settle, smtp_server
from monitoring_support import monitoring_server

from pulsetrace.monitoring import alerts
from pulsetrace.monitoring.alerts import channels as _ch
from pulsetrace.monitoring.alerts.rules import Verdict, make_rule

TOKEN = "delivery-token"


class Dead:
    """A TCP server that accepts every connection and never answers: its
    callers hang until their own timeout. Records when each connection
    came (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[float] = []
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


class Timed(_ch.Channel):
    """A channel that notes when each of its deliveries succeeded."""

    def __init__(self, inner: _ch.Channel) -> None:
        self.inner, self.type, self.done_at = inner, inner.type, []

    def send(self, notice: dict[str, Any]) -> None:
        self.inner.send(notice)
        self.done_at.append(time.monotonic())


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def dead():
    d = Dead()
    yield d
    d.close()


def _always(rule_id):
    return make_rule(rule_id, f"Rule {rule_id}", lambda s: True, severity="critical")


@pytest.fixture
def smtp(tmp_path):
    with smtp_server(tmp_path) as server:
        yield server


def test_a_dead_channel_does_not_hold_the_other_channels_deliveries(tmp_path, rx, dead, smtp):
    inbox, port, cert = smtp
    slack = Timed(_ch.Slack(rx.url + "/slack"))
    tls = ssl.create_default_context(cafile=cert)
    mail = Timed(
        _ch.Email(
            "localhost",
            port,
            "alerts@example.com",
            lambda n: ["oncall@example.com"],
            None,
            None,
            tls,
        )
    )
    hook = _ch.Webhook("webhook", dead.url + "/webhook", SECRET)
    hook.timeout_s = 0.3
    chans = {"slack": slack, "webhook": hook, "email": mail}
    m = manager(str(tmp_path / "a.db"), rx, Clock(), channels=chans)
    for i in range(4):
        m.add(_always(f"r{i}"))
    m.cycle()  # four alerts: Slack, the webhook and e-mail in turn in the queue
    settle(m)
    # Every Slack notice and e-mail went out before the dead webhook's
    # second attempt: one attempt found it dead, and from then on neither
    # its retries nor its other first attempts went before the others'.
    assert len(slack.done_at) == 4 and len(mail.done_at) == 4 and len(inbox.messages) == 4
    assert len(dead.accepted) == 4 * _ch.ATTEMPTS
    assert max(slack.done_at + mail.done_at) < sorted(dead.accepted)[1]
    rows = m.store.deliveries()
    assert {(d["channel"], d["status"]) for d in rows} == {
        ("slack", "sent"),
        ("email", "sent"),
        ("webhook", "failed"),
    }
    failed = [d for d in rows if d["channel"] == "webhook"]
    assert len(failed) == 4 and all(d["attempts"] == _ch.ATTEMPTS for d in failed)
    assert all("timed out" in d["error"] for d in failed)
    assert m.deliverer.stats()["failing_channels"] == ["webhook"]


def test_a_channel_back_to_health_is_no_longer_put_last(tmp_path, rx):
    m = manager(str(tmp_path / "a.db"), rx, Clock())
    rx.fail["/webhook"] = 1  # one 500, then accepted
    m.add(_always("r0"))
    m.cycle()
    settle(m)
    rows = {d["channel"]: d for d in m.store.deliveries()}
    assert rows["webhook"]["status"] == "sent" and rows["webhook"]["attempts"] == 2
    assert m.deliverer.stats()["failing_channels"] == []


def test_the_queue_bound_holds_and_overflow_shows_in_the_status(tmp_path, dead):
    settings = dict(alert_dir=str(tmp_path), alert_webhook_url=dead.url + "/webhook")
    alerts.reset()
    try:
        with monitoring_server(token=TOKEN, **settings) as client:
            m = alerts.manager()
            m.clock = Clock()
            m.deliverer.queue_size = 3
            m.deliverer.channels["webhook"].timeout_s = 0.5
            for i in range(6):
                alerts.add_alert_rule(
                    id=f"r{i}",
                    name=f"Rule {i}",
                    condition=lambda s: Verdict(True),
                    severity="critical",
                )
            m.cycle()  # six deliveries to a channel that hangs each attempt
            stats = m.deliverer.stats()
            # Three held (one being attempted, the others waiting, retries
            # included), three refused at once and recorded as failed.
            assert stats["waiting"] + stats["retrying"] <= 3
            assert stats["overflowed"] == 3 and stats["queue_size"] == 3
            status, _, body = client.get("/monitoring/status", token=TOKEN)
            assert status == 200
            assert body["delivery"]["overflowed"] == 3
            assert body["delivery"]["queue_size"] == 3
            full = [d for d in body["failed_deliveries"] if "queue is full" in d["error"]]
            assert len(full) == 3 and all(d["attempts"] == 0 for d in full)
            assert body["counts"]["deliveries_failed"] == 3
            assert body["counts"]["deliveries_pending"] == 3
    finally:
        alerts.reset()


def test_a_bad_queue_size_is_refused_naming_it():
    with pytest.raises(ValueError, match="delivery queue size must be a positive integer"):
        _ch.Deliverer({}, lambda *a: None, queue_size=0)
