"""The OTLP span exporter: kept traces to Jaeger or any OpenTelemetry
Collector, as natively encoded ``ExportTraceServiceRequest`` bytes.

The network I/O runs on the exporter's own sender thread, behind a small
bounded queue of encoded requests: a dead, slow or failing receiver delays
that thread only, never a request and never the other exporters. A request
that does not fit the queue, or cannot be delivered within the timeout
(retries included), is lost and counted (``otlp_spans_lost``); what was
delivered and what was not is also reported to pulsetrace's
``spans_delivered`` / ``spans_delivery_failed`` counters. At shutdown each
queued request gets one attempt, no retries, within the shutdown's bound. After a
fork, the child has its own lock, queue and counters, and starts its own
sender thread and connections (never the parent's) on first use.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Optional

from pulsetrace import _diag, _runtime
from pulsetrace.config import OtlpConfig, environment
from pulsetrace.export import ExportResult
from pulsetrace.export.otlp import OtlpTransport

__all__ = ["OtlpSpanExporter"]


class OtlpSpanExporter:
    """Sends kept traces over OTLP (gRPC or HTTP/protobuf) with retries."""

    def __init__(self, config: Optional[OtlpConfig] = None, max_queued: int = 8) -> None:
        self.config = config if config is not None else environment().otlp
        self.transport = OtlpTransport(self.config)
        self.max_queued = max_queued
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._busy = False
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        # Set by shutdown(): no send goes on past it.
        self._final_deadline: Optional[float] = None
        self.spans_sent = 0
        self.spans_lost = 0
        self.batches_lost = 0
        if hasattr(os, "register_at_fork"):
            reset = functools.partial(_reset_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=reset)

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child before any other thread exists there. The
        parent's lock may have been held at the fork (by its sender thread),
        its queued requests are the parent's to send, its thread is not here."""
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._busy = False
        self._thread = None
        self._final_deadline = None
        self.spans_sent = self.spans_lost = self.batches_lost = 0

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

    def export_otlp(self, payload: bytes, spans: int) -> ExportResult:
        """Queue one encoded request of ``spans`` spans for sending."""
        with self._cv:
            queued = not self._stopping and len(self._queue) < self.max_queued
            if queued:
                self._ensure_thread()
                self._queue.append((payload, spans))
                self._cv.notify_all()
            else:
                self.spans_lost += spans
                self.batches_lost += 1
        if not queued:
            _runtime.record_delivery(0, spans)
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                payload, spans = self._queue.popleft()
                self._busy = True
                final = self._final_deadline
            delivered = 0
            try:
                deadline = time.monotonic() + self.config.timeout_ms / 1000.0
                if final is not None:
                    deadline = min(deadline, final)
                result = self.transport.send(payload, deadline)
                if result.ok:
                    delivered = spans - result.rejected_spans
                with self._cv:
                    if result.ok:
                        self.spans_sent += delivered
                    else:
                        self.spans_lost += spans
                        self.batches_lost += 1
            except Exception as exc:
                _diag.internal_error("otlp.send", exc)
            finally:
                _runtime.record_delivery(delivered, spans - delivered)
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def export(self, traces: Sequence[Any]) -> ExportResult:
        """Not used: pulsetrace hands this exporter encoded requests
        (``export_otlp``). Kept for the exporter protocol."""
        return ExportResult.FAILURE

    def counters(self) -> dict[str, int]:
        with self._cv:
            out = {
                "otlp_spans_sent": self.spans_sent,
                "otlp_spans_lost": self.spans_lost,
                "otlp_batches_lost": self.batches_lost,
                "otlp_queued_batches": len(self._queue),
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
        """Send what is queued within ``timeout`` seconds, then stop. Each
        request gets one attempt, no retries: a collector that is down or
        refusing costs one quick failed attempt per request, so a process
        exits promptly when none is there."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._final_deadline = deadline
        self.transport.stop_retrying()
        self.force_flush(max(deadline - time.monotonic(), 0.0))
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self.transport.shutdown()


def _reset_in_child(ref: weakref.ref[OtlpSpanExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter._after_fork_in_child()
