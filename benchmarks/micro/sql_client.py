#!/usr/bin/env python3
"""What the sqlite3 hook adds to a statement and to a connection, in process.

Cases (no request around them, so every statement starts a trace of its own):

- ``bare_span``: ``start_span(name, kind="client", attributes=...)`` and
  ``end()`` with the attributes a statement span carries (the floor), as a
  dict; ``bare_span_pairs``: the same as a reused tuple of pairs (what the
  SQL hooks pass); ``bare_span_no_attributes``: none;
- ``execute_bare`` / ``execute_traced``: ``conn.execute(SQL)`` on an open
  in-memory connection, unpatched / patched (a span per statement);
- ``cursor_execute_bare`` / ``cursor_execute_traced``: the same through a cursor;
- ``cycle_bare`` / ``cycle_traced``: ``connect(":memory:")``, one
  ``execute``, ``close()``.

Timing (default): each round times one batch of every case (the first case
rotating), GC off; medians over rounds, ns per call, loop included.
``--callgrind``: instructions per call instead, read from callgrind (batches
of N and 2N, the least of each size over the rounds; deterministic, so
comparable across machines and runs).

    python benchmarks/micro/sql_client.py [--rounds 9] [--batch 20000]
    python benchmarks/micro/sql_client.py --callgrind [--batch 2000]

Exits 0 whatever the figures: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SQL = "SELECT 1"
ROUNDS_CG = 3


def cases() -> dict[str, Callable[[int], None]]:
    """The cases, each a function running its operation n times."""
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    import pulsetrace
    from pulsetrace import _runtime
    from pulsetrace.contrib import sqlite3 as hook

    pulsetrace.configure(pulsetrace.Config())
    bare_connect = sqlite3.connect
    hook.patch()
    traced_connect = sqlite3.connect
    bare, traced = bare_connect(":memory:"), traced_connect(":memory:")
    bare_cur, traced_cur = bare.cursor(), traced.cursor()
    attrs = {
        "db.system.name": "sqlite",
        "db.query.text": "SELECT ?",
        "db.operation.name": "SELECT",
        "db.namespace": ":memory:",
    }
    tracer = _runtime.tracer()

    def bare_span(n: int) -> None:
        start = tracer.start_span
        for _ in range(n):
            start("SELECT", kind="client", attributes=attrs).end()

    pairs = tuple(attrs.items())

    def bare_span_pairs(n: int) -> None:
        start = tracer.start_span
        for _ in range(n):
            start("SELECT", kind="client", attributes=pairs).end()

    def bare_span_no_attributes(n: int) -> None:
        start = tracer.start_span
        for _ in range(n):
            start("SELECT", kind="client").end()

    def execute(conn: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            ex = conn.execute
            for _ in range(n):
                ex(SQL)

        return run

    def cycle(connect: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                c = connect(":memory:")
                c.execute(SQL)
                c.close()

        return run

    return {
        "bare_span": bare_span,
        "bare_span_pairs": bare_span_pairs,
        "bare_span_no_attributes": bare_span_no_attributes,
        "execute_bare": execute(bare),
        "execute_traced": execute(traced),
        "cursor_execute_bare": execute(bare_cur),
        "cursor_execute_traced": execute(traced_cur),
        "cycle_bare": cycle(bare_connect),
        "cycle_traced": cycle(traced_connect),
    }


def timing(rounds: int, n: int) -> None:
    run = cases()
    for fn in run.values():
        fn(1000)  # warm-up: caches filled
    names = list(run)
    results: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter_ns()
                run[name](n)
                results[name].append((time.perf_counter_ns() - t0) / n)
    finally:
        gc.enable()
    print(f"sqlite3 in process: {rounds} rounds x {n} calls, median ns per call (min, max)")
    for name in names:
        xs = results[name]
        print(f"  {name:<24}{statistics.median(xs):>9.0f}{min(xs):>9.0f}{max(xs):>9.0f}")
    for what in ("execute", "cursor_execute", "cycle"):
        added = statistics.median(results[f"{what}_traced"]) - statistics.median(
            results[f"{what}_bare"]
        )
        print(f"  added to {what}: {added:.0f} ns")


def harness(n: int) -> None:
    """Under callgrind: warm up, then batches of n and 2n per case. Before
    each batch the spans of the previous ones are processed (not counted):
    under callgrind the core's worker runs slowly, and a full intake would
    have the request thread process spans itself, so that a case's count
    would depend on the cases before it."""
    import pulsetrace

    run = cases()
    for fn in run.values():
        fn(1000)
    gc.collect()
    gc.disable()
    for fn in run.values():
        for _ in range(ROUNDS_CG):
            for size in (n, 2 * n):
                pulsetrace.flush(timeout=30)
                functools.reduce(lambda _a, _b, fn=fn, size=size: fn(size), (0, 0))
    sys.stdout.flush()
    os._exit(0)


def _gate() -> Any:
    """The gate's module (``benchmarks/gate/run.py``), for its callgrind command."""
    path = Path(__file__).resolve().parent.parent / "gate" / "run.py"
    spec = importlib.util.spec_from_file_location("pulsetrace_bench_gate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def callgrind(n: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (make system-deps installs it)")
    names = list(cases())
    with tempfile.TemporaryDirectory(prefix="pulsetrace-sqlcg-") as tmp:
        out = Path(tmp) / "cg"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PULSETRACE_"))}
        env.update(PYTHONHASHSEED="0", OTEL_TRACES_EXPORTER="none")
        argv = _gate().batched_callgrind(out, [__file__, "--harness", f"--batch={n}"])
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the harness failed under valgrind:\n{proc.stderr[-3000:]}")
        parts = []
        for i in range(1, len(names) * ROUNDS_CG * 2 + 1):
            text = Path(f"{out}.{i}-01").read_text()
            parts.append(
                int(next(ln for ln in text.splitlines() if ln.startswith("totals:")).split()[1])
            )
    print(f"sqlite3 in process: instructions per call (callgrind, batches of {n} and {2 * n})")
    per = {}
    for c, name in enumerate(names):
        mine = parts[c * ROUNDS_CG * 2 : (c + 1) * ROUNDS_CG * 2]
        per[name] = round((min(mine[1::2]) - min(mine[0::2])) / n)
        print(f"  {name:<24}{per[name]:>9}")
    for what in ("execute", "cursor_execute", "cycle"):
        print(f"  added to {what}: {per[f'{what}_traced'] - per[f'{what}_bare']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--callgrind", action="store_true", help="instructions, not time")
    parser.add_argument("--harness", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.harness:
        harness(opts.batch)
    elif opts.callgrind:
        callgrind(opts.batch or 2000)
    else:
        timing(opts.rounds, opts.batch or 20000)


if __name__ == "__main__":
    main()
