"""A dead or silent collector never holds up the one export thread: during
an outage the other exporters get every batch within a couple of export
intervals; the OTLP exporter keeps what failed (bounded, the oldest dropped
and counted) and retries it on a timed wake of the export thread, with no
new traffic needed; once the collector is back every pending span arrives,
in order, none twice. Real OTLP/HTTP receivers (otlp_receivers), a real
socket that accepts and never answers, spans produced through pulsetrace."""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import otlp_receivers
import pytest
from otlp_receivers import HttpAnswer, HttpReceiver, free_port, spans_of

import pulsetrace
from pulsetrace import _runtime
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh, wait_until

COUNTED = ("spans_handed_to_exporters", "spans_delivered", "spans_delivery_failed")
HTTP, GRPC = "http/protobuf", "grpc"


def otlp_exporter(
    added: list[Any], port: int, timeout_ms: int, protocol: str = HTTP, **kw: Any
) -> OtlpSpanExporter:
    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout_ms),
            }
        ),
        **kw,
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    return exp


def receiver_on(port: int, protocol: str = HTTP) -> Any:
    """The collector back: a real OTLP receiver on ``port``."""
    if protocol == GRPC:
        return otlp_receivers.start_grpc_receiver(port=port)
    ref: list[HttpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", port), otlp_receivers._handler(ref, None))
    server.daemon_threads = True
    receiver = HttpReceiver(server, tls=False)
    ref.append(receiver)
    return receiver


@contextlib.contextmanager
def outage(kind: str, port: int) -> Iterator[None]:
    """Nothing listens on ``port`` (connections refused), or a collector
    accepts connections there and never reads or answers (``silent``)."""
    if kind == "refusing":
        yield
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)  # the kernel completes connections; none is accepted
    try:
        yield
    finally:
        sock.close()


def received(receiver: Any) -> list[str]:
    return [name for r in receiver.requests() for name, _, _ in spans_of(r)]


def delta(before: dict[str, int], *names: str) -> tuple[int, ...]:
    c = pulsetrace.counters()
    return tuple(c[n] - before[n] for n in names)


def held(exp: OtlpSpanExporter) -> int:
    """Spans the exporter took and has not sent: pending, or dropped from there."""
    c = exp.counters()
    return c["otlp_queued_spans"] + c["otlp_spans_dropped_pending_full"]


@pytest.mark.parametrize("protocol", [HTTP, GRPC])
@pytest.mark.parametrize("kind", ["refusing", "silent"])
def test_an_outage_delays_no_exporter_and_the_pending_spans_follow_in_order(kind, protocol, added):
    interval = 0.2
    fresh(export_interval_ms=interval * 1000, worker_interval_ms=50)
    port = free_port()
    memory = pulsetrace.InMemorySpanExporter()
    with outage(kind, port):
        # Each attempt at a silent collector ends after one request timeout
        # (here one interval), at a refusing one at once; neither holds the
        # export thread (requests are sent without waiting for answers).
        exp = otlp_exporter(added, port, int(interval * 1000), protocol, max_retry_delay_s=1.0)
        added.append(memory)
        pulsetrace.add_exporter(memory)
        before = pulsetrace.counters()
        sent: list[str] = []
        took: list[float] = []
        for i in range(12):  # about 3 s of outage, a trace every ~interval
            name = f"during {i}"
            with pulsetrace.start_span(name):
                pass
            ended = time.monotonic()
            sent.append(name)
            arrived = wait_until(
                lambda name=name: name in {s.name for s in memory.spans()}, timeout=5.0
            )
            assert arrived, f"{name!r} did not reach the in-memory exporter in 5 s ({kind})"
            took.append(time.monotonic() - ended)
            time.sleep(0.05)
        c = exp.counters()
        print(
            f"\n{kind} {protocol}: in-memory latency median {statistics.median(took):.3f} s, "
            f"max {max(took):.3f} s; otlp {c}"
        )
        # Every batch reached the in-memory exporter within a couple of
        # intervals of being ready, whatever the OTLP exporter's collector did.
        assert statistics.median(took) <= 2 * interval, took
        assert max(took) <= 5 * interval, took
        assert c["otlp_spans_sent"] == 0 and c["otlp_spans_lost"] == 0
        assert c["otlp_spans_retried"] > 0 and c["otlp_queued_spans"] > 0
    # The collector is back. No new trace, no flush: the export thread's
    # timed wake retries the pending requests (backoff at most 1 s here).
    receiver = receiver_on(port, protocol)
    try:
        assert wait_until(lambda: len(received(receiver)) >= len(sent), timeout=10.0), (
            received(receiver),
            exp.counters(),
        )
        time.sleep(0.3)  # nothing else (no request twice) arrives after
        # Every span, in the order recorded, each once.
        assert received(receiver) == sent
        c = exp.counters()
        assert c["otlp_spans_sent"] == len(sent) and c["otlp_queued_spans"] == 0
        # Delivered to both exporters, each span counted once per exporter.
        assert delta(before, *COUNTED) == (len(sent), 2 * len(sent), 0)
    finally:
        receiver.stop()


