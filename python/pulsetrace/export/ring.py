"""The ring buffer exporter: the most recent kept traces, in memory, for
``/apm/traces`` and ``/apm/errors``.

Bounded twice: at most ``max_traces`` traces and about ``max_bytes`` bytes
of span data (each span's JSON size); the oldest trace goes first. Spans
arriving after their trace was exported (late spans of a kept trace) join
it. Errors are grouped as they arrive, by exception type and location (the
innermost frame of the recorded stack trace), at most ``max_error_groups``
groups (further new groups are counted in ``error_groups_overflowed``).

:meth:`RingBufferExporter.published` is this ring's copy for the other
processes of a pre-fork server (each trace encoded once); the summary, span
tree and filter rules (:func:`summary`, :func:`tree`, :func:`matches`) are
shared with the merged view of every worker's copies
(:mod:`pulsetrace.monitoring.traces_merge`).

Span data reaches an exporter already scrubbed (the core's scrubber runs at
export), so what this exporter serves is what any exporter sends.
"""

from __future__ import annotations

import json
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


#: A span as the summary reads it: (span id, parent id, name, kind, start,
#: end, duration in ns, status, keep reason); ids of either form (ints here,
#: hex strings in a published copy).
Row = tuple[Any, Any, str, str, int, int, int, str, Any]
#: A published span's keys that :func:`tree` leaves out (its end and exact
#: duration, for :func:`summary` over a merged copy).
PRIVATE = ("_end", "_dur")


def _row(s: SpanData) -> Row:
    return (
        s.span_id,
        s.parent_span_id,
        s.name,
        s.kind,
        s.start_time_unix_nano,
        s.end_time_unix_nano,
        s.duration_ns,
        s.status,
        s.keep_reason,
    )


def published_row(d: dict[str, Any]) -> Row:
    """The row of a published span (see :meth:`RingBufferExporter.published`)."""
    return (
        d["span_id"],
        d["parent_span_id"],
        d["name"],
        d["kind"],
        d["start_time_unix_nano"],
        d["_end"],
        d["_dur"],
        d["status"],
        d["keep_reason"],
    )


def summary(trace_id: str, rows: Sequence[Row]) -> dict[str, Any]:
    """A trace's summary: its root (the earliest span whose parent is not in
    the trace), start, duration, span count, whether a span failed."""
    ids = {r[0] for r in rows}
    roots = [r for r in rows if r[1] not in ids]
    root = min(roots or rows, key=lambda r: r[4])
    start = min(r[4] for r in rows)
    end = max(r[5] for r in rows)
    return {
        "trace_id": trace_id,
        "operation": root[2],
        "kind": root[3],
        "start_time_unix_nano": start,
        "duration_ms": round(max(root[6], end - start) / 1e6, 3),
        "spans": len(rows),
        "error": any(r[7] == "error" for r in rows),
        "keep_reason": root[8],
    }


