"""The OTLP span exporter: kept traces to Jaeger or any OpenTelemetry
Collector, as natively encoded ``ExportTraceServiceRequest`` bytes (each
batch's :meth:`~pulsetrace.export.SpanBatch.otlp_requests`, encoded once per
batch whatever the number of OTLP exporters).

It sends on the thread that hands it the batch, pulsetrace's one export
thread, and never holds that thread for a retry: each call makes at most one
attempt per request and returns. A request that failed in a way worth
retrying stays, in order, at the head of the exporter's pending requests,
and is sent again once its backoff has passed (exponential backoff from
0.5 s up to 5 s with full jitter, or the delay the receiver asked for with
``Retry-After`` / RetryInfo, at most ``PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS``),
before any later request: the export thread wakes for it
(:meth:`OtlpSpanExporter.next_wake`, :meth:`OtlpSpanExporter.retry`) even
when no new trace comes. While the receiver keeps failing, one attempt is
made per wake: a refused connection costs nothing, a receiver that accepts
and never answers at most ``OTEL_EXPORTER_OTLP_TIMEOUT``, and the other
exporters get every batch meanwhile.

The pending requests are bounded (``PULSETRACE_OTLP_MAX_PENDING_SPANS``
spans): what does not fit is dropped, oldest first, whole requests, and
counted (``otlp_spans_dropped_pending_full``). A request the receiver
refused for good is lost and counted (``otlp_spans_lost``). What was
delivered and what was not is also reported to pulsetrace's
``spans_delivered`` / ``spans_delivery_failed`` counters, once per span.

At shutdown (a deadline on the batch, or this exporter's own
:meth:`OtlpSpanExporter.shutdown`) the pending requests go out a few at
once (``SHUTDOWN_PARALLEL``, on short-lived helper threads), one attempt
each, within the shutdown's bound; what is left when it runs out is counted
and logged in one warning, and a collector that refuses connections ends
it at once. After a fork, the child has its own lock, counters and pending
requests (none), and its own connections (never the parent's).
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
from dataclasses import dataclass
from typing import Optional

from pulsetrace import _diag
from pulsetrace.config import OtlpConfig, environment
from pulsetrace.export import ExportResult, SpanBatch, SpanExporter, _outcomes
from pulsetrace.export.otlp import INITIAL_BACKOFF_S, MAX_BACKOFF_S, OtlpTransport, SendResult

__all__ = ["OtlpSpanExporter"]

log = logging.getLogger("pulsetrace")

#: Requests sent at once at shutdown.
SHUTDOWN_PARALLEL = 4


@dataclass
class _Request:
    payload: bytes
    spans: int


class OtlpSpanExporter(SpanExporter):
    """Sends kept traces over OTLP (gRPC or HTTP/protobuf); failed requests
    are kept, bounded, and retried on later wakes of the export thread."""

    # Handed each batch after the exporters that do not send: even a live
    # collector takes a while to answer (and a silent one up to the request
    # timeout), and the in-memory, console and ring exporters need not wait.
    remote = True

    def __init__(
        self,
        config: Optional[OtlpConfig] = None,
        max_retry_delay_s: Optional[float] = None,
        max_pending_spans: Optional[int] = None,
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
        self._pid = os.getpid()
        self._reset()
        if hasattr(os, "register_at_fork"):
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    def _reset(self) -> None:
        self._cv = threading.Condition()
        #: Requests not sent yet, oldest first (a failed one back at the
        #: head), and their spans.
        self._pending: collections.deque[_Request] = collections.deque()
        self._pending_spans = 0
        #: Requests being sent and their spans; outside a shutdown at most
        #: one (the head: requests go out in order).
        self._senders = 0
        self._in_flight_spans = 0
        #: Failed attempts in a row, and when the head may be sent again.
        self._failures = 0
        self._retry_at = 0.0
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
        its pending requests are the parent's to send."""
        stopped = self._stopped
        self._reset()
        self._stopped = stopped

    # -- the interface ------------------------------------------------------

    def export(self, batch: SpanBatch, /) -> ExportResult:
        """Queue the batch's natively encoded OTLP requests behind the
        pending ones, then send, in order, what is due: one attempt each,
        until a request fails in a way worth retrying (it stays at the head
        for a later wake) or none is left; what does not fit the pending
        bound is then dropped, oldest first. Returns QUEUED: this exporter
        counts every span's outcome itself. Safe to call from two threads at
        once (a shutdown's last hand-over)."""
        requests, oversized = batch.otlp_requests()
        if oversized:
            _outcomes.record_delivery(0, oversized)
            _outcomes.count_export_failure()
        spans = sum(n for _, n in requests)
        with self._cv:
            stopped = self._stopped
            if not stopped:
                if self._pid != os.getpid():
                    # Forked: the parent's gRPC channel or kept-alive HTTP
                    # connections must not be shared; the child opens its own.
                    self._pid = os.getpid()
                    self.transport = OtlpTransport(self.config)
                self._pending.extend(_Request(p, n) for p, n in requests)
                self._pending_spans += spans
                if batch.deadline is not None:
                    self._finish_by_locked(batch.deadline)
        if stopped:
            self._lost(spans, len(requests))
            _outcomes.record_delivery(0, spans)
            _outcomes.count_export_failure()
            return ExportResult.QUEUED
        self._send_pending()
        with self._cv:
            dropped = self._trim_locked() if self._final_deadline is None else 0
        if dropped:
            _outcomes.record_delivery(0, dropped)
            _outcomes.count_export_failure()
        return ExportResult.QUEUED

    def next_wake(self) -> Optional[float]:
        """When (a :func:`time.monotonic` value) the head of the pending
        requests is due to be sent again; None when nothing is pending."""
        with self._cv:
            if self._stopped:
                return None
            if self._senders:
                # Another thread (a flush) is sending: look again soon.
                return time.monotonic() + 0.1
            return self._retry_at if self._pending else None

    def retry(self) -> None:
        """Send the pending requests that are due (the export thread calls
        this at :meth:`next_wake`, when no batch came meanwhile)."""
        self._send_pending()

    def counters(self) -> dict[str, int]:
        with self._cv:
            out = {
                "otlp_spans_sent": self.spans_sent,
                "otlp_spans_lost": self.spans_lost,
                "otlp_batches_lost": self.batches_lost,
                "otlp_spans_retried": self.spans_retried,
                "otlp_spans_dropped_pending_full": self.spans_dropped,
                "otlp_queued_batches": len(self._pending) + self._senders,
                "otlp_queued_spans": self._pending_spans + self._in_flight_spans,
            }
        out.update({f"otlp_{k}": v for k, v in self.transport.counters().items()})
        return out

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Send every pending request within ``timeout`` seconds, honouring
        the backoff (or the receiver's ``Retry-After``) between attempts;
        False if some are still pending then."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._cv:
                while True:
                    if not self._pending and not self._senders:
                        return True
                    now = time.monotonic()
                    final = self._final_deadline
                    if now >= deadline or (final is not None and now >= final):
                        return False
                    if self._senders:
                        wait = deadline - now  # another thread sends: woken when done
                    elif final is None and now < self._retry_at:
                        wait = min(deadline, self._retry_at) - now
                    else:
                        break
                    self._cv.wait(wait)
            self._send_pending(until=deadline)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send what is pending within ``timeout`` seconds, a few requests
        at once, one attempt each, then stop (later batches are counted as
        not delivered). A collector that refuses connections ends it at
        once; what is left when the time runs out is counted as lost and
        logged in one warning."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._finish_by_locked(deadline)
            self._stopped = True
            deadline = self._final_deadline or deadline
        self.transport.stop_retrying()
        self._send_pending()
        self.force_flush(max(deadline - time.monotonic(), 0.0))
        with self._cv:
            left = self._drop_pending_locked()
            # Sent and not answered yet: counted when (if) the answer comes.
            in_flight = self._in_flight_spans
        if left:
            _outcomes.record_delivery(0, left)
            _outcomes.count_export_failure()
        if left or in_flight:
            log.warning(
                "pulsetrace: %d spans were still queued for %s when the shutdown "
                "time ran out (PULSETRACE_SHUTDOWN_TIMEOUT_MS), counted as lost; "
                "%d more were sent and not yet answered",
                left,
                self.config.endpoint,
                in_flight,
            )
        self.transport.shutdown()

    # -- sending ------------------------------------------------------------

    def _finish_by_locked(self, deadline: float) -> None:
        if self._final_deadline is None or deadline < self._final_deadline:
            self._final_deadline = deadline
        self._cv.notify_all()

    def _send_pending(self, until: Optional[float] = None, helper: bool = False) -> None:
        """Send pending requests from the head, one attempt each. Outside a
        shutdown: one sender at a time, in order, from when the head is due,
        until one fails in a way worth retrying (it goes back to the head)
        or none is left; then what exceeds the bound is dropped. At a
        shutdown: helper threads join in, up to ``SHUTDOWN_PARALLEL``
        senders, each failure is final, until the deadline. ``until``: no
        attempt lasts past it (a flush's timeout)."""
        helped = helper
        while True:
            with self._cv:
                final = self._final_deadline
                now = time.monotonic()
                if not self._pending or (until is not None and now >= until):
                    return
                if final is not None:
                    if now >= final:
                        return
                elif self._senders or now < self._retry_at:
                    return
                req = self._pending.popleft()
                self._pending_spans -= req.spans
                self._in_flight_spans += req.spans
                self._senders += 1
            if final is not None and not helped:
                helped = True
                self._help()
            if not self._attempt(req, final, until):
                return

    def _attempt(self, req: _Request, final: Optional[float], until: Optional[float]) -> bool:
        """One attempt at ``req``, its outcome counted; False when it failed
        and stays pending (no more attempts now)."""
        delivered = failed = dropped = 0
        kept = False
        delay = 0.0
        result: Optional[SendResult] = None
        try:
            deadline = time.monotonic() + self.config.timeout_ms / 1000.0
            for bound in (final, until):
                if bound is not None:
                    deadline = min(deadline, bound)
            result = self.transport.send(req.payload, deadline, retry=False)
            if result.ok:
                delivered = req.spans - result.rejected_spans
                failed = result.rejected_spans
            elif result.retryable and final is None:
                kept = True
                delay = self._retry_delay(self._failures + 1, result)
            else:
                failed = req.spans
        except Exception as exc:
            failed = req.spans
            _diag.internal_error("otlp.send", exc)
        with self._cv:
            self._senders -= 1
            self._in_flight_spans -= req.spans
            self.spans_sent += delivered
            if failed:
                self._lost(failed, 1, locked=True)
            if kept and self._final_deadline is None:
                self._pending.appendleft(req)
                self._pending_spans += req.spans
                self.spans_retried += req.spans
                self._failures += 1
                self._retry_at = time.monotonic() + delay
                dropped = self._trim_locked()
            elif kept:
                # A shutdown began during the attempt: that was its last one.
                self._lost(req.spans, 1, locked=True)
                failed = req.spans
            elif final is not None and result is not None and result.unreachable:
                # No collector to wait for: what is left goes too.
                dropped = self._drop_pending_locked()
            else:
                self._failures = 0
                self._retry_at = 0.0
            self._cv.notify_all()
        if delivered or failed or dropped:
            _outcomes.record_delivery(delivered, failed + dropped)
        if failed or dropped:
            _outcomes.count_export_failure()
        return not kept

    def _retry_delay(self, failures: int, result: SendResult) -> float:
        if result.retry_after is not None:
            delay = float(result.retry_after)
        else:
            delay = random.uniform(
                0.0, min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** min(failures - 1, 10))
            )
        return min(delay, self.max_retry_delay_s)

    def _help(self) -> None:
        """A shutdown's deadline is set: the caller goes on sending the
        pending requests, and helper threads join it, up to
        ``SHUTDOWN_PARALLEL`` senders."""
        with self._cv:
            spare = min(len(self._pending), SHUTDOWN_PARALLEL - self._senders)
        for _ in range(max(spare, 0)):
            threading.Thread(
                target=self._send_pending,
                kwargs={"helper": True},
                name="pulsetrace-otlp-exit",
                daemon=True,
            ).start()

    def _trim_locked(self) -> int:
        """With ``self._cv`` held: drop the oldest pending requests until
        what is held fits ``max_pending_spans``; returns the spans dropped
        (counted here, reported by the caller)."""
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
