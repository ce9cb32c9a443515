#!/usr/bin/env python3
"""The span's cost in every process, not in a median of processes.

Runs run.py's span case (``pulsetrace_span``, imported from run.py, not
copied) and the OpenTelemetry SDK span (``otel_sdk_span``) interleaved in
many fresh interpreters, one after the other, and prints the distribution
over processes (min, p25, median, p75, max) of each process's median ns per
span and of its ratio to the SDK span measured in the same process. A
bimodal distribution shows as a gap between the two halves; the per-process
lines show which processes fell where.

    python benchmarks/micro/processes.py [--processes 12] [--rounds 7]
        [--batch-ms 100] [--clock wall|thread]
        [--variant NAME[:KEY=VALUE,...]]... [--json PATH]

``--clock thread`` times each batch with the request thread's CPU time
(``time.thread_time_ns``) instead of the wall clock: on a machine other work
shares, time the thread spent waiting for a CPU is left out, while what it
spends stalled on memory (cache lines another core holds) still counts.

A variant is a way of starting the processes, compared in one session:
processes of every variant alternate (A B A B ...), so drifts of a shared
machine hit each variant alike. Its settings are environment variables of
the child (``PYTHONHASHSEED=0``, ``MALLOC_ARENA_MAX=1``, ``PYTHONPATH=...``
to measure another build), and ``pin=CPU``: the child pins itself to that
CPU (``os.sched_setaffinity``) before pulsetrace starts any thread, so the
request thread and the core's intake worker share one CPU. Without
``--variant``, one variant, ``default``, as the environment gives.

Exits 0 whatever the figures: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
SPAN, OTEL = "pulsetrace_span", "otel_sdk_span"


def quantiles(values: list[float]) -> dict[str, float]:
    """min, p25, median, p75, max (inclusive quartiles)."""
    if len(values) == 1:
        q = [values[0]] * 3
    else:
        q = statistics.quantiles(values, n=4, method="inclusive")
    return {"min": min(values), "p25": q[0], "median": q[1], "p75": q[2], "max": max(values)}


def last_cpus() -> dict[str, int]:
    """The CPU each thread of this process last ran on, by thread name
    (Linux ``/proc``; empty elsewhere): where the request thread (the main
    thread) and the core's intake worker (``pulsetrace-core``) sat."""
    cpus: dict[str, int] = {}
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return cpus
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpus[name] = int(fields[36])  # field 39, "processor"
    return cpus


