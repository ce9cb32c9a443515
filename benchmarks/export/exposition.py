"""Worker of run.py, part 3: rendering the Prometheus exposition of a registry
of SERIES histogram series, in a fresh process.

    python benchmarks/export/exposition.py --series 10000 --format openmetrics_1.0.0 \\
        --rounds 7 --out /tmp/x.json
    python benchmarks/export/exposition.py --series 10000 --format openmetrics_1.0.0 \\
        --spans-per-series 200 --decades 2 --rounds 1 --out /tmp/typical.json

The registry: SERIES / 2 SERVER operations of distinct names, each with an ``ok``
and an ``error`` span (a histogram series per status class: SERIES series), and
SPANS_PER_SERIES spans per series with durations spread from 100 µs to 2 s (so
the buckets are filled; ``--spans-per-series`` and ``--decades`` change both:
200 spans over 2 decades, 100 µs to 10 ms, touch every histogram row of a
typical series' range), every trace kept (``sample_rate=1.0``: exemplars on
every series in OpenMetrics). ``max_metric_keys`` is SERIES + 1000. Recorded on
the way (the registry's context, not the render): CPU µs per span of the first
pass, where every span creates its key (overall and over the last tenth of the
keys), and of the second, where the keys exist.

One format per process (the Prometheus 0.0.4 or the OpenMetrics Accept header).
Memory: around the first render of the process (cold: what a scrape costs in
memory the first time) and one after the timed rounds (warm: the allocator reuses
what earlier renders freed), VmRSS before, VmHWM (peak RSS, reset just before the
render through /proc/self/clear_refs) and VmRSS after, with the body still held
and once dropped; tracemalloc would not see the native allocations. Timed: ROUNDS
calls of ``tracer().render_metrics(accept, [], {"service_name": "x"})``, wall and
CPU time of the calling thread (the render runs on it with the GIL released).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import proc_status_kib, reset_peak_rss, stats

SPANS_PER_SERIES = 3
ACCEPT = {
    # what a Prometheus server asks for with OpenMetrics off
    "prometheus_0.0.4": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    # Prometheus's default scrape Accept header (OpenMetrics first)
    "openmetrics_1.0.0": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
}
EXPECTED_TYPE = {
    "prometheus_0.0.4": "text/plain; version=0.0.4",
    "openmetrics_1.0.0": "application/openmetrics-text; version=1.0.0",
}
LABELS = {"service_name": "x"}


def build(
    series: int, spans_per_series: int = SPANS_PER_SERIES, decades: Optional[float] = None
) -> tuple[Any, dict[str, float]]:
    """The tracer with its registry of ``series`` keys, and what recording cost on
    this thread (CPU µs per span): the first pass creates every key, the later
    passes find them."""
    import pulsetrace
    from pulsetrace import _runtime

    pulsetrace.configure(
        pulsetrace.Config(),
        sample_rate=1.0,
        service_name="x",
        max_metric_keys=series + 1000,
    )
    tracer = _runtime.tracer()
    names = series // 2
    tenth = max(names // 10, 1)
    now = time.time_ns()
    k = 0
    cost: dict[str, float] = {}
    spread = 20_000.0 if decades is None else 10.0**decades  # highest / lowest duration
    for r in range(spans_per_series):
        c0 = time.thread_time_ns()
        c_last = c0
        for i in range(names):
            if i == names - tenth:
                c_last = time.thread_time_ns()
            for error in (False, True):
                # log-spread durations: 100 µs .. ~2 s (or 100 µs .. 10^decades x that)
                duration = int(100_000 * spread ** (((k * 7919) % 1000) / 1000))
                k += 1
                s = tracer.start_span(
                    f"GET /api/v1/resource{i}/{{id}}",
                    kind="server",
                    attributes={"http.request.method": "GET", "http.response.status_code": 200},
                    start_time=now - duration,
                )
                if error:
                    s.set_status("error")
                s.end(end_time=now)
        c1 = time.thread_time_ns()
        if r == 0:
            cost["new_key_us"] = (c1 - c0) / (2 * names) / 1e3
            cost["new_key_last_tenth_us"] = (c1 - c_last) / (2 * tenth) / 1e3
        elif r == 1:
            cost["existing_key_us"] = (c1 - c0) / (2 * names) / 1e3
        tracer.process(True)
        while tracer.drain_batch(8192) is not None:  # the kept traces are not measured
            pass
    tracer.process(True)
    while tracer.drain_batch(8192) is not None:
        pass
    return tracer, cost


def memory_probe(render: Any) -> dict[str, Any]:
    """RSS around one render: before, peak during, after (body held), after (dropped)."""
    gc.collect()
    reset_ok = reset_peak_rss()
    before = proc_status_kib("VmRSS")
    body, _ = render()
    peak = proc_status_kib("VmHWM")
    held = proc_status_kib("VmRSS")
    size = len(body)
    del body
    gc.collect()
    after = proc_status_kib("VmRSS")
    out: dict[str, Any] = {
        "peak_reset": reset_ok,
        "rss_before_kib": before,
        "hwm_kib": peak,
        "rss_with_body_kib": held,
        "rss_after_kib": after,
        "body_bytes": size,
    }
    if before is not None and peak is not None and held is not None and after is not None:
        out["peak_growth_kib"] = peak - before if reset_ok else None
        out["held_growth_kib"] = held - before
        out["retained_growth_kib"] = after - before
    return out


def measure(
    series: int,
    fmt: str,
    rounds: int,
    spans_per_series: int = SPANS_PER_SERIES,
    decades: Optional[float] = None,
) -> dict[str, Any]:
    rss_start = proc_status_kib("VmRSS")
    t0 = time.monotonic()
    c0 = time.process_time()
    tracer, record_cost = build(series, spans_per_series, decades)
    build_cpu_s = time.process_time() - c0
    build_s = time.monotonic() - t0
    gc.collect()
    rss_built = proc_status_kib("VmRSS")
    counters = tracer.counters()
    accept = ACCEPT[fmt]

    def render() -> Any:
        return tracer.render_metrics(accept, [], LABELS)

    cold = memory_probe(render)  # the first render of this process
    body, content_type = render()
    out: dict[str, Any] = {
        "series": series,
        "spans_per_series": spans_per_series,
        "decades": decades,
        "format": fmt,
        "rounds": rounds,
        "metric_keys": counters.get("metric_keys"),
        "metric_keys_overflowed": counters.get("metric_keys_overflowed"),
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "record_cpu_us": record_cost,
        "registry_rss_kib": None
        if rss_start is None or rss_built is None
        else rss_built - rss_start,
        "accept": accept,
        "content_type": content_type,
        "content_type_ok": content_type.startswith(EXPECTED_TYPE[fmt]),
        "bytes": len(body),
        "lines": body.count(b"\n"),
        "exemplars": body.count(b" # {"),
        "memory_cold": cold,
    }
    del body
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            c = time.thread_time_ns()  # the render runs on this thread (GIL released)
            t = time.perf_counter_ns()
            body, _ = render()
            wall.append((time.perf_counter_ns() - t) / 1e6)
            cpu.append((time.thread_time_ns() - c) / 1e6)
        finally:
            gc.enable()
        del body
    out["wall_ms"] = stats(wall)
    out["cpu_ms"] = stats(cpu)
    out["memory_warm"] = memory_probe(render)  # a later render: the allocator reuses
    out["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--series", type=int, required=True)
    ap.add_argument("--format", choices=sorted(ACCEPT), required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--spans-per-series", type=int, default=SPANS_PER_SERIES)
    ap.add_argument(
        "--decades", type=float, help="durations spread over this many decades from 100 µs"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = measure(args.series, args.format, args.rounds, args.spans_per_series, args.decades)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
