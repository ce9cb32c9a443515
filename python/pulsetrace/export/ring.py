"""The ring buffer exporter: the most recent kept traces, in memory, for
``/apm/traces`` and ``/apm/errors``.

Bounded twice: at most ``max_traces`` traces and about ``max_bytes`` bytes
of span data (each span's JSON size); the oldest trace goes first. Spans
arriving after their trace was exported (late spans of a kept trace) join
it. Errors are grouped as they arrive, by exception type and location (the
innermost frame of the recorded stack trace), at most ``max_error_groups``
groups (further new groups are counted in ``error_groups_overflowed``).

Span data reaches an exporter already scrubbed (the core's scrubber runs at
export), so what this exporter serves is what any exporter sends.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Optional

from pulsetrace._native import SpanData
from pulsetrace.export import ExportResult, SpanExporter, span_to_dict

__all__ = ["RingBufferExporter"]

# The last "File ..., line N, in f" of a Python traceback.
_FRAME = re.compile(r'File "([^"]*)", line (\d+), in (\S+)')


def _size(span: SpanData) -> int:
    """About the bytes of the span's JSON (without encoding it)."""
    n = 300 + len(span.name) + len(span.status_message)
    for k, v in span.attributes.items():
        n += len(k) + (len(v) if isinstance(v, str) else 24) + 6
    for e in span.events:
        n += 80 + sum(len(str(v)) + 24 for v in (e.get("attributes") or {}).values())
    return n