def child(out: Path, rounds: int, batch_ms: float, pin: Optional[int], clock: str) -> None:
    """One process: the span and SDK cases, interleaved, ``rounds`` times."""
    if pin is not None:
        # Before pulsetrace starts its threads: they inherit this mask.
        os.sched_setaffinity(0, {pin})
    sys.path.insert(0, str(HERE))
    import gc
    import random

    import run  # the span case and its machinery, as the micro benchmark runs it

    run.scrub_env()
    env, settle, _versions = run.build_env()
    env.pop("_config")
    rng = random.Random(42)
    pool = [int(10 ** rng.uniform(3, 9)) for _ in range(run.POOL)]
    names = [SPAN, OTEL]
    fns = {n: run.compile_batch(*run.CASES[n], env) for n in names}
    sizes = {}
    for n in names:
        sizes[n] = run.calibrate(fns[n], pool, batch_ms * 1e6)
        run.timed(fns[n], sizes[n], pool)
        settle.get(n, lambda: None)()
    samples: dict[str, list[float]] = {n: [] for n in names}
    same_cpu: list[bool] = []
    main_name = Path("/proc/self/comm").read_text().strip() if Path("/proc/self").is_dir() else ""
    timer = time.thread_time_ns if clock == "thread" else time.perf_counter_ns
    for r in range(rounds):
        gc.collect()
        for n in names[r % 2 :] + names[: r % 2]:
            gc.disable()
            try:
                elapsed = fns[n](range(sizes[n] // run.POOL), pool, timer)
            finally:
                gc.enable()
            samples[n].append(elapsed / sizes[n])
            if n == SPAN:
                cpus = last_cpus()
                if main_name in cpus and "pulsetrace-core" in cpus:
                    same_cpu.append(cpus[main_name] == cpus["pulsetrace-core"])
            settle.get(n, lambda: None)()
    import pulsetrace

    counters = pulsetrace.counters()
    result = {
        "span_ns": statistics.median(samples[SPAN]),
        "otel_ns": statistics.median(samples[OTEL]),
        "samples": samples,
        "cpus": sorted(os.sched_getaffinity(0)),
        # Rounds after which the request thread and the intake worker had
        # last run on the same CPU (a hint of where they ran, not a proof).
        "same_cpu_rounds": sum(same_cpu),
        "rounds_seen": len(same_cpu),
        "hashseed": os.environ.get("PYTHONHASHSEED"),
        "spans_processed_inline": counters.get("spans_processed_inline", 0),
        "spans_processed_ahead": counters.get("spans_processed_ahead", 0),
    }
    result["ratio"] = result["span_ns"] / result["otel_ns"]
    out.write_text(json.dumps(result))


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    values: dict[str, str] = {}
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        values[key] = value
    if "pin" in values and not values["pin"].isdigit():
        raise SystemExit(f"--variant {text!r}: pin must be a CPU number")
    return name, values


def run_one(
    settings: dict[str, str], rounds: int, batch_ms: float, clock: str, tmp: Path
) -> dict[str, Any]:
    out = tmp / "part.json"
    env = dict(os.environ)
    env.update({k: v for k, v in settings.items() if k != "pin"})
    cmd = [sys.executable, __file__, "--child", str(out)]
    cmd += ["--rounds", str(rounds), "--batch-ms", str(batch_ms), "--clock", clock]
    if "pin" in settings:
        cmd += ["--pin", settings["pin"]]
    subprocess.run(cmd, check=True, env=env)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def report(name: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    span = quantiles([p["span_ns"] for p in parts])
    ratio = quantiles([p["ratio"] for p in parts])
    print(f"\n{name}: {len(parts)} processes")
    print("  per-process median      min      p25   median      p75      max")
    print("  ns per span       " + "".join(f"{span[k]:9.0f}" for k in span))
    print("  ratio to the SDK  " + "".join(f"{ratio[k]:9.3f}" for k in ratio))
    print("  each process (ns per span / ratio / rounds with both threads last on one CPU): ")
    print(
        "    "
        + ", ".join(
            f"{p['span_ns']:.0f}/{p['ratio']:.3f}/{p['same_cpu_rounds']}of{p['rounds_seen']}"
            for p in parts
        )
    )
    return {"span_ns": span, "ratio": ratio, "processes": parts}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=12, help="processes per variant")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per process")
    ap.add_argument("--batch-ms", type=float, default=100.0, help="target batch duration")
    ap.add_argument(
        "--clock", choices=("wall", "thread"), default="wall", help="what a batch is timed with"
    )
    ap.add_argument("--variant", action="append", default=[], help="NAME[:KEY=VALUE,...]")
    ap.add_argument("--json", type=Path, help="where to write the figures")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args.child, args.rounds, args.batch_ms, args.pin, args.clock)
        return 0
    if args.processes < 1 or args.rounds < 1:
        raise SystemExit("--processes and --rounds must be at least 1")
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    print(
        f"the span in {args.processes} processes per variant x {args.rounds} rounds, "
        f"~{args.batch_ms:g} ms per batch, {args.clock} clock, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; variants alternate",
        flush=True,
    )
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            for name, settings in variants:
                part = run_one(settings, args.rounds, args.batch_ms, args.clock, Path(tmp))
                parts[name].append(part)
                print(
                    f"  {i + 1}/{args.processes} {name}: {part['span_ns']:.0f} ns, "
                    f"ratio {part['ratio']:.3f}",
                    flush=True,
                )
    out = {name: report(name, parts[name]) for name, _ in variants}
    print(f"\n{time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.2f} at the end")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings_of = dict(variants)
        for name in out:
            out[name]["settings"] = settings_of[name]
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
