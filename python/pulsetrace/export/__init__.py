"""Exporters: where kept traces go.

Kept traces leave the native core's export queue (one bounded queue) on
pulsetrace's one export thread, which sleeps until a batch is ready (full,
or its oldest trace waited ``PULSETRACE_EXPORT_INTERVAL_MS``), a flush or a
shutdown; nothing polls. Each batch is one :class:`SpanBatch`, handed to
every exporter in turn.

An exporter implements :class:`SpanExporter`: ``export(batch) ->
ExportResult``, ``force_flush(timeout)`` and ``shutdown(timeout)``. A batch
is a sequence of traces, each a list of :class:`pulsetrace.SpanData` (what
the in-memory and console exporters read), and also gives the same spans as
natively encoded OTLP requests (:meth:`SpanBatch.otlp_requests`, what the
OTLP exporter sends): each form is built once per batch, only if an
exporter asks for it. Exporters run on the export thread (at shutdown, or
with no export thread running, on the thread that flushes), never on a
request thread.

This is the one chain: an exporter takes its batches on the thread that
calls ``export`` and keeps no unbounded queue of its own. It must not hold
that thread, neither for an answer nor for a retry: while it does, kept
traces wait in the core's export queue, for every exporter (and what does
not fit there is dropped). The OTLP exporter sends without waiting for the
answers (a few requests in flight at once, their answers on grpcio's or a
sender thread, which wake the export thread:
:func:`pulsetrace.export._thread.wake`). An exporter whose receiver failed
keeps what it could not send (bounded: the OTLP exporter's
``PULSETRACE_OTLP_MAX_PENDING_SPANS``, in flight included) and tells the
export thread when to wake it for a retry (:meth:`SpanExporter.next_wake`):
the thread then calls :meth:`SpanExporter.retry`, even if no new trace
came, and sleeps without a timeout while no exporter asks for one.

Batches reach an exporter one at a time and in order, with one exception:
at shutdown, when the export thread is still inside ``export`` (a slow
receiver), what is left is handed over from the shutting-down thread at the
same time, both bound by the shutdown's deadline; an exporter must be
thread-safe for that (the built-in ones are).
"""

from __future__ import annotations

import enum
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Callable, Optional, Protocol, Union, overload, runtime_checkable

from pulsetrace._native import Batch, SpanData

__all__ = [
    "ConsoleSpanExporter",
    "ExportResult",
    "InMemorySpanExporter",
    "SpanBatch",
    "SpanExporter",
    "span_to_dict",
]

Trace = Sequence[SpanData]


class ExportResult(enum.Enum):
    """What an exporter did with a batch. SUCCESS: every span delivered;
    FAILURE: none delivered (both counted in ``spans_delivered`` /
    ``spans_delivery_failed`` for the exporter); QUEUED: the exporter counts
    each span's outcome itself (``pulsetrace._runtime.record_delivery``) as
    it learns it (the OTLP exporter: some requests of a batch may be
    delivered and others not, or answered after a shutdown's deadline)."""

    SUCCESS = 0
    FAILURE = 1
    QUEUED = 2


class SpanBatch(Sequence[Trace]):
    """Kept traces taken from the export queue together: a sequence of
    traces (each a list of SpanData, late spans of a kept trace as a trace
    of their own), and the same spans as OTLP requests. Built once per
    batch and shared by every exporter: do not keep it past ``export``."""

    __slots__ = (
        "_cond",
        "_deadline",
        "_max_request_bytes",
        "_native",
        "_on_oversized",
        "_otlp",
        "_traces",
    )

    def __init__(
        self,
        native: Batch,
        max_request_bytes: Optional[int] = None,
        on_oversized: Optional[Callable[[int], None]] = None,
        deadline: Optional[float] = None,
    ) -> None:
        self._native = native
        self._max_request_bytes = max_request_bytes
        self._on_oversized = on_oversized
        self._traces: Optional[list[list[SpanData]]] = None
        self._otlp: Optional[tuple[list[tuple[bytes, int]], int]] = None
        self._deadline = deadline
        self._cond = threading.Condition(threading.Lock())

    @property
    def deadline(self) -> Optional[float]:
        """When (a :func:`time.monotonic` value) every exporter must be done
        with this batch: set by a shutdown (``PULSETRACE_SHUTDOWN_TIMEOUT_MS``),
        then an exporter makes one last attempt, not retries. None: no
        bound, an exporter may retry as long as its receiver fails."""
        return self._deadline

    def finish_by(self, deadline: float) -> None:
        """Bound the time exporters may still spend on this batch (a
        shutdown began): ends every :meth:`wait` at once."""
        with self._cond:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._cond.notify_all()

    def wait(self, seconds: float) -> bool:
        """A pause within ``export``: up to ``seconds``, ended early by
        :meth:`finish_by`. True when the batch has a deadline (no more
        retries: one last attempt). An exporter should rather keep what
        failed and retry at :meth:`SpanExporter.next_wake`."""
        with self._cond:
            if self._deadline is None and seconds > 0:
                self._cond.wait(seconds)
            return self._deadline is not None

    @property
    def spans(self) -> int:
        """Number of spans (``len()`` is the number of traces)."""
        return len(self._native)

    def _list(self) -> list[list[SpanData]]:
        if self._traces is None:
            self._traces = self._native.traces()
        return self._traces

    def __len__(self) -> int:
        return self._native.trace_count

    @overload
    def __getitem__(self, index: int) -> Trace: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Trace]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Trace, Sequence[Trace]]:
        return self._list()[index]

    def __iter__(self) -> Iterator[Trace]:
        return iter(self._list())

    def otlp_requests(self) -> tuple[list[tuple[bytes, int]], int]:
        """The batch as OTLP ``ExportTraceServiceRequest`` bytes, each within
        ``PULSETRACE_EXPORT_MAX_REQUEST_BYTES``: ``([(request, spans), ...],
        oversized)``, where ``oversized`` spans were each too large for a
        request of their own and are in none. Encoded natively (without the
        GIL) on first call."""
        if self._otlp is None:
            limit = self._max_request_bytes
            native = self._native
            self._otlp = native.otlp_requests() if limit is None else native.otlp_requests(limit)
            if self._otlp[1] and self._on_oversized is not None:
                self._on_oversized(self._otlp[1])
        return self._otlp


