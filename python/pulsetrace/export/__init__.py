"""Exporters: where kept traces go.

An exporter has ``export(traces) -> ExportResult`` (``traces`` is a list of
traces, each a list of :class:`pulsetrace.SpanData`), ``force_flush(timeout)``
and ``shutdown(timeout)``. Exporters run on pulsetrace's export thread,
never on a request thread.
"""

from __future__ import annotations

import enum
import json
import sys
import threading
from collections.abc import Sequence
from typing import IO, Optional, Protocol, runtime_checkable

from pulsetrace._native import SpanData

__all__ = [
    "ConsoleSpanExporter",
    "ExportResult",
    "InMemorySpanExporter",
    "SpanExporter",
    "span_to_dict",
]

Trace = Sequence[SpanData]


class ExportResult(enum.Enum):
    SUCCESS = 0
    FAILURE = 1


@runtime_checkable
class SpanExporter(Protocol):
    def export(self, traces: Sequence[Trace]) -> ExportResult: ...

    def force_flush(self, timeout: float = 30.0) -> bool: ...

    def shutdown(self, timeout: float = 30.0) -> None: ...


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


class InMemorySpanExporter:
    """Keeps every exported span in memory (for tests and examples)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traces: list[list[SpanData]] = []
        self._stopped = False

    def export(self, traces: Sequence[Trace]) -> ExportResult:
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


class ConsoleSpanExporter:
    """Writes one JSON object per span to a stream (default: stdout)."""

    def __init__(self, out: Optional[IO[str]] = None) -> None:
        self._out = out

    def export(self, traces: Sequence[Trace]) -> ExportResult:
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
