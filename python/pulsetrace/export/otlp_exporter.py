"""The OTLP span exporter: kept traces to Jaeger or any OpenTelemetry
Collector, as natively encoded ``ExportTraceServiceRequest`` bytes (each
batch's :meth:`~pulsetrace.export.SpanBatch.otlp_requests`, encoded once per
batch whatever the number of OTLP exporters).

The network I/O runs on the exporter's own sender thread, behind a queue of
encoded requests bounded in spans (``PULSETRACE_EXPORT_QUEUE_SIZE``): a
dead, slow or failing receiver delays that thread only, never a request and
never the other exporters. A request that failed in a way worth retrying
stays queued and is sent again later (exponential backoff, or the delay the
receiver asked for with ``Retry-After`` / RetryInfo, at most
``PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS``); only a request that does not fit
the queue, or that the receiver refused for good, is lost and counted
(``otlp_spans_lost``). What was delivered and what was not is also reported
to pulsetrace's ``spans_delivered`` / ``spans_delivery_failed`` counters.

At shutdown the queued requests are sent a few at once, one attempt each,
within the shutdown's bound; what is still queued when it runs out is
counted and logged in one warning, and a collector that refuses
connections ends the shutdown at once. After a fork, the child has its own
lock, queue and counters, and starts its own sender thread and connections
(never the parent's) on first use.
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
from typing import Any, Optional

from pulsetrace import _diag, _runtime
from pulsetrace.config import OtlpConfig, environment
from pulsetrace.export import ExportResult, SpanBatch, SpanExporter
from pulsetrace.export.otlp import INITIAL_BACKOFF_S, MAX_BACKOFF_S, OtlpTransport

__all__ = ["OtlpSpanExporter"]

log = logging.getLogger("pulsetrace")

#: Requests sent at once at shutdown.
SHUTDOWN_PARALLEL = 4


@dataclass
class _Request:
    payload: bytes
    spans: int
    not_before: float = 0.0
    failures: int = 0


class OtlpSpanExporter(SpanExporter):
    """Sends kept traces over OTLP (gRPC or HTTP/protobuf) with retries."""

    def __init__(
        self,
        config: Optional[OtlpConfig] = None,
        max_queued_spans: Optional[int] = None,
        max_retry_delay_s: Optional[float] = None,
    ) -> None:
        env = environment()
        self.config = config if config is not None else env.otlp
        self.transport = OtlpTransport(self.config)
        # None: the export queue's bound of the configuration in use.
        self._max_queued_spans = max_queued_spans
        self.max_retry_delay_s = (
            max_retry_delay_s
            if max_retry_delay_s is not None
            else env.export_max_retry_delay_ms / 1000.0
        )
        self._cv = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_spans = 0
        self._busy = 0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        # Set by shutdown(): no send goes on past it.
        self._final_deadline: Optional[float] = None
        self.spans_sent = 0
        self.spans_lost = 0
        self.batches_lost = 0
        self.spans_retried = 0
        if hasattr(os, "register_at_fork"):
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    @property
    def max_queued_spans(self) -> int:
        """Spans this exporter holds at most (queued and being retried):
        the value it was given, else ``PULSETRACE_EXPORT_QUEUE_SIZE`` of the
        configuration in use (so ``configure()`` reaches it)."""
        if self._max_queued_spans is not None:
            return self._max_queued_spans
        cfg = _runtime.current_config()
        return (cfg if cfg is not None else environment()).export_queue_size

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child before any other thread exists there. The
        parent's lock may have been held at the fork (by its sender thread),
        its queued requests are the parent's to send, its thread is not here."""
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._queued_spans = 0
        self._busy = 0
        self._thread = None
        self._final_deadline = None
        self.spans_sent = self.spans_lost = self.batches_lost = self.spans_retried = 0

    def _ensure_thread(self) -> None:
        """Called with ``self._cv`` held."""
        if self._pid != os.getpid():
            # Forked: the parent's gRPC channel or kept-alive HTTP connections
            # must not be shared; the child opens its own.
            self._pid = os.getpid()
            self.transport = OtlpTransport(self.config)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="pulsetrace-otlp", daemon=True)
            self._thread.start()

    def export(self, batch: SpanBatch, /) -> ExportResult:
        """Queue the batch's natively encoded OTLP requests for sending.
        Returns QUEUED: the outcome of every span (oversized, lost to the
        queue bound, delivered or not) is counted here, once known."""
        requests, oversized = batch.otlp_requests()
        lost = oversized
        if oversized:
            _runtime.record_delivery(0, oversized)
        for payload, spans in requests:
            if self._queue_request(payload, spans) is not ExportResult.QUEUED:
                lost += spans
        if lost:
            _runtime.count_export_failure()
        return ExportResult.QUEUED

    def _queue_request(self, payload: bytes, spans: int) -> ExportResult:
        """Queue one encoded request of ``spans`` spans for sending: QUEUED,
        or FAILURE (counted as not delivered) when it does not fit."""
        with self._cv:
            queued = (
                not self._stopping and self._queued_spans + spans <= self.max_queued_spans
            ) or (not self._stopping and not self._queue and not self._busy)
            if queued:
                self._ensure_thread()
                self._queue.append(_Request(payload, spans))
                self._queued_spans += spans
                self._cv.notify_all()
            else:
                self._lose(spans)
        if not queued:
            _runtime.record_delivery(0, spans)
            return ExportResult.FAILURE
        return ExportResult.QUEUED

    def _lose(self, spans: int) -> None:
        """With ``self._cv`` held."""
        self.spans_lost += spans
        self.batches_lost += 1

    def _next(self) -> Optional[_Request]:
        """With ``self._cv`` held: the next request due, waiting for it;
        None when stopping with nothing left."""
        while True:
            if self._queue:
                head = self._queue[0]
                wait = head.not_before - time.monotonic()
                if self._final_deadline is not None or wait <= 0:
                    # Its spans stay counted in _queued_spans while it is
                    # sent: the bound covers requests in flight too.
                    return self._queue.popleft()
                self._cv.wait(wait)
            elif self._stopping:
                return None
            else:
                self._cv.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                req = self._next()
                if req is None:
                    return
                self._busy += 1
                final = self._final_deadline
            delivered = failed = 0
            resolved = False  # sent, kept for a retry or lost
            try:
                deadline = time.monotonic() + self.config.timeout_ms / 1000.0
                if final is not None:
                    deadline = min(deadline, final)
                result = self.transport.send(req.payload, deadline)
                with self._cv:
                    resolved = True
                    if result.ok:
                        delivered = req.spans - result.rejected_spans
                        failed = result.rejected_spans
                        self.spans_sent += delivered
                        self._queued_spans -= req.spans
                    elif result.retryable and self._final_deadline is None:
                        # Kept (its spans were counted within the bound when
                        # it was queued): back at the head, sent again later.
                        req.failures += 1
                        req.not_before = time.monotonic() + self._retry_delay(req, result)
                        self._queue.appendleft(req)
                        self.spans_retried += req.spans
                    else:
                        failed = req.spans
                        self._queued_spans -= req.spans
                        self._lose(req.spans)
                        if final is not None and result.unreachable:
                            failed += self._drop_queued_locked()
            except Exception as exc:
                if not resolved:
                    failed = req.spans
                    with self._cv:
                        self._queued_spans -= req.spans
                        self._lose(req.spans)
                _diag.internal_error("otlp.send", exc)
            finally:
                if delivered or failed:
                    _runtime.record_delivery(delivered, failed)
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def _retry_delay(self, req: _Request, result: Any) -> float:
        if result.retry_after is not None:
            delay = float(result.retry_after)
        else:
            delay = random.uniform(
                0.0, min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** min(req.failures, 10))
            )
        return min(delay, self.max_retry_delay_s)

    def _drop_queued_locked(self) -> int:
        """With ``self._cv`` held: count every queued request as lost."""
        spans = 0
        for req in self._queue:
            spans += req.spans
            self._lose(req.spans)
        self._queue.clear()
        self._queued_spans -= spans
        return spans

    def counters(self) -> dict[str, int]:
        with self._cv:
            out = {
                "otlp_spans_sent": self.spans_sent,
                "otlp_spans_lost": self.spans_lost,
                "otlp_batches_lost": self.batches_lost,
                "otlp_spans_retried": self.spans_retried,
                "otlp_queued_batches": len(self._queue) + self._busy,
                "otlp_queued_spans": self._queued_spans,
            }
        out.update({f"otlp_{k}": v for k, v in self.transport.counters().items()})
        return out

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued request was sent (or failed)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send what is queued within ``timeout`` seconds, a few requests at
        once, one attempt each, then stop. A collector that refuses
        connections ends it at once; what is still queued when the time runs
        out is counted as lost and logged in one warning."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._final_deadline = deadline
            pending = len(self._queue)
            if pending:
                self._ensure_thread()
                # The sender thread may be busy with a request already (a
                # slow collector): it counts among the parallel sends but
                # is not free for a queued one.
                for _ in range(min(pending + self._busy, SHUTDOWN_PARALLEL) - 1):
                    threading.Thread(
                        target=self._run, name="pulsetrace-otlp-exit", daemon=True
                    ).start()
            self._cv.notify_all()
        self.transport.stop_retrying()
        self.force_flush(max(deadline - time.monotonic(), 0.0))
        with self._cv:
            self._stopping = True
            left = self._drop_queued_locked()
            # Sent and not answered yet: counted when (if) the answer comes.
            in_flight = self._queued_spans
            self._cv.notify_all()
        if left:
            _runtime.record_delivery(0, left)
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


def _reset_in_child(ref: weakref.ref[OtlpSpanExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter._after_fork_in_child()
