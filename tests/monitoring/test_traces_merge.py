"""Several processes' kept traces and error groups as one
(``pulsetrace.monitoring.traces_merge``), from real ring buffers' published
copies: a trace whose spans reached two processes reads exactly as one
ring holding all its spans shows it; error groups add up (first and last
seen, the latest sample); every bound holds."""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from pulsetrace.export.ring import RingBufferExporter
from pulsetrace.monitoring import traces_merge


class _Span:
    """What the ring reads of a span (SpanData's fields)."""

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent: Optional[int],
        start: int,
        end: int,
        name: str = "op",
        error: Optional[str] = None,
    ) -> None:
        self.trace_id, self.span_id, self.parent_span_id = trace_id, span_id, parent
        self.name, self.kind = name, "server" if parent is None else "internal"
        self.start_time_unix_nano, self.end_time_unix_nano = start, end
        self.duration_ns = end - start
        self.status, self.status_message = ("error", "failed") if error else ("unset", "")
        self.attributes: dict[str, Any] = {"n": span_id}
        self.events: list[dict[str, Any]] = []
        if error:
            trace = f'Traceback:\n  File "app.py", line {len(error)}, in handler\n'
            attrs = {"exception.type": error, "exception.stacktrace": trace}
            self.events = [{"name": "exception", "attributes": attrs}]
        self.keep_reason = "error" if error else None


def _copy(ring: RingBufferExporter) -> dict[str, Any]:
    got = ring.published(traces_merge.PUBLISH_TRACES, traces_merge.PUBLISH_BYTES)
    assert got is not None
    return json.loads(got[1])


def test_a_trace_across_two_processes_reads_as_one_ring_shows_it():
    tid = 0xABC
    root = _Span(tid, 1, None, 100_000, 1_000_000, name="GET /a")
    first = _Span(tid, 2, 1, 200_000, 300_000, name="load")
    later = _Span(tid, 3, 1, 400_000, 1_500_000, name="call")  # ends after the root
    grand = _Span(tid, 4, 3, 450_000, 460_000, name="query", error="KeyError")
    a, b, one = RingBufferExporter(), RingBufferExporter(), RingBufferExporter()
    a.export([[root, first]])
    b.export([[later, grand]])
    one.export([[root, first, later, grand]])
    merged = traces_merge.merge([_copy(a), _copy(b)])
    got = traces_merge.trace(merged, f"{tid:032x}")
    assert got == one.trace(f"{tid:032x}")
    assert got["spans"] == 4 and got["error"] is True and got["duration_ms"] == 1.4
    assert [c["name"] for c in got["tree"][0]["children"]] == ["load", "call"]
    assert "_end" not in got["tree"][0] and "_dur" not in got["tree"][0]
    assert traces_merge.traces(merged) == one.traces()
    # Upper case ids resolve too; an unknown one does not.
    assert traces_merge.trace(merged, f"{tid:032X}") == got
    assert traces_merge.trace(merged, f"{tid + 1:032x}") is None


def test_traces_are_newest_first_filtered_and_bounded():
    a, b = RingBufferExporter(), RingBufferExporter()
    for i in range(1, 7):  # arrivals alternate between the two processes
        (a if i % 2 else b).export([[_Span(i, 1, None, i, i + i * 10**6, name=f"op{i % 2}")]])
        time.sleep(0.002)
    merged = traces_merge.merge([_copy(a), _copy(b)])
    ids = [t["trace_id"] for t in traces_merge.traces(merged)]
    assert ids == [f"{i:032x}" for i in range(6, 0, -1)]
    odd = traces_merge.traces(merged, operation="op1", min_duration_ms=2.0, limit=2)
    assert [t["trace_id"] for t in odd] == [f"{i:032x}" for i in (5, 3)]
    bounded = traces_merge.merge([_copy(a), _copy(b)], max_traces=4)
    assert [t["trace_id"] for t in bounded["traces"]] == [f"{i:032x}" for i in range(6, 2, -1)]
    # What a process publishes is bounded: its newest, at least one.
    got = a.published(2, 10**9)
    assert got is not None and [t["trace_id"] for t in json.loads(got[1])["traces"]] == [
        f"{i:032x}" for i in (5, 3)
    ]
    got = a.published(100, 1)
    assert got is not None and len(json.loads(got[1])["traces"]) == 1
    # Nothing changed since a version: nothing to publish.
    version = got[0]
    assert a.published(100, 10**9, version) is None
    a.export([[_Span(9, 1, None, 9, 10)]])
    assert a.published(100, 10**9, version) is not None


def test_error_groups_add_up_with_the_latest_sample():
    a, b = RingBufferExporter(), RingBufferExporter()
    a.export(
        [[_Span(1, 1, None, 1, 2, error="KeyError")], [_Span(2, 1, None, 1, 2, error="KeyError")]]
    )
    time.sleep(0.01)
    b.export([[_Span(3, 1, None, 1, 2, error="KeyError")]])
    b.export([[_Span(4, 1, None, 1, 2, error="ValueError")]])
    ga = {g["type"]: g for g in a.errors()}
    gb = {g["type"]: g for g in b.errors()}
    merged = traces_merge.merge([_copy(a), _copy(b)])
    key, value = traces_merge.errors(merged)
    assert (key["type"], key["count"], value["type"], value["count"]) == (
        "KeyError",
        3,
        "ValueError",
        1,
    )
    assert key["location"] == "app.py:8 in handler"
    assert key["first_seen"] == ga["KeyError"]["first_seen"]
    assert key["last_seen"] == gb["KeyError"]["last_seen"] > key["first_seen"]
    assert key["sample_trace_id"] == f"{3:032x}"
    assert merged["overflowed"] == 0
    # Past the bound the least frequent group goes, its errors counted.
    few = traces_merge.merge([_copy(a), _copy(b)], max_groups=1)
    assert [g["type"] for g in few["errors"]] == ["KeyError"] and few["overflowed"] == 1
    # A folded copy merges again as a copy: each count once.
    again = traces_merge.merge([traces_merge.fold([_copy(a)]), _copy(b)])
    assert [(g["type"], g["count"]) for g in again["errors"]] == [
        ("KeyError", 3),
        ("ValueError", 1),
    ]
