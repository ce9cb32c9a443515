"""CPU cost of the pre-fork workers' view (``pulsetrace.monitoring.workers``)
with 1,000 operations (2,000 histograms) per process: what each worker
spends publishing its copy (every second when something changed, on its own
thread; a histogram is compressed again only when it changed), and what the
serving process spends merging four workers' copies (every ``VIEW_TTL_S``
at most, when an endpoint is read) and rendering the exposition from the
merged view, against rendering this process's own histograms alone.

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
from pulsetrace.monitoring import workers

SERIES = 1000
WORKERS = 4


def _ms(fn: Callable[[], object], runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.thread_time()
        fn()
        out.append((time.thread_time() - t) * 1000)
    return statistics.median(out)


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
    finally:
        workers.reset()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
