"""Milliseconds per merged read of custom metrics over pre-fork workers
(``pulsetrace.monitoring.metrics_custom.merged``): four processes' copies,
each with 1,000 custom histogram series (200 values each), in a real
workers directory (this process's copy, and three more under other names
with their liveness locks held). A merged read is what an endpoint or the
exposition does once the view has expired: the custom part merged from
every copy (``workers.merged_part``), then its exposition families.

Two figures, in the same run:

- ``rebuilt``: every copy's metrics rebuilt from its state on each read
  (``metrics_state.forget()`` before it): what every read cost before
  copies were kept by version.
- ``one changed``: one copy changed since the last read (this process
  recorded a value): that copy rebuilt, the copies merged again.
- ``unchanged``: every copy as at the last read (a worker's copy changes
  at most once a second, a read comes with every scrape and probe): the
  last merge's state, rendered.

Thread CPU time, median of ``--runs``. Figures, not a test: it exits 0
whatever the numbers. Run it with another tree's interpreter to measure
that tree (a tree without ``metrics_state.forget`` prints one figure: its
only path).

    python benchmarks/monitoring/custom_merge.py [--runs 10]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import shutil
import tempfile

# The merge benchmark's timing: median thread CPU ms over runs.
from metrics_merge import _ms

import pulsetrace
import pulsetrace.metrics as metrics
from pulsetrace.monitoring import metrics_custom, metrics_state, workers

SERIES = 1000
VALUES = 200
WORKERS = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    runs = ap.parse_args().runs
    base = tempfile.mkdtemp()
    held = []
    try:
        pulsetrace.configure(export_queue_size=1, sample_rate=0.0, workers_dir=base)
        rng = random.Random(1)
        latency = metrics.create_custom_histogram("latency_seconds", "latency", ["route"])
        for r in range(SERIES):
            for _ in range(VALUES):
                latency.observe(rng.random() * 2, route=f"/r{r}")
        workers.claim("127.0.0.1:1", False)  # publishing, no server started
        workers.release()
        workers.publish(force=True)
        mine = os.path.join(workers.directory(), workers._identity())
        for i in range(WORKERS - 1):
            other = os.path.join(workers.directory(), f"{10**6 + i}-x")
            shutil.copy(mine + ".snap", other + ".snap")
            held.append(os.open(other + ".lock", os.O_RDWR | os.O_CREAT, 0o600))
            fcntl.flock(held[-1], fcntl.LOCK_EX)
        # One view of the histograms throughout (their merge is not measured
        # here: benchmarks/monitoring/workers_merge.py); each read drops the
        # parts merged from it, as a new view has none.
        workers.VIEW_TTL_S = 1e9
        view = workers.view()
        assert view is not None, "no merged view"

        def read() -> None:
            view.parts.clear()
            merged = metrics_custom.merged()
            assert merged is not None
            metrics_custom.families(merged)

        read()
        got = metrics_custom.to_json(metrics_custom.merged())
        count = sum(s["count"] for s in got[0]["series"])
        assert count == WORKERS * SERIES * VALUES, count
        forget = getattr(metrics_state, "forget", None)
        print(f"{WORKERS} processes, {SERIES} custom histogram series each")
        if forget is None:
            print(f"  merged read:                   {_ms(read, runs, lambda: None):7.1f} ms")
            return
        rebuilt = _ms(read, runs, forget)
        one = _ms(read, runs, lambda: latency.observe(0.5, route="/r0"))
        kept = _ms(read, runs, lambda: None)
        print(f"  merged read, every copy rebuilt: {rebuilt:7.1f} ms")
        print(f"  merged read, one copy changed:   {one:7.1f} ms")
        print(f"  merged read, copies unchanged:   {kept:7.1f} ms")
    finally:
        for fd in held:
            os.close(fd)
        workers.reset()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
