#!/usr/bin/env python3
"""The benchmark gate: instructions executed on the request thread, counted
by callgrind (deterministic, unlike a timer), compared with the baseline
committed in ``benchmarks/gate/baseline.json``.

    python benchmarks/gate/run.py              # measure, compare, exit 1 on a regression
    python benchmarks/gate/run.py --repeat 3   # measure 3 times, print the spread
    python benchmarks/gate/run.py --update     # write the baseline (commit it with the reason)

Cases, each counted on the main thread only (pulsetrace's worker thread is
not the request path):

- ``span``: ``pulsetrace.start_span("op")``, 3 ``set_attribute``, ``end()``.
- ``flask_json``: one Flask ``/json`` request called in process through the
  WSGI app with a fixed environ, pulsetrace's hook installed;
  ``flask_json_none`` the same request without the hook (printed, not
  gated), and ``flask_json_added`` the difference: what pulsetrace adds.
- ``sqlite_connect``: the same app's ``/sqlite_connect`` route (open a SQLite
  connection, one query, close), the Flask and sqlite3 hooks installed;
  ``sqlite_connect_none`` without them and ``sqlite_connect_added`` the
  difference (printed, not gated).

For each route the added share (``added / none``) is printed too: the
request thread's part of a route's overhead, without the machine's noise.

Start-up and import cost are not counted: ``harness.py`` runs every case in
batches of N and 2N operations, callgrind collecting only inside each batch
(one profile part per batch); a case's count is the difference of the least
2N batch and the least N batch, divided by N (the cost of the call that wraps
a batch cancels out).
The environment is fixed (``PYTHONHASHSEED=0``, no ``APM_*``/``OTEL_*``
variable but ``OTEL_TRACES_EXPORTER=none``) and the harness disables the
garbage collector. A case fails when its count exceeds the baseline by more
than ``--tolerance`` (10%).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline.json"
HARNESS = HERE / "harness.py"
#: The request path's functions the linker places together (rust/py/build.rs).
HOT_SYMBOLS = HERE.parent.parent / "rust" / "py" / "hot_symbols.txt"
# Iterations per case in the base run (a doubled run adds as many again).
BASE = {"span": 1000, "flask_on": 50, "flask_off": 50, "sqlite_on": 50, "sqlite_off": 50}
ROUNDS = 3  # pairs of batches per case
# flask_json_added is a difference of two counts that each move by ~0.5% from
# run to run (Flask and Werkzeug, not pulsetrace): printed, too noisy to gate.
GATED = ("span", "flask_json", "sqlite_connect")


def environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APM_", "OTEL_", "PULSETRACE_", "PYTHON"))
    }
    env.update(PYTHONHASHSEED="0", OTEL_TRACES_EXPORTER="none", PYTHONDONTWRITEBYTECODE="1")
    return env


def batched_callgrind(out: Path, program: list[str], *options: str) -> list[str]:
    """A Python program (a script and its arguments) under callgrind,
    collecting only inside each batch it runs through ``functools.reduce``
    (one profile part per batch, written to ``out``.N-T); ``options`` are
    callgrind's own. Shared with ``scripts/hot_symbols.py`` and
    ``benchmarks/micro/sql_client.py``."""
    return [
        "valgrind",
        "--tool=callgrind",
        *options,
        "--separate-threads=yes",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        "--dump-after=functools_reduce",
        f"--callgrind-out-file={out}",
        sys.executable,
        *program,
    ]


def harness_argv(out: Path, batches: dict[str, int], rounds: int, *options: str) -> list[str]:
    """The gate's harness under callgrind (:func:`batched_callgrind`)."""
    program = [
        str(HARNESS),
        f"--rounds={rounds}",
        *(f"--{k.replace('_', '-')}={v}" for k, v in batches.items()),
    ]
    return batched_callgrind(out, program, *options)


def measure(_: int = 0) -> dict[str, int]:
    """Runs the harness once under callgrind; instructions per operation."""
    with tempfile.TemporaryDirectory(prefix="pulsetrace-gate-") as tmp:
        out = Path(tmp) / "callgrind"
        argv = harness_argv(out, BASE, ROUNDS)
        proc = subprocess.run(argv, env=environment(), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr[-3000:]
            raise SystemExit(f"bench-gate: the harness failed under valgrind:\n{tail}")
        parts = []
        expected = len(BASE) * ROUNDS * 2
        for i in range(1, expected + 1):
            main_file = Path(f"{out}.{i}-01")  # thread 1: the one that runs the requests
            if not main_file.exists():
                raise SystemExit(
                    f"bench-gate: callgrind wrote no part {i} of {expected}: this interpreter "
                    f"({sys.executable}) may have no symbol for functools_reduce"
                )
            totals = [ln for ln in main_file.read_text().splitlines() if ln.startswith("totals:")]
            parts.append(int(totals[0].split()[1]))
    per: dict[str, int] = {}
    for c, (case, n) in enumerate(BASE.items()):
        mine = parts[c * ROUNDS * 2 : (c + 1) * ROUNDS * 2]
        # The least of each size: a rare one-off cost (an allocator arena, a
        # wake-up of the worker) in one batch does not count.
        per[case] = round((min(mine[1::2]) - min(mine[0::2])) / n)
    return {
        "span": per["span"],
        "flask_json": per["flask_on"],
        "flask_json_none": per["flask_off"],
        "flask_json_added": per["flask_on"] - per["flask_off"],
        "sqlite_connect": per["sqlite_on"],
        "sqlite_connect_none": per["sqlite_off"],
        "sqlite_connect_added": per["sqlite_on"] - per["sqlite_off"],
    }


def setup() -> dict[str, str]:
    """What the counts depend on besides pulsetrace's code."""
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "valgrind": valgrind.stdout.strip(),
        "flask": version("flask"),
        "werkzeug": version("werkzeug"),
        "wrapt": version("wrapt"),
    }


