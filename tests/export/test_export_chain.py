"""One export chain, woken and not polling: a kept trace reaches the
collector within the batch delay (PULSETRACE_EXPORT_INTERVAL_MS) of ending,
with no flush; a full batch goes at once whatever the delay; and while
nothing is kept the export thread does not run at all. Real receivers
(otlp_receivers), spans produced through pulsetrace."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from otlp_receivers import ExportRequest, HttpReceiver, spans_of

import pulsetrace
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh


def otlp_exporter(added: list[Any], receiver: HttpReceiver) -> OtlpSpanExporter:
    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            }
        )
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    return exp


def names(receiver: HttpReceiver) -> list[str]:
    return [name for r in receiver.requests() for name, _, _ in spans_of(r)]


def arrival(receiver: HttpReceiver, name: str, timeout: float = 5.0) -> float:
    """When (time.monotonic) the span ``name`` reached the receiver."""
    deadline = time.monotonic() + timeout
    while name not in names(receiver):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name!r} did not arrive within {timeout} s")
        time.sleep(0.002)
    return time.monotonic()


def export_thread() -> threading.Thread:
    (t,) = [t for t in threading.enumerate() if t.name == "pulsetrace-export"]
    return t


def wakeups(thread: threading.Thread) -> int:
    """How many times ``thread`` went to sleep and was woken (Linux)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if "voluntary_ctxt" in line)


def test_a_kept_trace_arrives_within_the_batch_delay_and_an_idle_export_thread_sleeps(
    http_receiver, added
):
    if not Path("/proc/self/task").is_dir():
        pytest.skip("reads thread wake-ups from /proc (Linux)")
    fresh(export_interval_ms=50, worker_interval_ms=50)
    otlp_exporter(added, http_receiver)
    took = []
    for i in range(5):
        with pulsetrace.start_span(f"quick {i}"):
            pass
        ended = time.monotonic()
        took.append(arrival(http_receiver, f"quick {i}") - ended)
        time.sleep(0.2)
    # No flush: the worker decides the trace, the export thread is woken for
    # it and hands it over once it waited the batch delay (50 ms).
    assert statistics.median(took) < 0.2, took
    assert max(took) < 1.0, took
    # With nothing kept, the export thread sleeps: no wake-up in a second
    # (a thread polling every 50 ms would wake about 20 times).
    thread = export_thread()
    before = wakeups(thread)
    time.sleep(1.0)
    assert wakeups(thread) - before <= 1


def test_a_full_batch_is_handed_over_at_once_whatever_the_delay(http_receiver, added):
    # A batch is at most half the export queue: 100 spans here. The delay
    # (60 s) would hold a lone trace; a full batch does not wait for it.
    fresh(export_interval_ms=60_000, export_queue_size=200)
    otlp_exporter(added, http_receiver)
    started = time.monotonic()
    for i in range(150):
        with pulsetrace.start_span(f"burst {i}"):
            pass
    while len(names(http_receiver)) < 100 and time.monotonic() - started < 10.0:
        time.sleep(0.01)
    assert len(names(http_receiver)) >= 100
    assert time.monotonic() - started < 5.0
    # What did not fill a batch waits for the delay or a flush.
    assert pulsetrace.flush(10)
    assert sorted(names(http_receiver)) == sorted(f"burst {i}" for i in range(150))