def tree(spans: Sequence[tuple[Any, Any, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Spans ``(span id, parent id, start, JSON dict)`` as trees by parent id
    (children by start time); a span whose parent is not in the trace is a
    root. The dicts are copied (without :data:`PRIVATE` keys)."""
    nodes: dict[Any, dict[str, Any]] = {}
    children: dict[Any, list[dict[str, Any]]] = {}
    for sid, _, _, d in spans:
        children[sid] = []
        node = {k: v for k, v in d.items() if k not in PRIVATE}
        node["children"] = children[sid]
        nodes[sid] = node
    roots: list[dict[str, Any]] = []
    for sid, pid, _, _ in sorted(spans, key=lambda s: s[2]):
        (children[pid] if pid is not None and pid in children else roots).append(nodes[sid])
    return roots


def matches(
    s: dict[str, Any],
    operation: Optional[str] = None,
    min_duration_ms: Optional[float] = None,
    error: Optional[bool] = None,
) -> bool:
    """Whether a trace's summary passes ``/apm/traces``' filters: its root
    span's name, its duration, whether a span failed."""
    return (
        (operation is None or s["operation"] == operation)
        and (min_duration_ms is None or s["duration_ms"] >= min_duration_ms)
        and (error is None or s["error"] == error)
    )


def ordered(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Error groups, the most frequent first (then the latest seen)."""
    return sorted(groups, key=lambda g: (-g["count"], -g["last_seen"]))


class _Trace:
    """A buffered trace: its SpanData (converted to JSON only when read)."""

    __slots__ = ("at", "bytes", "copy", "rev", "spans", "trace_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id
        self.spans: dict[int, SpanData] = {}
        self.bytes = 0
        self.at = 0.0  # when a span of it last arrived
        self.rev = 0  # spans added so far
        #: The published copy (JSON) and the ``rev`` it was made at.
        self.copy: Optional[tuple[int, bytes]] = None

    def summary(self) -> dict[str, Any]:
        return summary(f"{self.trace_id:032x}", [_row(s) for s in self.spans.values()])

    def tree(self) -> list[dict[str, Any]]:
        return tree(
            [
                (sid, s.parent_span_id, s.start_time_unix_nano, span_to_dict(s))
                for sid, s in self.spans.items()
            ]
        )


def _published(trace_id: int, at: float, size: int, spans: list[SpanData]) -> bytes:
    out = []
    for s in spans:
        d = span_to_dict(s)
        d["_end"], d["_dur"] = s.end_time_unix_nano, s.duration_ns
        out.append(d)
    hex_id = f"{trace_id:032x}"
    copy = {
        "trace_id": hex_id,
        "at": at,
        "bytes": size,
        "summary": summary(hex_id, [_row(s) for s in spans]),
        "spans": out,
    }
    return _json(copy)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


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
        #: Changes whenever what :meth:`published` returns may change.
        self._version = 0

    # --- the exporter -----------------------------------------------------

    def export(self, batch: Sequence[Sequence[SpanData]], /) -> ExportResult:
        now = time.time()
        with self._lock:
            for trace in batch:
                for span in trace:
                    self._add(span, now)
            self._evict()
            self._version += 1
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
        t.at = now
        t.rev += 1
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
                if not matches(s, operation, min_duration_ms, error):
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
        return ordered(groups)

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
            self._version += 1

    def reset_after_fork(self) -> None:
        """In a forked child: empty, with a new lock (the parent's traces and
        errors are the parent's; its lock may have been held at fork)."""
        self._lock = threading.Lock()
        self.clear()

    # --- a copy for other processes ----------------------------------------

    def published(
        self, max_traces: int, max_bytes: int, since: Optional[int] = None
    ) -> Optional[tuple[int, bytes]]:
        """``(version, copy)``: a JSON object of the newest traces (at most
        ``max_traces``, and about ``max_bytes`` of span data, at least one),
        newest first, each with its summary and spans (with their end and
        exact duration, :data:`PRIVATE`), of every error group and of the
        errors not grouped; None when nothing changed since ``since`` (an
        earlier version). A trace is converted again only when a span
        joined it."""
        with self._lock:
            if since is not None and since == self._version:
                return None
            version = self._version
            held: list[tuple[_Trace, int, float, int, list[SpanData]]] = []
            total = 0
            for t in reversed(self._traces.values()):
                if len(held) >= max_traces or (held and total + t.bytes > max_bytes):
                    break
                held.append((t, t.rev, t.at, t.bytes, list(t.spans.values())))
                total += t.bytes
            errors = [dict(g) for g in self._errors.values()]
            overflowed = self._errors_overflowed
        traces = []
        for t, rev, at, size, spans in held:  # converted outside the exporter's lock
            copy = t.copy
            if copy is None or copy[0] != rev:
                copy = (rev, _published(t.trace_id, at, size, spans))
                t.copy = copy
            traces.append(copy[1])
        tail = _json(errors) + b',"overflowed":' + str(overflowed).encode()
        return version, b'{"traces":[' + b",".join(traces) + b'],"errors":' + tail + b"}"


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
