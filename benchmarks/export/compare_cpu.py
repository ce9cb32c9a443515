#!/usr/bin/env python3
"""CPU per exported span of two pulsetrace versions in one run: the pulsetrace side
of run.py's part 2 (cpu_worker.py: traces of 1 root + 2 children over OTLP/gRPC to
the counting receiver.py), once with the installed pulsetrace and once with another
tree's ``python/`` directory first on PYTHONPATH, in interleaved rounds against one
receiver, so that both see the same machine load.

    python benchmarks/export/compare_cpu.py --other /tmp/base/python [--spans 60000] [--rounds 5]

The other tree needs its built extension (``pulsetrace/_native*.so``) in it: for
example ``git archive main python | tar -x -C /tmp/base`` and a copy of the installed
extension, when the native core did not change between the two. Prints each round
and the medians; figures, not a test (exit 0 unless the harness broke).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from common import HERE, child_env, loadavg, stats
from run import Receiver


def run_worker(pythonpath: Optional[Path], port: int, spans: int, out: Path) -> dict[str, Any]:
    env, _ = child_env()
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    else:
        env.pop("PYTHONPATH", None)
    cmd = [sys.executable, str(HERE / "cpu_worker.py"), "--side", "pulsetrace"]
    cmd += ["--port", str(port), "--spans", str(spans), "--out", str(out)]
    rc = subprocess.run(cmd, env=env, timeout=1800, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"cpu_worker.py exited with {rc} (PYTHONPATH={pythonpath})")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--other", type=Path, required=True, help="the other tree's python/ dir")
    ap.add_argument("--spans", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    other = args.other.resolve()
    if not (other / "pulsetrace" / "__init__.py").is_file():
        print(f"{other} has no pulsetrace package", file=sys.stderr)
        return 2
    sides: dict[str, Optional[Path]] = {"this": None, "other": other}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    print(f"load average {loadavg()}; {args.spans} spans per run, {args.rounds} rounds")
    receiver = Receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    before = receiver.counts()
                    res = run_worker(
                        sides[side], receiver.port, args.spans, Path(tmp) / f"{side}-{r}.json"
                    )
                    expected = res["warmup_spans"] + res["spans"]
                    got = receiver.wait_for(before["spans"] + expected)["spans"] - before["spans"]
                    res["arrived"] = got == expected
                    runs[side].append(res)
                    print(
                        f"  round {r + 1} {side:<6} {res['cpu_us_per_span']:6.2f} µs/span "
                        f"(loop {res['loop']['cpu_s']:.3f} s + flush {res['flush']['cpu_s']:.3f} s"
                        f" CPU; wall {res['total']['wall_s']:.2f} s)  arrived {got}/{expected}",
                        flush=True,
                    )
    finally:
        receiver.stop()
    per_span = {s: stats([x["cpu_us_per_span"] for x in runs[s]]) for s in sides}
    for s in sides:
        p = per_span[s]
        print(f"{s:<6} median {p['median']:.2f} µs/span (min {p['min']:.2f}, max {p['max']:.2f})")
    ratio = per_span["this"]["median"] / per_span["other"]["median"]
    print(f"this / other: {ratio:.3f}")
    arrived = all(x["arrived"] for s in sides for x in runs[s])
    print("every span arrived: " + ("yes" if arrived else "NO"))
    return 0


if __name__ == "__main__":
    os.chdir(HERE)
    sys.exit(main())