class Recording:
    """An exporter of the application's own: what each batch gave it."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[str], int]] = []

    def export(self, batch: Any, /) -> pulsetrace.ExportResult:
        requests, oversized = batch.otlp_requests()
        decoded = [ExportRequest.FromString(r) for r, _ in requests]
        sent = sum(n for _, n in requests)
        names = [name for r in decoded for name, _, _ in spans_of(r)]
        self.seen.append((len(batch), batch.spans, names, sent + oversized))
        return pulsetrace.ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        pass


def test_every_exporter_gets_one_batch_as_spans_or_as_otlp_requests(added):
    fresh(export_interval_ms=60_000)
    own, memory = Recording(), pulsetrace.InMemorySpanExporter()
    added.extend([own, memory])
    pulsetrace.add_exporter(own)
    pulsetrace.add_exporter(memory)
    for i in range(3):
        with pulsetrace.start_span(f"root {i}"):
            with pulsetrace.start_span(f"child {i}"):
                pass
    before = pulsetrace.counters()
    assert pulsetrace.flush(5)
    # One batch of 3 traces, 6 spans: the same spans both ways.
    ((traces, spans, names_sent, accounted),) = own.seen
    assert (traces, spans, accounted) == (3, 6, 6)
    assert sorted(names_sent) == sorted(s.name for s in memory.spans())
    assert len(memory.traces()) == 3
    c = pulsetrace.counters()
    assert c["spans_delivered"] - before["spans_delivered"] == 12  # 6 to each exporter


def test_the_otlp_exporter_sends_on_no_more_threads_than_requests_in_flight(http_receiver, added):
    # One chain: batches reach the exporter on the one export thread; it
    # keeps no queue of its own beyond its bounded pending requests, and
    # over HTTP a request waits for its answer on a sender thread, at most
    # PULSETRACE_OTLP_MAX_IN_FLIGHT (2) of them whatever the number of
    # requests.
    fresh(export_interval_ms=60_000)
    otlp_exporter(added, http_receiver)
    want = []
    for b in range(6):
        for i in range(3):
            with pulsetrace.start_span(f"one chain {b} {i}"):
                pass
            want.append(f"one chain {b} {i}")
        pulsetrace._runtime.flush(0)  # a batch of its own, not waited for
    assert pulsetrace.flush(5)
    assert sorted(names(http_receiver)) == sorted(want)
    ours = [t.name for t in threading.enumerate() if t.name.startswith("pulsetrace-")]
    assert ours.count("pulsetrace-export") == 1, ours
    senders = [n for n in ours if n.startswith("pulsetrace-otlp")]
    assert senders and set(senders) == {"pulsetrace-otlp-http"} and len(senders) <= 2, ours


def test_every_built_in_exporter_is_a_span_exporter_and_anything_else_is_refused():
    from pulsetrace.export.otlp_exporter import OtlpSpanExporter as Otlp
    from pulsetrace.export.ring import RingBufferExporter

    otlp = Otlp(config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
    try:
        built_in = [
            pulsetrace.InMemorySpanExporter(),
            pulsetrace.ConsoleSpanExporter(),
            RingBufferExporter(),
            otlp,
        ]
        for exp in built_in:
            assert isinstance(exp, pulsetrace.SpanExporter), exp
            assert isinstance(exp.counters(), dict)
    finally:
        otlp.shutdown(0)

    class NotAnExporter:
        def export(self, batch: Any) -> pulsetrace.ExportResult:
            return pulsetrace.ExportResult.SUCCESS

    before = pulsetrace.counters()
    with pytest.raises(TypeError, match=r"NotAnExporter .*force_flush\(\), shutdown\(\)"):
        pulsetrace.add_exporter(NotAnExporter())  # type: ignore[arg-type]
    assert NotAnExporter not in {type(e) for e in pulsetrace._runtime.exporters()}
    assert pulsetrace.counters()["internal_errors"] == before["internal_errors"]


def test_a_dead_collector_does_not_keep_a_batch_from_the_other_exporters(added):
    """The OTLP exporter, added first, retries against a port where nothing
    listens; the in-memory exporter added after it still gets the batch at
    once (exporters that send over the network are handed it last)."""
    from servers import free_port

    fresh(export_interval_ms=50)
    dead = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            }
        )
    )
    memory = pulsetrace.InMemorySpanExporter()
    added.extend([dead, memory])
    pulsetrace.add_exporter(dead)
    pulsetrace.add_exporter(memory)
    with pulsetrace.start_span("while the collector is down"):
        pass
    deadline = time.monotonic() + 5.0
    while not memory.spans():
        assert time.monotonic() < deadline, "the in-memory exporter got nothing"
        time.sleep(0.01)
    assert [s.name for s in memory.spans()] == ["while the collector is down"]
