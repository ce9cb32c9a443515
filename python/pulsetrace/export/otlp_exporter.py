"""The OTLP span exporter: kept traces to Jaeger or any OpenTelemetry
Collector, as natively encoded ``ExportTraceServiceRequest`` bytes (each
batch's :meth:`~pulsetrace.export.SpanBatch.otlp_requests`, encoded once per
batch whatever the number of OTLP exporters).

A request is sent without waiting for its answer (gRPC: grpcio's future
API; HTTP/protobuf: a sender thread per request in flight,
:mod:`pulsetrace.export.otlp_http`), in order, at most
``PULSETRACE_OTLP_MAX_IN_FLIGHT`` at once (2); later ones wait in the
exporter's pending requests, and an answer wakes the export thread to send
them (:func:`pulsetrace.export._thread.wake`). So a collector that accepts
connections and answers late, or never (each attempt ends after
``OTEL_EXPORTER_OTLP_TIMEOUT``), does not stop the export thread from
taking batches: the core's export queue keeps draining.

A request that failed in a way worth retrying (a timeout among them) goes
back, in its place, to the head of the pending requests, and is sent again
once its backoff has passed (0.5 s doubling up to 5 s, full jitter, or the
receiver's ``Retry-After`` / RetryInfo, at most
``PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS``), before any later request, on a
timed wake of the export thread (:meth:`OtlpSpanExporter.next_wake`,
:meth:`OtlpSpanExporter.retry`); requests then go one at a time until the
pending ones are sent.

Requests in flight and pending together hold at most
``PULSETRACE_OTLP_MAX_PENDING_SPANS`` spans (a request is not sent beside
others when that would pass it). While the collector answers, only slower
than spans come, a batch that does not fit waits for answers to make room
(at most one request timeout; the core's export queue holds what comes
meanwhile); during an outage the oldest pending requests are dropped and
counted (``otlp_spans_dropped_pending_full``): not one in flight, which the
collector may have received already (an older request being retried at that
moment is kept, and the next pending one goes instead). A request refused for good
is lost (``otlp_spans_lost``); ``otlp_spans_sent`` counts what was
delivered, and each span's outcome goes to ``spans_delivered`` /
``spans_delivery_failed`` once.

At shutdown (a deadline on the batch, or :meth:`OtlpSpanExporter.shutdown`)
the pending requests go out a few at once (``SHUTDOWN_PARALLEL``), one
attempt each, within the shutdown's bound; what is left then, pending or in
flight (cancelled), is counted as lost and logged in one warning; a
collector that refuses connections ends it at once. After a fork, the child
has its own lock, counters and connections, and nothing pending or in
flight.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import threading
import time
import weakref
from typing import Callable, Optional

from pulsetrace import _diag
from pulsetrace.config import OtlpConfig, environment
from pulsetrace.export import ExportResult, SpanBatch, SpanExporter, _outcomes, _thread
from pulsetrace.export.otlp import INITIAL_BACKOFF_S, MAX_BACKOFF_S, OtlpTransport, SendResult

__all__ = ["OtlpSpanExporter"]

log = logging.getLogger("pulsetrace")

#: Requests sent at once at shutdown (or ``max_in_flight``, if more).
SHUTDOWN_PARALLEL = 4


class _Request:
    """An encoded request, its spans and its place in the order requests are
    sent in; while in flight, how to cancel it, and whether its outcome is
    counted (``settled``: answered, or cancelled at a shutdown's deadline)."""

    __slots__ = ("cancel", "cancelled", "payload", "seq", "settled", "spans")

    def __init__(self, seq: int, payload: bytes, spans: int) -> None:
        self.seq, self.payload, self.spans = seq, payload, spans
        self.cancel: Optional[Callable[[], object]] = None
        self.cancelled = self.settled = False


class OtlpSpanExporter(SpanExporter):
    """Sends kept traces over OTLP (gRPC or HTTP/protobuf) without waiting
    for the answers, a few requests at once; failed requests are kept,
    bounded, and retried on later wakes of the export thread."""

    # Handed each batch after the exporters that do not send: even a live
    # collector takes a while to answer, and the in-memory, console and
    # ring exporters need not wait for the requests to be made.
    remote = True

    def __init__(
        self,
        config: Optional[OtlpConfig] = None,
        max_retry_delay_s: Optional[float] = None,
        max_pending_spans: Optional[int] = None,
        max_in_flight: Optional[int] = None,
    ) -> None:
        env = environment()
        self.config = config if config is not None else env.otlp
        self.transport = OtlpTransport(self.config)
        self.max_retry_delay_s = (
            max_retry_delay_s
            if max_retry_delay_s is not None
            else env.export_max_retry_delay_ms / 1000.0
        )
        self.max_pending_spans = (
            max_pending_spans if max_pending_spans is not None else env.otlp_max_pending_spans
        )
        if self.max_pending_spans < 1:
            raise ValueError(f"max_pending_spans must be at least 1, not {max_pending_spans!r}")
        self.max_in_flight = max_in_flight if max_in_flight is not None else env.otlp_max_in_flight
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight!r}")
        self._pid = os.getpid()
        self._reset()
        if hasattr(os, "register_at_fork"):
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    def _reset(self) -> None:
        self._cv = threading.Condition()
        #: Requests not sent yet, oldest first (a failed one back in its
        #: place at the head), and their spans.
        self._pending: collections.deque[_Request] = collections.deque()
        self._pending_spans = 0
        self._seq = 0
        #: Requests sent and not answered yet, and their spans.
        self._flights: list[_Request] = []
        self._in_flight_spans = 0
        #: Failed attempts in a row, and when the head may be sent again.
        self._failures = 0
        self._retry_at = 0.0
        #: A request failed: one at a time until the pending ones are sent.
        self._catching_up = False
        #: Set by shutdown() or a batch's deadline: last attempts, no retries.
        self._final_deadline: Optional[float] = None
        self._stopped = False
        self.spans_sent = 0
        self.spans_lost = 0
        self.batches_lost = 0
        self.spans_retried = 0
        self.spans_dropped = 0

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child before any other thread exists there. The
        parent's lock may have been held at the fork (by its export thread);
        its pending requests and those it has in flight are the parent's."""
        stopped = self._stopped
        self._reset()
        self._stopped = stopped

    # -- the interface ------------------------------------------------------

    def export(self, batch: SpanBatch, /) -> ExportResult:
        """Queue the batch's natively encoded OTLP requests behind the
        pending ones, then start, in order, those that may go now (without
        waiting for the answers); what does not fit the pending bound is
        then dropped, oldest first. Returns QUEUED: this exporter counts
        every span's outcome itself. Safe to call from two threads at once
        (a shutdown's last hand-over)."""
        requests, oversized = batch.otlp_requests()
        if oversized:
            _outcomes.record_delivery(0, oversized)
            _outcomes.count_export_failure()
        spans = sum(n for _, n in requests)
        if batch.deadline is not None:
            with self._cv:
                self._finish_by_locked(batch.deadline)  # a shutdown: no waiting
        self._wait_for_room(spans)
        with self._cv:
            stopped = self._stopped
            if not stopped:
                for payload, n in requests:
                    self._seq += 1
                    self._pending.append(_Request(self._seq, payload, n))
                self._pending_spans += spans
        if stopped:
            self._lost(spans, len(requests))
            _outcomes.record_delivery(0, spans)
            _outcomes.count_export_failure()
            return ExportResult.QUEUED
        self._send_due()
        with self._cv:
            dropped = self._trim_locked() if self._final_deadline is None else 0
        if dropped:
            _outcomes.record_delivery(0, dropped)
            _outcomes.count_export_failure()
        return ExportResult.QUEUED

    def next_wake(self) -> Optional[float]:
        """When (a :func:`time.monotonic` value) the head of the pending
        requests may be sent; None when nothing is pending, or when it waits
        for a request in flight to be answered (the answer wakes the export
        thread)."""
        with self._cv:
            if self._stopped or self._final_deadline is not None or not self._pending:
                return None
            if not self._may_send_locked(self._pending[0]):
                return None
            return self._retry_at

    def retry(self) -> None:
        """Send the pending requests that are due (the export thread calls
        this at :meth:`next_wake`, when no batch came meanwhile)."""
        self._send_due()

    def counters(self) -> dict[str, int]:
        with self._cv:
            out = {
                "otlp_spans_sent": self.spans_sent,
                "otlp_spans_lost": self.spans_lost,
                "otlp_batches_lost": self.batches_lost,
                "otlp_spans_retried": self.spans_retried,
                "otlp_spans_dropped_pending_full": self.spans_dropped,
                "otlp_queued_batches": len(self._pending) + len(self._flights),
                "otlp_queued_spans": self._pending_spans + self._in_flight_spans,
                "otlp_requests_in_flight": len(self._flights),
                "otlp_spans_in_flight": self._in_flight_spans,
            }
        out.update({f"otlp_{k}": v for k, v in self.transport.counters().items()})
        return out

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Send every pending request and wait for the answers, within
        ``timeout`` seconds, honouring the backoff (or the receiver's
        ``Retry-After``) between attempts; False if some are still pending
        or in flight then (those in flight go on)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._send_due(until=deadline)
            with self._cv:
                if not self._pending and not self._flights:
                    return True
                now = time.monotonic()
                final = self._final_deadline
                if now >= deadline or (final is not None and now >= final):
                    return False
                until = deadline if final is None else min(deadline, final)
                if final is None and self._pending and now < self._retry_at:
                    until = min(until, self._retry_at)
                # Woken sooner by an answer.
                self._cv.wait(until - now)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send what is pending within ``timeout`` seconds, a few requests
        at once, one attempt each, then stop (later batches are counted as
        not delivered). A collector that refuses connections ends it at
        once; what is left when the time runs out (pending, or in flight:
        cancelled) is counted as lost and logged in one warning."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._finish_by_locked(deadline)
            self._stopped = True
            deadline = self._final_deadline or deadline
        self.transport.stop_retrying()
        self.force_flush(max(deadline - time.monotonic(), 0.0))
        with self._cv:
            left = self._drop_pending_locked()
            cut, cancels = self._cancel_flights_locked()
        for cancel in cancels:
            try:
                cancel()
            except Exception as exc:
                _diag.internal_error("otlp.cancel", exc)
        if left or cut:
            _outcomes.record_delivery(0, left + cut)
            _outcomes.count_export_failure()
            log.warning(
                "pulsetrace: %d spans were still queued for %s when the shutdown "
                "time ran out (PULSETRACE_SHUTDOWN_TIMEOUT_MS), counted as lost; "
                "%d more were sent and not yet answered: cancelled, counted as lost "
                "too (the collector may have some of them)",
                left,
                self.config.endpoint,
                cut,
            )
        self.transport.shutdown()

    # -- sending ------------------------------------------------------------

    def _finish_by_locked(self, deadline: float) -> None:
        if self._final_deadline is None or deadline < self._final_deadline:
            self._final_deadline = deadline
        self._cv.notify_all()

    def _wait_for_room(self, spans: int) -> None:
        """A collector that answers, only slower than spans come: wait for
        its answers to make room for ``spans`` more within the pending bound,
        so that what comes meanwhile waits in the core's export queue (as it
        did while a request was sent on the export thread) rather than the
        oldest pending spans being dropped. No wait during an outage (a
        request failed: catching up), at a shutdown, or with nothing in
        flight; at most one request timeout."""
        give_up = time.monotonic() + self.config.timeout_ms / 1000.0
        while True:
            with self._cv:
                held = self._pending_spans + self._in_flight_spans
                if (
                    held + spans <= self.max_pending_spans
                    or not self._flights
                    or self._catching_up
                    or self._final_deadline is not None
                ):
                    return
                now = time.monotonic()
                if now >= give_up:
                    return
                self._cv.wait(give_up - now)  # woken by an answer
            self._send_due()

    def _may_send_locked(self, req: _Request) -> bool:
        """With ``self._cv`` held: whether ``req`` may go beside the
        requests in flight. At most ``max_in_flight`` at once (one while
        catching up after a failure, ``SHUTDOWN_PARALLEL`` at a shutdown),
        within the pending bound (one alone always may)."""
        if not self._flights:
            return True
        if self._final_deadline is not None:
            slots = max(SHUTDOWN_PARALLEL, self.max_in_flight)
        else:
            slots = 1 if self._catching_up else self.max_in_flight
        return len(self._flights) < slots and (
            self._in_flight_spans + req.spans <= self.max_pending_spans
        )

    def _send_due(self, until: Optional[float] = None) -> None:
        """Start the pending requests that may go now, in order, without
        waiting for their answers (:meth:`_answered`). Outside a shutdown,
        from when the head is due; at a shutdown, until its deadline, each
        failure final. ``until``: no attempt lasts past it (a flush's
        timeout)."""
        started: list[tuple[_Request, float]] = []
        with self._cv:
            if self._pid != os.getpid():
                # Forked: the parent's gRPC channel or kept-alive HTTP
                # connections must not be shared; the child opens its own.
                self._pid = os.getpid()
                self.transport = OtlpTransport(self.config)
            transport = self.transport
            final = self._final_deadline
            now = time.monotonic()
            timeout = self.config.timeout_ms / 1000.0
            while self._pending and self._may_send_locked(self._pending[0]):
                if until is not None and now >= until:
                    break
                if final is not None:
                    if now >= final:
                        break
                elif now < self._retry_at:
                    break
                req = self._pending.popleft()
                self._pending_spans -= req.spans
                self._in_flight_spans += req.spans
                req.cancel, req.settled = None, False  # a new attempt
                self._flights.append(req)
                deadline = now + timeout
                for bound in (final, until):
                    if bound is not None:
                        deadline = min(deadline, bound)
                started.append((req, deadline))
        for req, deadline in started:
            cancel = transport.start(req.payload, deadline, functools.partial(self._answered, req))
            with self._cv:
                req.cancel = cancel
                late = req.cancelled  # a shutdown cancelled it meanwhile
            if late and cancel is not None:
                cancel()

    def _answered(self, req: _Request, result: SendResult) -> None:
        """The outcome of ``req``'s attempt (on whichever thread the
        transport reports it), counted; a failure worth retrying goes back
        to its place among the pending requests."""
        delivered = failed = dropped = 0
        with self._cv:
            if req.settled:
                return  # cancelled at a shutdown's deadline, counted then
            req.settled = True
            self._flights.remove(req)
            self._in_flight_spans -= req.spans
            final = self._final_deadline
            if result.ok:
                delivered = req.spans - result.rejected_spans
                failed = result.rejected_spans
            elif result.retryable and final is None:
                self._requeue_locked(req)
                self.spans_retried += req.spans
                self._failures += 1
                delay = self._retry_delay(self._failures, result)
                self._retry_at = time.monotonic() + delay
                self._catching_up = True
                dropped = self._trim_locked()
            else:
                failed = req.spans
                if final is not None and result.unreachable:
                    # No collector to wait for: what is left goes too.
                    dropped = self._drop_pending_locked()
            if result.ok or not result.retryable:
                # The collector answered: no backoff; all at once again when
                # nothing is left from an outage.
                self._failures = 0
                self._retry_at = 0.0
                if not self._pending:
                    self._catching_up = False
            self.spans_sent += delivered
            if failed:
                self._lost(failed, 1, locked=True)
            more = bool(self._pending) and final is None
            self._cv.notify_all()
        if delivered or failed or dropped:
            _outcomes.record_delivery(delivered, failed + dropped)
        if failed or dropped:
            _outcomes.count_export_failure()
        if more:
            _thread.wake()  # the export thread sends the next ones, or times the retry

    def _requeue_locked(self, req: _Request) -> None:
        """With ``self._cv`` held: ``req`` back among the pending requests,
        in its place (before every later one)."""
        i = 0
        for other in self._pending:
            if other.seq > req.seq:
                break
            i += 1
        self._pending.insert(i, req)
        self._pending_spans += req.spans

    def _cancel_flights_locked(self) -> tuple[int, list[Callable[[], object]]]:
        """With ``self._cv`` held: every request in flight counted as lost
        (its answer, if one comes, is ignored); their spans, and how to
        cancel them."""
        spans = 0
        cancels: list[Callable[[], object]] = []
        for req in self._flights:
            req.settled = req.cancelled = True
            spans += req.spans
            self._lost(req.spans, 1, locked=True)
            if req.cancel is not None:
                cancels.append(req.cancel)
        self._flights.clear()
        self._in_flight_spans = 0
        self._cv.notify_all()
        return spans, cancels

    def _retry_delay(self, failures: int, result: SendResult) -> float:
        if result.retry_after is not None:
            delay = float(result.retry_after)
        else:
            delay = random.uniform(
                0.0, min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** min(failures - 1, 10))
            )
        return min(delay, self.max_retry_delay_s)

    def _trim_locked(self) -> int:
        """With ``self._cv`` held: drop the oldest pending requests until
        what is held (pending and in flight) fits ``max_pending_spans``;
        returns the spans dropped (counted here, reported by the caller)."""
        spans = 0
        while self._pending and self._pending_spans + self._in_flight_spans > (
            self.max_pending_spans
        ):
            req = self._pending.popleft()
            self._pending_spans -= req.spans
            spans += req.spans
        if spans:
            self.spans_dropped += spans
            if not self._pending:
                self._failures = 0
                self._retry_at = 0.0
                self._catching_up = False
        return spans

    def _lost(self, spans: int, requests: int, locked: bool = False) -> None:
        if not locked:
            with self._cv:
                self._lost(spans, requests, locked=True)
            return
        self.spans_lost += spans
        self.batches_lost += requests

    def _drop_pending_locked(self) -> int:
        """With ``self._cv`` held: count every pending request as lost."""
        spans = 0
        for req in self._pending:
            spans += req.spans
            self._lost(req.spans, 1, locked=True)
        self._pending.clear()
        self._pending_spans = 0
        self._cv.notify_all()
        return spans


def _reset_in_child(ref: weakref.ref[OtlpSpanExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter._after_fork_in_child()
