"""The kept traces and error groups of every pre-fork worker, as one view:
the ``traces`` part of :mod:`pulsetrace.monitoring.workers_parts`, read by
``/apm/traces``, ``/apm/traces/{id}``, ``/apm/errors``, the live page and
the alerts' example trace.

- **Published.** Each process publishes its ring's newest traces, at most
  :data:`PUBLISH_TRACES` and about :data:`PUBLISH_BYTES` of span data (the
  ring's own estimate of each span's JSON), each with its summary and its
  spans as ``/apm/traces/{id}`` shows them, and every error group of its
  ring (at most the ring's ``max_error_groups``). A trace is converted to
  JSON once, and again only when a late span joins it; nothing is written
  when the ring did not change. The cost is measured by
  ``benchmarks/monitoring/workers_merge.py``.
- **Merged.** Traces by trace id (the spans of a trace that crossed
  several workers are put together, and its summary computed again),
  newest first (by when the trace last reached its ring), at most the
  serving ring's ``max_traces`` and ``max_bytes``. Error groups by
  (exception type, location): counts added, ``first_seen`` the earliest,
  ``last_seen`` the latest, with the sample trace id, message and
  operation of the latest; past ``max_error_groups`` groups the least
  frequent are dropped and their errors counted as overflowed.
- **Dead workers** are folded the same way, bounded like one process's
  copy: their newest traces stay, and their error counts, once.
"""

from __future__ import annotations

from typing import Any, Optional

from pulsetrace.export.ring import (
    RingBufferExporter,
    matches,
    ordered,
    published_row,
    summary,
    tree,
)
from pulsetrace.monitoring.workers_parts import UNCHANGED, Encoded

#: Traces one process publishes at most (its newest).
PUBLISH_TRACES = 200
#: About the bytes of span data one process publishes at most.
PUBLISH_BYTES = 1024 * 1024
NAME = "traces"


class Published:
    """The ``state()`` of a ring: its copy (JSON), or ``UNCHANGED``."""

    def __init__(self, ring: RingBufferExporter) -> None:
        self.ring = ring
        self.version: Optional[int] = None

    def __call__(self) -> Any:
        got = self.ring.published(PUBLISH_TRACES, PUBLISH_BYTES, self.version)
        if got is None:
            return UNCHANGED
        self.version, data = got
        return Encoded(data)

    def after_fork(self) -> None:
        self.ring.reset_after_fork()
        self.version = None


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One trace from two processes' parts of it."""
    spans = {d["span_id"]: d for d in a["spans"]}
    new = [d for d in b["spans"] if d["span_id"] not in spans]
    spans.update((d["span_id"], d) for d in b["spans"])
    merged = list(spans.values())
    return {
        "trace_id": a["trace_id"],
        "at": max(a["at"], b["at"]),
        "bytes": a["bytes"] + (b["bytes"] if len(new) == len(b["spans"]) else 0),
        "summary": summary(a["trace_id"], [published_row(d) for d in merged]),
        "spans": merged,
    }


def merge(
    states: list[Any],
    max_traces: int = PUBLISH_TRACES,
    max_bytes: int = PUBLISH_BYTES,
    max_groups: int = 500,
) -> dict[str, Any]:
    """Several processes' copies as one, of the same form (module doc)."""
    by_id: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    overflowed = 0
    for state in states:
        for t in state["traces"]:
            have = by_id.get(t["trace_id"])
            by_id[t["trace_id"]] = t if have is None else _union(have, t)
        overflowed += int(state["overflowed"])
        for g in state["errors"]:
            key = (g["type"], g["location"])
            have = groups.get(key)
            if have is None:
                groups[key] = dict(g)
                continue
            have["count"] += g["count"]
            have["first_seen"] = min(have["first_seen"], g["first_seen"])
            if g["last_seen"] > have["last_seen"]:
                for k in ("last_seen", "sample_trace_id", "message", "operation"):
                    have[k] = g[k]
    traces: list[dict[str, Any]] = []
    total = 0
    for t in sorted(by_id.values(), key=lambda t: -t["at"]):
        if len(traces) >= max_traces or (traces and total + t["bytes"] > max_bytes):
            break
        traces.append(t)
        total += t["bytes"]
    kept = ordered(list(groups.values()))
    for g in kept[max_groups:]:
        overflowed += g["count"]
    return {"traces": traces, "errors": kept[:max_groups], "overflowed": overflowed}


def merger(ring: RingBufferExporter) -> Any:
    """The merge of the serving view: bounded like ``ring``."""

    def merge_view(states: list[Any]) -> dict[str, Any]:
        return merge(states, ring.max_traces, ring.max_bytes, ring.max_error_groups)

    return merge_view


def fold(states: list[Any]) -> dict[str, Any]:
    """Dead processes' copies as one, bounded like one process's copy."""
    return merge(states)


# --- readers of a merged copy ----------------------------------------------------


def traces(
    state: dict[str, Any],
    operation: Optional[str] = None,
    min_duration_ms: Optional[float] = None,
    error: Optional[bool] = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Summaries, newest first, filtered as ``RingBufferExporter.traces``."""
    out = []
    for t in state["traces"]:
        if matches(t["summary"], operation, min_duration_ms, error):
            out.append(dict(t["summary"]))
            if len(out) >= limit:
                break
    return out


def trace(state: dict[str, Any], trace_id: str) -> Optional[dict[str, Any]]:
    """One trace (hex id, either case) with its span tree, or None."""
    tid = trace_id.lower()
    for t in state["traces"]:
        if t["trace_id"] == tid:
            spans = [
                (d["span_id"], d["parent_span_id"], d["start_time_unix_nano"], d)
                for d in t["spans"]
            ]
            return dict(t["summary"], tree=tree(spans))
    return None


def errors(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Error groups, the most frequent first."""
    return [dict(g) for g in state["errors"]]
