"""CPU cost of the pre-fork workers' view (``pulsetrace.monitoring.workers``)
with 1,000 operations (2,000 histograms) per process: what each worker
spends publishing its copy (every second when something changed, on its own
thread; a histogram is compressed again only when it changed), and what the
serving process spends merging four workers' copies (every ``VIEW_TTL_S``
at most, when an endpoint is read) and rendering the exposition from the
merged view, against rendering this process's own histograms alone.

Then the kept traces and error groups (``traces_merge``): a ring of 1,000
traces of 5 spans each (a request with realistic HTTP and SQL attributes,
about 2.5 KB of JSON a trace); what a worker spends on its published copy
(the newest ``PUBLISH_TRACES`` traces) when they are all new, when 20 new
traces arrived since the last copy, and when nothing changed; and what the
serving process spends decoding four copies, merging them, and listing 100
summaries. The spans are stand-ins with SpanData's fields (the ring and its
JSON conversion read nothing else).

Thread CPU time, median of ``--runs``. Figures, not a test: it exits 0
whatever the numbers.

    python benchmarks/monitoring/workers_merge.py [--runs 20]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import tempfile
import time
from typing import Callable

import pulsetrace
from pulsetrace import _native, _runtime, prometheus
from pulsetrace.monitoring import apm, traces_merge, workers, workers_parts

SERIES = 1000
WORKERS = 4


def _ms(fn: Callable[[], object], runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.thread_time()
        fn()
        out.append((time.thread_time() - t) * 1000)
    return statistics.median(out)


class _Span:
    """SpanData's fields, as the ring reads them."""

    def __init__(self, trace_id: int, span_id: int, parent: object, name: str, **attrs: object):
        self.trace_id, self.span_id, self.parent_span_id = trace_id, span_id, parent
        self.name, self.kind = name, "server" if parent is None else "client"
        self.start_time_unix_nano = 1_700_000_000_000_000_000 + trace_id * 10**7 + span_id
        self.duration_ns = 3_000_000 // span_id
        self.end_time_unix_nano = self.start_time_unix_nano + self.duration_ns
        self.status, self.status_message = "unset", ""
        self.attributes, self.events, self.keep_reason = attrs, [], "sampled"


def _trace(i: int) -> list[_Span]:
    sql = "SELECT id, name, email, created_at FROM contacts WHERE company_id = ? AND status = ?"
    root = _Span(
        i,
        1,
        None,
        "GET /api/contacts/{id}",
        **{
            "http.request.method": "GET",
            "url.path": f"/api/contacts/{i}",
            "http.route": "/api/contacts/{id}",
            "http.response.status_code": 200,
            "server.address": "api.internal",
            "client.address": "10.0.0.12",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
            "network.protocol.version": "1.1",
        },
    )
    db = {"db.system": "postgresql", "db.statement": sql, "db.name": "app"}
    return [
        root,
        _Span(i, 2, 1, "SELECT contacts", **db),
        _Span(i, 3, 1, "SELECT contacts", **db),
        _Span(i, 4, 1, "GET", **{"url.full": "https://api.example.com/v1/messages?page=2"}),
        _Span(i, 5, 1, "render", **{"template": "contact.html"}),
    ]