class _Trace:
    """A buffered trace: its SpanData (converted to JSON only when read)."""

    __slots__ = ("bytes", "spans", "trace_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id
        self.spans: dict[int, SpanData] = {}
        self.bytes = 0

    def summary(self) -> dict[str, Any]:
        spans = list(self.spans.values())
        roots = [s for s in spans if s.parent_span_id not in self.spans]
        root = min(roots or spans, key=lambda s: s.start_time_unix_nano)
        start = min(s.start_time_unix_nano for s in spans)
        end = max(s.end_time_unix_nano for s in spans)
        return {
            "trace_id": f"{self.trace_id:032x}",
            "operation": root.name,
            "kind": root.kind,
            "start_time_unix_nano": start,
            "duration_ms": round(max(root.duration_ns, end - start) / 1e6, 3),
            "spans": len(spans),
            "error": any(s.status == "error" for s in spans),
            "keep_reason": root.keep_reason,
        }

    def tree(self) -> list[dict[str, Any]]:
        """The spans as trees by parent id (children by start time); a span
        whose parent is not in the trace is a root."""
        nodes: dict[int, dict[str, Any]] = {}
        children: dict[int, list[dict[str, Any]]] = {}
        for sid, s in self.spans.items():
            children[sid] = []
            nodes[sid] = dict(span_to_dict(s), children=children[sid])
        roots: list[dict[str, Any]] = []
        for sid, s in sorted(self.spans.items(), key=lambda kv: kv[1].start_time_unix_nano):
            pid = s.parent_span_id
            (children[pid] if pid is not None and pid in children else roots).append(nodes[sid])
        return roots


class RingBufferExporter(SpanExporter):
    """The most recent kept traces, newest first, bounded by count and size."""

    def __init__(
        self,
        max_traces: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        max_error_groups: int = 500,
    ) -> None:
        for name, value in (
            ("max_traces", max_traces),
            ("max_bytes", max_bytes),
            ("max_error_groups", max_error_groups),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.max_traces = max_traces
        self.max_bytes = max_bytes
        self.max_error_groups = max_error_groups
        self._lock = threading.Lock()
        self._traces: OrderedDict[int, _Trace] = OrderedDict()  # oldest first
        self._bytes = 0
        self._evicted = 0
        self._errors: dict[tuple[str, str], dict[str, Any]] = {}
        self._errors_overflowed = 0

    # --- the exporter -----------------------------------------------------

    def export(self, batch: Sequence[Sequence[SpanData]], /) -> ExportResult:
        now = time.time()
        with self._lock:
            for trace in batch:
                for span in trace:
                    self._add(span, now)
            self._evict()
        return ExportResult.SUCCESS

    def _add(self, span: SpanData, now: float) -> None:
        tid = span.trace_id
        t = self._traces.get(tid)
        if t is None:
            t = self._traces[tid] = _Trace(tid)
        else:
            self._traces.move_to_end(tid)
        size = _size(span)
        old = t.spans.get(span.span_id)
        if old is not None:
            t.bytes -= _size(old)
            self._bytes -= _size(old)
        t.spans[span.span_id] = span
        t.bytes += size
        self._bytes += size
        if span.status == "error":
            self._note_error(span, now)

    def _evict(self) -> None:
        while self._traces and (
            len(self._traces) > self.max_traces
            or (self._bytes > self.max_bytes and len(self._traces) > 1)
        ):
            _, t = self._traces.popitem(last=False)
            self._bytes -= t.bytes
            self._evicted += 1

    def _note_error(self, span: SpanData, now: float) -> None:
        etype, location, message = _exception_of(span)
        key = (etype, location)
        group = self._errors.get(key)
        if group is None:
            if len(self._errors) >= self.max_error_groups:
                self._errors_overflowed += 1
                return
            group = self._errors[key] = {
                "type": etype,
                "location": location,
                "message": message,
                "operation": span.name,
                "count": 0,
                "first_seen": now,
                "last_seen": now,
                "sample_trace_id": f"{span.trace_id:032x}",
            }
        group["count"] += 1
        group["last_seen"] = now
        group["sample_trace_id"] = f"{span.trace_id:032x}"

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None

    # --- readers ----------------------------------------------------------

    def traces(
        self,
        operation: Optional[str] = None,
        min_duration_ms: Optional[float] = None,
        error: Optional[bool] = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Summaries of the buffered traces, newest first, filtered by the
        root span's name, the trace's duration and whether a span failed."""
        with self._lock:
            held = list(reversed(self._traces.values()))
            out = []
            for t in held:
                s = t.summary()
                if operation is not None and s["operation"] != operation:
                    continue
                if min_duration_ms is not None and s["duration_ms"] < min_duration_ms:
                    continue
                if error is not None and s["error"] != error:
                    continue
                out.append(s)
                if len(out) >= limit:
                    break
            return out

    def trace(self, trace_id: str) -> Optional[dict[str, Any]]:
        """One buffered trace (lowercase hex id) with its span tree, or None."""
        try:
            tid = int(trace_id, 16)
        except ValueError:
            return None
        with self._lock:
            t = self._traces.get(tid)
            if t is None:
                return None
            return dict(t.summary(), tree=t.tree())

    def errors(self) -> list[dict[str, Any]]:
        """Error groups, the most frequent first."""
        with self._lock:
            groups = [dict(g) for g in self._errors.values()]
        return sorted(groups, key=lambda g: (-g["count"], -g["last_seen"]))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                "ring_traces": len(self._traces),
                "ring_bytes": self._bytes,
                "ring_traces_evicted": self._evicted,
                "error_groups": len(self._errors),
                "error_groups_overflowed": self._errors_overflowed,
            }

    def clear(self) -> None:
        with self._lock:
            self._traces.clear()
            self._bytes = 0
            self._errors.clear()


def _exception_of(span: SpanData) -> tuple[str, str, str]:
    """(type, location, message) of a failed span: from its last
    ``exception`` event, else its status message."""
    for event in reversed(span.events):
        if event.get("name") != "exception":
            continue
        attrs = event.get("attributes") or {}
        etype = str(attrs.get("exception.type") or "Error")
        frames = _FRAME.findall(str(attrs.get("exception.stacktrace") or ""))
        location = f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else span.name
        return etype, location, str(attrs.get("exception.message") or "")[:500]
    attrs = span.attributes
    etype = str(attrs.get("error.type") or attrs.get("http.response.status_code") or "error")
    return etype, span.name, str(span.status_message or "")[:500]
