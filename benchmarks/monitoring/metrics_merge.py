"""CPU cost of custom metrics' state and merge over pre-fork workers
(``pulsetrace.monitoring.metrics_state``) with 1,000 histogram series (200
values each), 1,000 counter and 1,000 gauge series per process: a worker's
``state()`` when every histogram changed since the last one and when none
did (a histogram is encoded again only when it changed), its size as JSON,
``merge_states`` of four workers' states, and rendering the exposition's
families from the merged state against rendering this process's own.

Thread CPU time, median of ``--runs``. Figures, not a test: it exits 0
whatever the numbers.

    python benchmarks/monitoring/metrics_merge.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Callable

import pulsetrace.metrics as metrics
from pulsetrace.monitoring import metrics_custom

SERIES = 1000
WORKERS = 4


def _ms(fn: Callable[[], object], runs: int, before: Callable[[], object] = lambda: None) -> float:
    out = []
    for _ in range(runs):
        before()
        t = time.thread_time()
        fn()
        out.append((time.thread_time() - t) * 1000)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    rng = random.Random(1)
    latency = metrics.create_custom_histogram("latency_seconds", "latency", ["route"])
    hits = metrics.create_custom_counter("hits_total", "hits", ["route"])
    level = metrics.create_custom_gauge("level", "level", ["route"])
    for r in range(SERIES):
        for _ in range(200):
            latency.observe(rng.random() * 2, route=f"/r{r}")
        hits.inc(route=f"/r{r}")
        level.set(r, route=f"/r{r}")

    def touch_every_histogram() -> None:
        for r in range(SERIES):
            latency.observe(0.5, route=f"/r{r}")

    changed = _ms(metrics_custom.state, runs, before=touch_every_histogram)
    unchanged = _ms(metrics_custom.state, runs)
    state = metrics_custom.state()
    merged = metrics_custom.merge_states([state] * WORKERS)
    print(f"{SERIES} histogram, counter and gauge series per process")
    print(f"  state(), every histogram changed:  {changed:7.1f} ms")
    print(f"  state(), nothing changed:          {unchanged:7.1f} ms")
    print(f"  state as JSON:                     {len(json.dumps(state)) / 1000:7.0f} kB")
    merge = _ms(lambda: metrics_custom.merge_states([state] * WORKERS), runs)
    print(f"  merge_states of {WORKERS} states:          {merge:7.1f} ms")
    render = _ms(lambda: metrics_custom.families(merged), runs)
    print(f"  families(merged state):            {render:7.1f} ms")
    print(f"  families() of this process:        {_ms(metrics_custom.families, runs):7.1f} ms")


if __name__ == "__main__":
    main()