def hot_symbols_placed() -> Optional[tuple[int, int]]:
    """How many of the functions ``rust/py/hot_symbols.txt`` lists the built
    extension has (placed together by the linker), and how many it lists;
    None when that cannot be read."""
    nm = shutil.which("nm")
    if nm is None or not HOT_SYMBOLS.exists():
        return None
    import pulsetrace._native as native

    out = subprocess.run([nm, "--defined-only", native.__file__], capture_output=True, text=True)
    have = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    listed = [
        ln.strip() for ln in HOT_SYMBOLS.read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    return sum(name in have for name in listed), len(listed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="write the measured counts as baseline")
    ap.add_argument("--repeat", type=int, default=1, help="measure this many times (the median)")
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed growth (0.10: 10%%)")
    ap.add_argument("--jobs", type=int, default=2, help="callgrind runs at once")
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench-gate: valgrind is not installed (make system-deps installs it)")
        return 2

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        samples = list(pool.map(measure, range(args.repeat)))
    counts = {k: round(statistics.median(s[k] for s in samples)) for k in samples[0]}
    env = setup()
    print("bench-gate: instructions per operation on the request thread (callgrind)")
    if args.repeat > 1:
        for k in counts:
            values = [s[k] for s in samples]
            spread = (max(values) - min(values)) / max(min(values), 1) * 100
            print(f"  {k:18} runs {values}  spread {spread:.3f}%")

    if args.update:
        args.baseline.write_text(json.dumps({"counts": counts, "setup": env}, indent=2) + "\n")
        for k, v in counts.items():
            print(f"  {k:18} {v:>10,}")
        print(f"bench-gate: baseline written to {args.baseline}; commit it with the reason")
        return 0

    try:
        baseline: dict[str, Any] = json.loads(args.baseline.read_text())
    except (OSError, ValueError) as exc:
        print(f"bench-gate: cannot read the baseline {args.baseline}: {exc}")
        return 2
    for key, value in env.items():
        if baseline.get("setup", {}).get(key) != value:
            print(
                f"  note: {key} is {value!r} here, {baseline.get('setup', {}).get(key)!r} in the "
                "baseline: counts may differ for that reason alone"
            )
    failures = []
    print(f"  {'case':18} {'count':>10} {'baseline':>10} {'ratio':>7}")
    for k, v in counts.items():
        base = baseline.get("counts", {}).get(k)
        if base is None:
            print(f"  {k:18} {v:>10,} {'-':>10} {'-':>7}  (not in the baseline)")
            continue
        ratio = v / base if base else float("inf")
        over = k in GATED and ratio > 1 + args.tolerance
        gated = "" if k in GATED else "  (not gated)"
        print(f"  {k:18} {v:>10,} {base:>10,} {ratio:>7.3f}{gated}{'  REGRESSION' if over else ''}")
        if over:
            failures.append(
                f"{k}: {v:,} instructions, baseline {base:,}, ratio {ratio:.3f} "
                f"(more than {args.tolerance:.0%} over)"
            )
    placed = hot_symbols_placed()
    if placed is not None:
        found, listed = placed
        print(f"  request path: {found} of the {listed} functions listed are placed together")
        if found < 0.9 * listed:
            print(
                "  note: rust/py/hot_symbols.txt is stale (another toolchain or dependency "
                "set): python scripts/hot_symbols.py rewrites it; commit it"
            )
    for route in ("flask_json", "sqlite_connect"):
        none = counts.get(f"{route}_none")
        if none:
            share = counts[f"{route}_added"] / none
            print(f"  {route}: pulsetrace adds {share:.1%} to the request thread's instructions")
    if failures:
        print("bench-gate: FAILED")
        for f in failures:
            print(f"  {f}")
        print(
            "  If the growth is intended, update the baseline "
            "(benchmarks/gate/run.py --update) in a commit that says why."
        )
        return 1
    print(f"bench-gate: passed (every gated case within {args.tolerance:.0%} of the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