@runtime_checkable
class SpanExporter(Protocol):
    """Where kept traces go: the in-memory, console, ring buffer
    (``/apm/traces``) and OTLP exporters implement it, and so can an
    application's own (``export``, ``force_flush`` and ``shutdown`` are
    required; subclass it for the defaults of ``counters``, ``next_wake``
    and ``retry``)."""

    #: True for an exporter that sends over the network (OTLP): each batch
    #: goes to every exporter that does not first, so the time it takes to
    #: hand the batch over (the OTLP exporter may wait for room within its
    #: pending bound) does not delay it for the in-memory, console or ring
    #: exporters.
    remote: bool = False

    def export(self, batch: SpanBatch, /) -> ExportResult:
        """Take one batch; never raises (an exception is counted as a failed
        export). Called on the export thread, one batch at a time; returns
        without waiting to retry (what failed is kept for :meth:`retry`)."""
        ...

    def next_wake(self) -> Optional[float]:
        """When (a :func:`time.monotonic` value) the export thread should
        call :meth:`retry`, even if no batch comes; None: no need (the
        default). Read after each of the thread's wake-ups."""
        return None

    def retry(self) -> None:
        """Try again what an earlier ``export`` could not deliver (called on
        the export thread once :meth:`next_wake` has passed); never raises."""
        return None

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Deliver what this exporter holds within ``timeout`` seconds;
        False if it could not."""
        ...

    def shutdown(self, timeout: float = 30.0) -> None:
        """Deliver what it holds within ``timeout`` seconds, then stop."""
        ...

    def counters(self) -> dict[str, int]:
        """This exporter's own counters, by name (in ``pulsetrace.counters()``)."""
        return {}


#: What an exporter must have: checked once, when it is added.
REQUIRED = ("export", "force_flush", "shutdown")


def check_exporter(exporter: object) -> None:
    """Raise TypeError, naming what is missing, unless ``exporter`` has the
    :class:`SpanExporter` methods an exporter must have."""
    missing = [name for name in REQUIRED if not callable(getattr(exporter, name, None))]
    if missing:
        raise TypeError(
            f"{type(exporter).__name__} is not a span exporter: it has no "
            f"{', '.join(f'{m}()' for m in missing)} (see pulsetrace.SpanExporter)"
        )


def span_to_dict(span: SpanData) -> dict[str, object]:
    """A JSON-ready dict of a span (ids as lowercase hex, as in W3C headers)."""
    return {
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "parent_span_id": None if span.parent_span_id is None else f"{span.parent_span_id:016x}",
        "name": span.name,
        "kind": span.kind,
        "start_time_unix_nano": span.start_time_unix_nano,
        "duration_ms": round(span.duration_ns / 1e6, 3),
        "status": span.status,
        "status_message": span.status_message,
        "attributes": dict(span.attributes),
        "events": list(span.events),
        "keep_reason": span.keep_reason,
    }


class InMemorySpanExporter(SpanExporter):
    """Keeps every exported span in memory (for tests and examples)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traces: list[list[SpanData]] = []
        self._stopped = False

    def export(self, traces: Sequence[Trace], /) -> ExportResult:
        if self._stopped:
            return ExportResult.FAILURE
        with self._lock:
            self._traces.extend(list(t) for t in traces)
        return ExportResult.SUCCESS

    def traces(self) -> list[list[SpanData]]:
        """Exported traces (late spans of a kept trace arrive as their own list)."""
        with self._lock:
            return [list(t) for t in self._traces]

    def spans(self) -> list[SpanData]:
        with self._lock:
            return [s for t in self._traces for s in t]

    def clear(self) -> None:
        with self._lock:
            self._traces.clear()

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopped = True


class ConsoleSpanExporter(SpanExporter):
    """Writes one JSON object per span to a stream (default: stdout)."""

    def __init__(self, out: Optional[IO[str]] = None) -> None:
        self._out = out

    def export(self, traces: Sequence[Trace], /) -> ExportResult:
        out = self._out or sys.stdout
        try:
            for t in traces:
                for s in t:
                    out.write(json.dumps(span_to_dict(s), default=str) + "\n")
            out.flush()
        except (OSError, ValueError):
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None