def test_an_outage_longer_than_the_pending_bound_drops_the_oldest_and_counts_them(added):
    fresh(export_interval_ms=60_000)
    port = free_port()  # nothing listens: refused
    exp = otlp_exporter(added, port, timeout_ms=500, max_retry_delay_s=0.5, max_pending_spans=30)
    before = pulsetrace.counters()
    for i in range(8):  # 8 batches of 10 spans (one request each) while down
        for j in range(10):
            with pulsetrace.start_span(f"b{i} {j}"):
                pass
        _runtime.flush(0)  # handed over by the export thread, not waited for
        want = 10 * (i + 1)
        assert wait_until(lambda n=want: held(exp) == n, timeout=5.0), exp.counters()
    c = exp.counters()
    # The pending requests hold 30 spans at most: the oldest 50 were
    # dropped, whole requests, and counted (once each) as not delivered.
    assert c["otlp_spans_dropped_pending_full"] == 50 and c["otlp_queued_spans"] == 30
    assert c["otlp_spans_lost"] == 0 and c["otlp_spans_sent"] == 0
    assert delta(before, *COUNTED) == (80, 0, 50)
    receiver = receiver_on(port)
    try:
        assert wait_until(lambda: len(received(receiver)) >= 30, timeout=10.0), exp.counters()
        time.sleep(0.3)
        got = received(receiver)
        # The newest two batches, whole and in order, after one older batch:
        # b5, or an older one that was in flight (a retry) when the pending
        # requests were trimmed: a request in flight is never dropped, since
        # the collector may have it already; the next pending one goes.
        batch = [f"b{i} {j}" for i in range(8) for j in range(10)]
        assert got[10:] == batch[60:], got
        assert got[:10] in [batch[k * 10 : k * 10 + 10] for k in range(6)], got
        assert delta(before, *COUNTED) == (80, 30, 50)
        assert exp.counters()["otlp_spans_sent"] == 30
    finally:
        receiver.stop()


class AsksForAWake(pulsetrace.SpanExporter):
    """An exporter that, after its first batch, asks the export thread for
    one timed wake ``after`` seconds later."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.due: Optional[float] = None
        self.asked: list[float] = []
        self.retried: list[float] = []
        self.thread: Optional[threading.Thread] = None

    def export(self, batch: Any, /) -> pulsetrace.ExportResult:
        if not self.asked:
            self.due = time.monotonic() + self.after
            self.asked.append(self.due)
        return pulsetrace.ExportResult.SUCCESS

    def next_wake(self) -> Optional[float]:
        return self.due

    def retry(self) -> None:
        self.retried.append(time.monotonic())
        self.thread = threading.current_thread()
        self.due = None

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        pass


def wakeups(thread: threading.Thread) -> int:
    """How many times ``thread`` went to sleep and was woken (Linux)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if "voluntary_ctxt" in line)


def test_the_export_thread_wakes_when_an_exporter_asks_and_sleeps_otherwise(added):
    fresh(export_interval_ms=60_000)
    exp = AsksForAWake(after=0.4)
    added.append(exp)
    pulsetrace.add_exporter(exp)
    with pulsetrace.start_span("one"):
        pass
    assert pulsetrace.flush(5)
    (due,) = exp.asked
    # No new trace, no flush: the thread wakes at the time asked for and
    # calls retry(), on the export thread.
    assert wait_until(lambda: exp.retried, timeout=3.0), "retry() was never called"
    (at,) = exp.retried
    assert due - 0.005 <= at <= due + 0.5, at - due
    assert exp.thread is not None and exp.thread.name == "pulsetrace-export"
    # Asked for nothing more: it sleeps (no wake-up in half a second).
    if Path("/proc/self/task").is_dir():
        before = wakeups(exp.thread)
        time.sleep(0.5)
        assert wakeups(exp.thread) - before <= 1
    assert exp.retried == [at]


def test_at_shutdown_the_pending_requests_get_their_last_attempt_at_once(http_receiver, added):
    fresh(export_interval_ms=60_000)
    # The first attempt is refused for now, the collector asking for 30 s.
    http_receiver.script(HttpAnswer(503, headers={"Retry-After": "30"}))
    exp = otlp_exporter(added, http_receiver.port, timeout_ms=2_000)
    before = pulsetrace.counters()
    for i in range(3):
        for j in range(5):
            with pulsetrace.start_span(f"s{i} {j}"):
                pass
        _runtime.flush(0)
        want = 5 * (i + 1)
        # Held, and the first request's answer in (so that no later one
        # is sent beside it before the collector has asked for 30 s).
        assert wait_until(
            lambda n=want: held(exp) == n and exp.counters()["otlp_requests_in_flight"] == 0,
            timeout=5.0,
        ), exp.counters()
    assert received(http_receiver) == [] and exp.next_wake() is not None
    # A shutdown does not wait out the 30 s: every pending request gets its
    # last attempt now, within the shutdown's bound.
    started = time.monotonic()
    exp.shutdown(3.0)
    assert time.monotonic() - started < 2.0
    assert sorted(received(http_receiver)) == sorted(
        f"s{i} {j}" for i in range(3) for j in range(5)
    )
    assert delta(before, *COUNTED) == (15, 15, 0)
    c = exp.counters()
    assert (c["otlp_spans_sent"], c["otlp_spans_lost"], c["otlp_queued_spans"]) == (15, 0, 0)


def test_a_timed_wake_asked_for_outlives_a_restart_of_the_export_thread(added):
    fresh(export_interval_ms=60_000)
    exp = AsksForAWake(after=0.5)
    added.append(exp)
    pulsetrace.add_exporter(exp)
    with pulsetrace.start_span("one"):
        pass
    assert pulsetrace.flush(5)
    (due,) = exp.asked
    # Adding an exporter replaces the export thread: the new one still
    # wakes at the time asked for.
    other = pulsetrace.InMemorySpanExporter()
    added.append(other)
    pulsetrace.add_exporter(other)
    assert wait_until(lambda: exp.retried, timeout=3.0), "retry() was never called"
    assert exp.retried[0] >= due - 0.005
