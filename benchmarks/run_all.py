#!/usr/bin/env python3
"""Run every benchmark: micro (ns/op) then memory (RSS bound), each as a subprocess.

    python benchmarks/run_all.py [--quick|--full]

This is what ``make bench`` calls. Figures are written under benchmarks/results/.
Exits 0 unless a harness crashed (then with its exit status).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
SUITES = [
    ("micro", HERE / "micro" / "run.py"),
    ("memory", HERE / "memory" / "run.py"),
    ("flask_overhead", HERE / "flask_overhead" / "run.py"),  # gunicorn + wrk, end to end
    ("export", HERE / "export" / "run.py"),  # OTLP encoding, CPU per exported span, exposition
]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    args = ap.parse_args(argv)
    mode_flag = f"--{args.mode or 'quick'}"

    summary = []
    status = 0
    for name, script in SUITES:
        print(f"=== {name} ({mode_flag[2:]}) ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, str(script), mode_flag], check=False).returncode
        elapsed = time.monotonic() - t0
        summary.append(f"{name}: {elapsed:.1f} s" + ("" if rc == 0 else f", CRASHED (exit {rc})"))
        if rc != 0 and status == 0:
            status = rc
        print(flush=True)
    print("=== done: " + "; ".join(summary) + " ===")
    return status


if __name__ == "__main__":
    sys.exit(main())
