#!/usr/bin/env python3
"""Memory bound of pulsetrace's buffers with nothing draining them.

Each configuration runs in a fresh interpreter: configure (sample_rate=1.0, kept
traces queued but no exporter taking them, so the export queue is never
drained), warm up with 10k spans, read RSS, push N spans of one span per trace
(3 attributes each), read RSS again. The buffers are bounded, so RSS growth
must stay under the bound estimated from the configuration: the spans the buffers can hold
(``capacity_spans``) times ``BYTES_PER_SPAN``.

    python benchmarks/memory/run.py [--quick|--full] [--json PATH]

Exits 0 whatever the figures (prints "BOUND EXCEEDED" when a bound is exceeded).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE.parent / "results" / "memory.json"
SPANS = {"quick": 200_000, "full": 1_000_000}
WARMUP = 10_000
CHECKPOINTS = 10
SPANS_PER_TRACE = 1
#: Bytes per buffered span assumed by the bound: a generous fixed figure. The
#: per-span cost actually measured (small vs 10x queues) is printed next to it.
BYTES_PER_SPAN = 2048
#: name -> Config overrides (on top of the documented defaults, sample_rate=1.0).
CONFIGS: dict[str, dict[str, int]] = {
    "default": {},
    "small": {"intake_queue_size": 4096, "export_queue_size": 4096},
    "small_x10": {"intake_queue_size": 40960, "export_queue_size": 40960},
}
CALIBRATION = ("small", "small_x10")  # same but the queues: their slope is bytes/span
CONFIG_SHOWN = (  # the buffer settings reported (those this build has)
    "sample_rate",
    "intake_queue_size",
    "export_queue_size",
    "max_open_traces",
    "max_spans_per_trace",
    "worker_interval_ms",
)
COUNTERS_SHOWN = [
    "spans_processed_inline",
    "spans_dropped_export_full",
    "spans_dropped_trace_limit",
    "export_queue_spans",
    "open_traces",
    "traces_evicted",
    "internal_errors",
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def capacity_spans(cfg: dict[str, Any]) -> int:
    """Spans the buffers can hold: intake + export + open traces."""
    per_trace = min(cfg["max_spans_per_trace"], SPANS_PER_TRACE)
    return int(
        cfg["intake_queue_size"] + cfg["export_queue_size"] + cfg["max_open_traces"] * per_trace
    )


def child(name: str, spans: int) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    for var in (
        "APM_ENABLED",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ):
        os.environ.pop(var, None)  # kill switch / head sampler: not what is measured here
    import pulsetrace

    known = {f.name for f in dataclasses.fields(pulsetrace.Config)}
    overrides = {k: v for k, v in CONFIGS[name].items() if k in known}
    cfg = pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0, **overrides)
    # Kept traces are queued as while an exporter is set, but nothing takes
    # them (with no exporter at all they would not be queued).
    pulsetrace._runtime.tracer().exporting = True
    start_span = pulsetrace.start_span

    def push(n: int) -> None:
        for _ in range(n):
            with start_span(
                "op",
                attributes={
                    "http.request.method": "GET",
                    "http.route": "/users/{id}",
                    "http.response.status_code": 200,
                },
            ):
                pass

    push(WARMUP)
    pulsetrace.flush(5.0)
    gc.collect()
    before = rss_bytes()
    curve = [(0, before)]
    t0 = time.perf_counter()
    chunk = spans // CHECKPOINTS
    for i in range(CHECKPOINTS):
        push(chunk if i < CHECKPOINTS - 1 else spans - chunk * (CHECKPOINTS - 1))
        curve.append((min(spans, chunk * (i + 1)), rss_bytes()))
    elapsed = time.perf_counter() - t0
    after_loop = rss_bytes()
    pulsetrace.flush(5.0)  # whatever the worker had still to do
    after_flush = rss_bytes()
    return {
        "config": {k: getattr(cfg, k) for k in CONFIG_SHOWN if hasattr(cfg, k)},
        "ignored_settings": sorted(set(CONFIGS[name]) - known),
        "spans": spans,
        "warmup_spans": WARMUP,
        "seconds": elapsed,
        "rss_before": before,
        "rss_after_loop": after_loop,
        "rss_after_flush": after_flush,
        "peak_rss": peak_rss_bytes(),
        "curve": curve,
        "exporters": len(pulsetrace._runtime.exporters()),
        "counters": pulsetrace.counters(),
    }


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS over spans pushed (bytes per span)."""
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def run_child(name: str, spans: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--spans", str(spans)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def analyse(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Growth per configuration, the measured bytes/span, the verdicts."""
    mib = 1024 * 1024
    for r in results.values():
        r["capacity_spans"] = capacity_spans(r["config"])
        r["growth"] = max(r["rss_after_loop"], r["rss_after_flush"]) - r["rss_before"]
        r["peak_growth"] = r["peak_rss"] - r["rss_before"]
        r["checked_growth"] = max(r["growth"], r["peak_growth"])
        r["bound"] = r["capacity_spans"] * BYTES_PER_SPAN
        r["within_bound"] = r["checked_growth"] <= r["bound"]
        r["late_bytes_per_span"] = slope(r["curve"][len(r["curve"]) // 2 :])
        r["growth_mib"] = r["growth"] / mib
        r["bound_mib"] = r["bound"] / mib
    lo, hi = (results[n] for n in CALIBRATION)
    d_cap = hi["capacity_spans"] - lo["capacity_spans"]
    per_span = (hi["checked_growth"] - lo["checked_growth"]) / d_cap
    return {
        "bytes_per_span_assumed": BYTES_PER_SPAN,
        "bytes_per_span_measured": per_span,
        "fixed_overhead_bytes": lo["checked_growth"] - per_span * lo["capacity_spans"],
        "measured_within_assumed": per_span <= BYTES_PER_SPAN,
        "calibration": list(CALIBRATION),
    }


def print_report(results: dict[str, dict[str, Any]], cal: dict[str, Any]) -> None:
    mib = 1024 * 1024
    for name, r in results.items():
        c = r["config"]
        print(
            f"\n[{name}] intake={c.get('intake_queue_size', 'none')} "
            f"export={c['export_queue_size']} "
            f"max_open_traces={c['max_open_traces']} max_spans_per_trace="
            f"{c['max_spans_per_trace']}; {r['spans']:,} spans in {r['seconds']:.2f} s, "
            f"exporters attached: {r['exporters']}"
        )
        print(
            f"  RSS growth {r['growth_mib']:.1f} MiB (peak-based {r['peak_growth'] / mib:.1f} MiB)"
            f"; bound {r['bound_mib']:.1f} MiB = {r['capacity_spans']:,} spans x "
            f"{BYTES_PER_SPAN} B"
        )
        print(
            "  RSS over the run (MiB): "
            + " ".join(f"{m / mib:.0f}" for _, m in r["curve"])
            + f"; trend over the 2nd half: {r['late_bytes_per_span']:+.1f} B/span"
        )
        counters = r["counters"]
        print(
            "  counters: "
            + ", ".join(f"{k}={counters[k]}" for k in COUNTERS_SHOWN if k in counters)
        )
        if r["ignored_settings"]:
            print(f"  not settings of this build, ignored: {', '.join(r['ignored_settings'])}")
        if r["within_bound"]:
            print(f"  within bound: {r['checked_growth'] / mib:.1f} <= {r['bound_mib']:.1f} MiB")
        else:
            print(
                f"  BOUND EXCEEDED: {r['checked_growth'] / mib:.1f} MiB > "
                f"{r['bound_mib']:.1f} MiB ({name})"
            )
    lo, hi = cal["calibration"]
    fixed_mib = cal["fixed_overhead_bytes"] / mib
    print(
        f"\nmeasured cost per buffered span ({lo} vs {hi}): "
        f"{cal['bytes_per_span_measured']:.0f} B (intercept {fixed_mib:+.1f} MiB); "
        f"the bound assumes a generous fixed {BYTES_PER_SPAN} B/span"
        + ("" if cal["measured_within_assumed"] else " -- MEASURED COST EXCEEDS THE ASSUMPTION")
    )


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write figures")
    ap.add_argument("--spans", type=int, help="spans per configuration (overrides the mode)")
    ap.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode_name = args.mode or "quick"
    spans = args.spans or SPANS[mode_name]
    if args.child:
        print(json.dumps(child(args.child, spans)))
        return 0

    t0 = time.monotonic()
    print(
        f"pulsetrace memory bound, {mode_name} mode: {spans:,} spans per configuration, "
        f"sample_rate=1.0, {SPANS_PER_TRACE} span per trace, no exporter; one process each"
    )
    results = {name: run_child(name, spans) for name in CONFIGS}
    cal = analyse(results)
    print_report(results, cal)
    exceeded = [n for n, r in results.items() if not r["within_bound"]]
    doc = {
        "mode": mode_name,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "spans_per_config": spans,
        "calibration": cal,
        "exceeded": exceeded,
        "configs": results,
        "wall_seconds": round(time.monotonic() - t0, 2),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    summary = "all within bound" if not exceeded else "BOUND EXCEEDED: " + ", ".join(exceeded)
    print(f"\n{summary}; figures written to {args.json} ({doc['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