def _traces_part(runs: int) -> dict[str, float]:
    """The traces part's costs in the publishing worker (module doc)."""
    ring, part = apm.RING, workers_parts.get(traces_merge.NAME)
    out: dict[str, float] = {}
    samples: list[float] = []
    for _ in range(runs):
        ring.clear()
        ring.export([_trace(i) for i in range(1, 1001)])
        t = time.thread_time()
        got = part.encoded()
        samples.append((time.thread_time() - t) * 1000)
    out["all_new"] = statistics.median(samples)
    assert got is not None
    out["kib"] = len(got[1]) / 1024
    samples = []
    for r in range(runs):
        ring.export([_trace(2000 + 20 * r + i) for i in range(20)])
        t = time.thread_time()
        part.encoded()
        samples.append((time.thread_time() - t) * 1000)
    out["new_20"] = statistics.median(samples)
    out["unchanged"] = _ms(part.encoded, runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    base = tempfile.mkdtemp()
    try:
        pulsetrace.configure(
            max_metric_keys=2 * SERIES + 10, export_queue_size=1, sample_rate=0.0, workers_dir=base
        )
        t0 = 1_700_000_000_000_000_000
        for i in range(SERIES):
            for j in range(20):
                span = pulsetrace.start_span(f"GET /route/{i}", kind="server", start_time=t0)
                span.set_attribute("http.response.status_code", 500 if j == 0 else 200)
                span.end(end_time=t0 + (j + 1) * 1_000_000 + i)
        pulsetrace.flush(timeout=10)
        workers.claim("127.0.0.1:1", False)  # publishing, no server started
        workers.release()

        def all_changed() -> None:
            workers._encoder = _native.StateEncoder()  # no key's encoding to reuse
            workers.publish(force=True)

        publish = _ms(all_changed, args.runs)
        cached = _ms(lambda: workers.publish(force=True), args.runs)
        idle = _ms(workers.publish, args.runs)  # nothing recorded since
        size = os.path.getsize(os.path.join(workers.directory(), workers._identity() + ".snap"))
        tparts = _traces_part(args.runs)
        workers.publish(force=True)  # the copy the other "workers" share
        # Three more live workers' copies (the same histograms under other
        # names, each with its liveness lock held).
        mine = os.path.join(workers.directory(), workers._identity())
        held = []
        for i in range(WORKERS - 1):
            other = os.path.join(workers.directory(), f"{10**6 + i}-x")
            shutil.copy(mine + ".snap", other + ".snap")
            held.append(os.open(other + ".lock", os.O_RDWR | os.O_CREAT, 0o600))
            fcntl.flock(held[-1], fcntl.LOCK_EX)
        files = workers._files()
        first = _ms(lambda: (files.forget(), workers._merge()), max(3, args.runs // 4))
        merge = _ms(workers._merge, args.runs)
        v = workers._merge()
        assert v is not None and v.merged.latency()[0]["count"] == 20 * WORKERS
        merged_render = _ms(lambda: workers.render_metrics("", [], {}), args.runs)
        part = workers_parts.get(traces_merge.NAME)

        def decode() -> list[object]:
            files._decoded.clear()
            live, dead, _ = files.part_states(v, part.name)
            return live + dead

        decoded = _ms(decode, args.runs)
        states = [part.current()[1], *decode()]
        merged_traces = _ms(lambda: part.merge(states), args.runs)
        merged = part.merge(states)
        assert len(merged["traces"]) == traces_merge.PUBLISH_TRACES
        listing = _ms(lambda: traces_merge.traces(merged, limit=100), args.runs)
        own = _ms(lambda: _runtime.tracer().render_metrics("", [], {}), args.runs)
        full = _ms(lambda: prometheus.exposition(), args.runs)
        print(f"{SERIES} operations per process, {WORKERS} processes")
        print(f"publish, every histogram changed:    {publish:.1f} ms, {size / 1024:.0f} KiB")
        print(f"publish, histograms unchanged:       {cached:.1f} ms (counters changed)")
        print(f"publish, nothing recorded since:     {idle:.1f} ms")
        print(f"merge, copies read and decoded:      {first:.1f} ms")
        print(f"merge, copies unchanged (cached):    {merge:.1f} ms")
        print(f"exposition from the merged view:     {merged_render:.1f} ms (cached view)")
        print(f"exposition of this process alone:    {own:.1f} ms")
        print(f"prometheus.exposition() in full:     {full:.1f} ms")
        n = traces_merge.PUBLISH_TRACES
        print(f"traces part: 1000 traces held, the newest {n} published ({tparts['kib']:.0f} KiB)")
        print(f"  copy, every trace new:              {tparts['all_new']:.1f} ms")
        print(f"  copy, 20 new traces since:          {tparts['new_20']:.1f} ms")
        print(f"  copy, nothing new:                  {tparts['unchanged']:.3f} ms")
        print(f"  serving: {WORKERS - 1} copies decoded:        {decoded:.1f} ms")
        print(f"  serving: {WORKERS} copies merged:          {merged_traces:.1f} ms")
        print(f"  serving: 100 summaries listed:      {listing:.2f} ms")
    finally:
        workers.reset()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
