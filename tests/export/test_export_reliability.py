"""Nothing lost that fits the bounds: a failing, slow, down or throttling
collector (HTTP 429/503 with Retry-After) costs time, not spans, while the
OTLP exporter's pending requests have room (beyond it the oldest are dropped
and counted); a batch is split into OTLP requests below the
request bound so one oversized span cannot sink its neighbours; at shutdown
the queued requests go out a few at once within the budget. Real receivers
(otlp_receivers), spans produced through pulsetrace, counted on arrival."""

from __future__ import annotations

import time
from typing import Any

import pytest
from otlp_receivers import HttpAnswer, HttpReceiver, closed_port, spans_of

import pulsetrace
from pulsetrace import _runtime
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh, wait_until

HTTP = "http/protobuf"
COUNTED = ("spans_handed_to_exporters", "spans_delivered", "spans_delivery_failed")


def exporter(added: list[Any], endpoint: str, timeout_ms: int = 500, **kw: Any) -> Any:
    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout_ms),
            }
        ),
        **kw,
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    return exp


def record(n: int, name: str, attrs: Any = None) -> None:
    for i in range(n):
        with pulsetrace.start_span(f"{name} {i}", attributes=attrs):
            pass


def received(receiver: HttpReceiver) -> list[str]:
    return [name for r in receiver.requests() for name, _, _ in spans_of(r)]


def delta(before: dict[str, int], *names: str) -> tuple[int, ...]:
    c = pulsetrace.counters()
    return tuple(c[n] - before[n] for n in names)


def test_failing_then_recovering_collector_loses_nothing(http_receiver, added):
    fresh(export_interval_ms=60_000)
    # The first dozen attempts fail, each one retried after the backoff
    # (capped at 1 s here, PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS).
    http_receiver.script(*[HttpAnswer(503, delay=0.1) for _ in range(12)])
    exporter(added, http_receiver.endpoint, max_retry_delay_s=1.0)
    before = pulsetrace.counters()
    for i in range(5):
        record(20, f"b{i}")
        _runtime.flush(0)  # handed over, not waited for
    assert pulsetrace.flush(30)
    assert sorted(received(http_receiver)) == sorted(
        f"b{i} {j}" for i in range(5) for j in range(20)
    )
    assert delta(before, *COUNTED) == (100, 100, 0)


@pytest.mark.parametrize(
    ("status", "retry_after", "max_delay_s", "waited"),
    [(503, "1", None, 1.0), (429, "1", None, 1.0), (429, "30", 1.5, 1.5), (503, "30", 1.5, 1.5)],
)
def test_retry_after_keeps_the_batch_queued(
    http_receiver, added, status, retry_after, max_delay_s, waited
):
    fresh(export_interval_ms=60_000)
    http_receiver.script(HttpAnswer(status, headers={"Retry-After": retry_after}))
    exporter(added, http_receiver.endpoint, max_retry_delay_s=max_delay_s)
    before = pulsetrace.counters()
    record(30, "throttled")
    started = time.monotonic()
    assert pulsetrace.flush(10)
    took = time.monotonic() - started
    assert len(received(http_receiver)) == 30
    assert delta(before, *COUNTED) == (30, 30, 0)
    # The receiver's delay, capped by the maximum, was honoured.
    assert waited - 0.2 <= took < waited + 3


def test_only_the_bounds_drop_and_a_refusing_collector_ends_the_shutdown_at_once(added):
    # A collector that is down holds up nothing: the exporter keeps what it
    # did not take, within its bound (the oldest dropped beyond it, whole
    # requests, counted); at shutdown a refused connection ends it at once.
    fresh(export_interval_ms=60_000)
    port = closed_port()
    exp = exporter(added, f"http://127.0.0.1:{port}", max_pending_spans=50)
    before = pulsetrace.counters()
    for i in range(4):
        record(20, f"d{i}")
        _runtime.flush(0)  # handed over by the export thread, not waited for
        want = 20 * (i + 1)
        assert wait_until(lambda n=want: held(exp) == n), exp.counters()
    c = exp.counters()
    assert (c["otlp_queued_spans"], c["otlp_spans_dropped_pending_full"]) == (40, 40)
    assert c["otlp_spans_lost"] == 0  # the 40 held are retried, not lost
    assert delta(before, "spans_dropped_export_full", *COUNTED) == (0, 80, 0, 40)
    started = time.monotonic()
    exp.shutdown(5)  # a collector refusing connections ends it at once
    assert time.monotonic() - started < 1.5
    # Every span accounted for, once: 40 dropped, the 40 held lost at shutdown.
    assert delta(before, *COUNTED) == (80, 0, 80)
    assert exp.counters()["otlp_spans_lost"] == 40


def held(exp: OtlpSpanExporter) -> int:
    """Spans the exporter took and has not sent: pending, or dropped from there."""
    c = exp.counters()
    return c["otlp_queued_spans"] + c["otlp_spans_dropped_pending_full"]


def test_down_then_up_on_the_same_port_loses_nothing(added):
    fresh(export_interval_ms=60_000)
    port = closed_port()
    exporter(added, f"http://127.0.0.1:{port}")
    before = pulsetrace.counters()
    for i in range(3):
        record(10, f"u{i}")
        _runtime.flush(0)
    time.sleep(1.5)  # several failed attempts, each past its deadline
    from http.server import ThreadingHTTPServer

    import otlp_receivers

    ref: list[HttpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", port), otlp_receivers._handler(ref, None))
    server.daemon_threads = True
    receiver = HttpReceiver(server, tls=False)
    ref.append(receiver)
    try:
        assert pulsetrace.flush(20)
        assert len(received(receiver)) == 30
        assert delta(before, *COUNTED) == (30, 30, 0)
    finally:
        receiver.stop()


def test_an_oversized_span_does_not_sink_its_neighbours(http_receiver, added):
    fresh(
        export_interval_ms=60_000,
        export_max_request_bytes=20_000,
        max_attribute_length=100_000,
    )
    exporter(added, http_receiver.endpoint)
    before = pulsetrace.counters()
    record(100, "small", {"note": "n" * 500})  # about 55 kB: several requests
    record(1, "huge", {"blob": "x" * 50_000})
    record(10, "after")
    assert pulsetrace.flush(10)
    names = received(http_receiver)
    assert len(names) == 110 and not any(n.startswith("huge") for n in names)
    sizes = [len(r.body) for r in http_receiver.received]
    assert len(sizes) >= 3 and max(sizes) <= 20_000
    assert delta(before, *COUNTED) == (111, 110, 1)
    assert pulsetrace.counters()["spans_oversized"] >= 1


def test_a_slow_collector_gets_every_queued_request_within_the_shutdown_budget(
    http_receiver, added
):
    fresh(export_interval_ms=60_000, export_max_request_bytes=4_000)
    http_receiver.script(*[HttpAnswer(delay=1.0) for _ in range(8)])
    exp = exporter(added, http_receiver.endpoint, timeout_ms=5_000)
    before = pulsetrace.counters()
    record(40, "exit", {"note": "n" * 300})  # several requests of ~4 kB
    _runtime.flush(0)
    # The export thread took the batch: its first request is in flight.
    assert wait_until(lambda: exp.counters()["otlp_queued_spans"] == 40)
    started = time.monotonic()
    exp.shutdown(3.0)
    assert time.monotonic() - started < 3.5
    assert len(received(http_receiver)) == 40
    assert delta(before, *COUNTED) == (40, 40, 0)
