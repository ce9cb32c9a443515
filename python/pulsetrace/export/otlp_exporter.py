"""The OTLP span exporter: kept traces to Jaeger or any OpenTelemetry
Collector, as natively encoded ``ExportTraceServiceRequest`` bytes (each
batch's :meth:`~pulsetrace.export.SpanBatch.otlp_requests`, encoded once per
batch whatever the number of OTLP exporters).

It sends on the thread that hands it the batch, pulsetrace's one export
thread, and keeps no queue or thread of its own: the one bounded queue is
the core's export queue (``PULSETRACE_EXPORT_QUEUE_SIZE``). A batch's
requests go out in order; a request that failed in a way worth retrying is
sent again (exponential backoff from 0.5 s up to 5 s, or the delay the
receiver asked for with ``Retry-After`` / RetryInfo, at most
``PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS``) until it is delivered. A dead,
slow or failing receiver thus holds up the export thread only, never a
request thread: kept traces wait in the export queue meanwhile, and only
what does not fit its bound is dropped, and counted
(``spans_dropped_export_full``). A request the receiver refused for good is
lost and counted (``otlp_spans_lost``). What was delivered and what was not
is also reported to pulsetrace's ``spans_delivered`` /
``spans_delivery_failed`` counters.

At shutdown (a deadline on the batch, or this exporter's own
:meth:`OtlpSpanExporter.shutdown`) the batch's unsent requests go out a few
at once (``SHUTDOWN_PARALLEL``, on short-lived helper threads), one attempt
each, within the shutdown's bound; what is left when it runs out is counted
and logged in one warning, and a collector that refuses connections ends
it at once. After a fork, the child has its own lock and counters, and its
own connections (never the parent's).
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


class _Job:
    """One ``export`` call: its batch and how many of its requests are not
    resolved (delivered, refused, given up) yet."""

    __slots__ = ("batch", "left")

    def __init__(self, batch: SpanBatch, requests: int) -> None:
        self.batch = batch
        self.left = requests


@dataclass
class _Request:
    payload: bytes
    spans: int
    job: _Job


class OtlpSpanExporter(SpanExporter):
    """Sends kept traces over OTLP (gRPC or HTTP/protobuf) with retries."""

    remote = True  # handed each batch after the exporters that do not send

    def __init__(
        self, config: Optional[OtlpConfig] = None, max_retry_delay_s: Optional[float] = None
    ) -> None:
        env = environment()
        self.config = config if config is not None else env.otlp
        self.transport = OtlpTransport(self.config)
        self.max_retry_delay_s = (
            max_retry_delay_s
            if max_retry_delay_s is not None
            else env.export_max_retry_delay_ms / 1000.0
        )
        self._pid = os.getpid()
        self._reset()
        if hasattr(os, "register_at_fork"):
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    def _reset(self) -> None:
        self._cv = threading.Condition()
        #: The exports in progress (one, but for a shutdown's last hand-over
        #: while the export thread is still busy) and their requests not yet
        #: taken by a sender, in order.
        self._jobs: list[_Job] = []
        self._pending: collections.deque[_Request] = collections.deque()
        #: Spans of those exports not yet delivered or lost (pending or in
        #: flight), and the threads sending them.
        self._held_spans = 0
        self._senders = 0
        #: Set by shutdown(): no send goes on past it, later batches fail.
        self._final_deadline: Optional[float] = None
        self._stopped = False
        self.spans_sent = 0
        self.spans_lost = 0
        self.batches_lost = 0
        self.spans_retried = 0

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child before any other thread exists there. The
        parent's lock may have been held at the fork (by its export thread);
        the batch it was sending is the parent's to send."""
        stopped = self._stopped
        self._reset()
        self._stopped = stopped

    # -- the interface ------------------------------------------------------

    def export(self, batch: SpanBatch, /) -> ExportResult:
        """Send the batch's natively encoded OTLP requests, in order, each
        until it is delivered, refused for good, or the batch's deadline (a
        shutdown) passed. Returns QUEUED: this exporter counts every span's
        outcome itself (oversized, delivered, refused, given up). Safe to
        call from two threads at once (a shutdown's last hand-over)."""
        requests, oversized = batch.otlp_requests()
        if oversized:
            _outcomes.record_delivery(0, oversized)
        spans = sum(n for _, n in requests)
        job = _Job(batch, len(requests))
        with self._cv:
            stopped = self._stopped
            if not stopped:
                if self._pid != os.getpid():
                    # Forked: the parent's gRPC channel or kept-alive HTTP
                    # connections must not be shared; the child opens its own.
                    self._pid = os.getpid()
                    self.transport = OtlpTransport(self.config)
                self._jobs.append(job)
                self._pending.extend(_Request(p, n, job) for p, n in requests)
                self._held_spans += spans
                if self._final_deadline is not None:
                    batch.finish_by(self._final_deadline)
        if stopped:
            self._lost(spans, len(requests))
            _outcomes.record_delivery(0, spans)
        else:
            try:
                self._send_pending()
                self._wait_for(job)
            finally:
                with self._cv:
                    self._jobs.remove(job)
                    self._cv.notify_all()
        if oversized or stopped:
            _outcomes.count_export_failure()
        return ExportResult.QUEUED

    def counters(self) -> dict[str, int]:
        with self._cv:
            out = {
                "otlp_spans_sent": self.spans_sent,
                "otlp_spans_lost": self.spans_lost,
                "otlp_batches_lost": self.batches_lost,
                "otlp_spans_retried": self.spans_retried,
                "otlp_queued_batches": len(self._pending) + self._senders,
                "otlp_queued_spans": self._held_spans,
            }
        out.update({f"otlp_{k}": v for k, v in self.transport.counters().items()})
        return out

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Wait until the batch being sent (if any) was delivered or given
        up; False if that takes longer than ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            while self._jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send what is left of the batch being sent within ``timeout``
        seconds, a few requests at once, one attempt each, then stop (later
        batches are counted as not delivered). A collector that refuses
        connections ends it at once; what is left when the time runs out is
        counted as lost and logged in one warning."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            if self._final_deadline is None or deadline < self._final_deadline:
                self._final_deadline = deadline
            self._stopped = True
            batches = [job.batch for job in self._jobs]
        self.transport.stop_retrying()
        for batch in batches:
            batch.finish_by(deadline)
        if batches:
            self._help()
            self._send_pending()
        self.force_flush(max(deadline - time.monotonic(), 0.0))
        with self._cv:
            left = self._drop_pending_locked()
            # Sent and not answered yet: counted when (if) the answer comes.
            in_flight = self._held_spans
            self._cv.notify_all()
        if left:
            _outcomes.record_delivery(0, left)
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

    def _send_pending(self) -> None:
        """Take pending requests one by one, in order, and send each (this
        thread is one of the senders); returns when none is left, or the
        next one's deadline passed (a shutdown counts it)."""
        while True:
            with self._cv:
                if not self._pending:
                    return
                final = self._pending[0].job.batch.deadline
                if final is not None and time.monotonic() >= final:
                    return
                req = self._pending.popleft()
                self._senders += 1
            try:
                self._deliver(req)
            finally:
                with self._cv:
                    self._senders -= 1
                    self._cv.notify_all()
            if req.job.batch.deadline is not None:
                self._help()

    def _deliver(self, req: _Request) -> None:
        """Send one request until it is delivered, refused for good, or its
        batch's deadline passed; count its outcome."""
        batch = req.job.batch
        failures = 0
        delivered = failed = dropped = 0
        try:
            while True:
                final = batch.deadline
                deadline = time.monotonic() + self.config.timeout_ms / 1000.0
                if final is not None:
                    deadline = min(deadline, final)
                result = self.transport.send(req.payload, deadline, wait=batch.wait)
                if result.ok:
                    delivered = req.spans - result.rejected_spans
                    failed = result.rejected_spans
                    return
                if not result.retryable or final is not None:
                    failed = req.spans
                    if final is not None and result.unreachable:
                        # No collector to wait for: what is left goes too.
                        with self._cv:
                            dropped = self._drop_pending_locked()
                    return
                if batch.deadline is not None:
                    continue  # a shutdown began meanwhile: one last attempt
                failures += 1
                with self._cv:
                    self.spans_retried += req.spans
                batch.wait(self._retry_delay(failures, result))
        except Exception as exc:
            failed = req.spans - delivered
            _diag.internal_error("otlp.send", exc)
        finally:
            with self._cv:
                self._held_spans -= req.spans
                self.spans_sent += delivered
                req.job.left -= 1
                if failed:
                    self._lost(failed, 1, locked=True)
                self._cv.notify_all()
            if delivered or failed or dropped:
                _outcomes.record_delivery(delivered, failed + dropped)
            if failed or dropped:
                _outcomes.count_export_failure()

    def _retry_delay(self, failures: int, result: SendResult) -> float:
        if result.retry_after is not None:
            delay = float(result.retry_after)
        else:
            delay = random.uniform(
                0.0, min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** min(failures - 1, 10))
            )
        return min(delay, self.max_retry_delay_s)

    def _help(self) -> None:
        """A deadline is set: the caller goes on sending the pending
        requests, and helper threads join it, up to ``SHUTDOWN_PARALLEL``
        senders."""
        with self._cv:
            spare = min(len(self._pending), SHUTDOWN_PARALLEL - self._senders) - 1
        for _ in range(max(spare, 0)):
            threading.Thread(
                target=self._send_pending, name="pulsetrace-otlp-exit", daemon=True
            ).start()

    def _wait_for(self, job: _Job) -> None:
        """Until every request of ``job`` is resolved (at most until its
        batch's deadline: a shutdown counts what is left)."""
        with self._cv:
            while job.left:
                final = job.batch.deadline
                remaining = None if final is None else final - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._cv.wait(remaining)

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
            req.job.left -= 1
            self._lost(req.spans, 1, locked=True)
        self._pending.clear()
        self._held_spans -= spans
        self._cv.notify_all()
        return spans


def _reset_in_child(ref: weakref.ref[OtlpSpanExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter._after_fork_in_child()
