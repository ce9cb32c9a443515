#!/usr/bin/env python3
"""What pulsetrace adds to a gunicorn worker, in instructions: every thread of
the worker process (request thread, pulsetrace's core worker, the export
thread, gRPC's threads), the server loop and the socket handling included,
counted by callgrind, so the figure does not move with the machine's load.

    python benchmarks/flask_overhead/instructions.py [--route /json] [--requests 300]

For each configuration (no agent; pulsetrace-run with default settings,
exporting over OTLP/gRPC to the benchmark's receiver; the same with
``OTEL_TRACES_EXPORTER=none``) the same one-worker gunicorn server as
``run.py`` runs under ``valgrind --tool=callgrind --trace-children=yes``
twice: once serving W + N requests, once W + 3N, one connection at a time.
The worker's instructions per request are the difference of the two totals
divided by 2N: start-up, imports and shutdown cancel out; the export of the
traces kept while serving does not (it scales with the requests).

What this cannot see by default: cache and branch-predictor effects of the
extra code (callgrind counts instructions, not cycles), and the scheduler
(threads taking turns on 2 cores with the load generator). ``--cache-sim``
adds callgrind's simulated L1/last-level caches and branch predictor, and an
estimate of the cycles they cost (kcachegrind's: instructions + 10 per L1
miss and per mispredicted branch + 100 per last-level miss): on a busy
server the request path runs with cold caches, and most of what pulsetrace
costs a request is then misses, not instructions. The simulation is
deterministic but simple (one predictor table indexed by address, no
prefetch): a guide to where the cost is, not a measure of time. And under valgrind a
request takes tens of times longer, so work done on a timer (the core
worker's periodic drain, the export every second) is counted tens of times
more often per request than in production: the figures with pulsetrace are
an upper bound. ``run.py`` measures throughput with all of that; this
measures the work.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from overhead import procs as P  # noqa: E402
from overhead.settings import make_configs  # noqa: E402

WARM_UP = 200
CONFIGS = ("none", "pulsetrace", "pulsetrace_no_export")


#: The simulated events reported with ``--cache-sim``.
SIMULATED = ("I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bcm", "Bim")


def estimated_cycles(events: dict[str, float]) -> float:
    """kcachegrind's cycle estimate: each instruction 1, each L1 miss and
    mispredicted branch 10, each last-level miss 100."""
    l1 = sum(events.get(e, 0) for e in ("I1mr", "D1mr", "D1mw"))
    ll = sum(events.get(e, 0) for e in ("ILmr", "DLmr", "DLmw"))
    branches = events.get("Bcm", 0) + events.get("Bim", 0)
    return events["Ir"] + 10 * (l1 + branches) + 100 * ll


def serve(
    processes: P.Processes,
    launcher: list[str],
    env: dict[str, str],
    route: str,
    n: int,
    out: Path,
    cache_sim: bool = False,
) -> dict[str, int]:
    """Callgrind's events (``Ir``: instructions; with ``cache_sim`` also the
    simulated cache misses, ``I1mr`` ...) of the worker process over its
    whole life, serving ``WARM_UP + n`` requests to ``route``."""
    port = P.free_port()
    cmd = [
        "valgrind",
        "--tool=callgrind",
        *(["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []),
        "--trace-children=yes",
        f"--callgrind-out-file={out}/cg.%p",
        *launcher,
        *P.gunicorn_cmd(port, "app:app"),
    ]
    cmd[cmd.index("--graceful-timeout") + 1] = "120"
    proc = processes.start("valgrind-gunicorn", cmd, env)
    deadline = time.monotonic() + 300  # start-up under valgrind is slow
    pid: Optional[int] = None
    while pid is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise P.HarnessError(
                f"gunicorn did not serve:\n{processes.log_tail('valgrind-gunicorn')}"
            )
        try:
            status, body = P.http_get(port, "/_bench/info", timeout=30)
            if status == 200:
                pid = int(json.loads(body)["pid"])
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(0.5)
    conn = http.client.HTTPConnection(P.HOST, port, timeout=60)
    for _ in range(WARM_UP + n):
        conn.request("GET", route)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise P.HarnessError(f"{route} answered {resp.status}")
    conn.close()
    processes.stop(proc, timeout=180)
    total: dict[str, int] = {}
    for part in out.glob(f"cg.{pid}*"):
        events: list[str] = []
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("totals:", "summary:")):
                for event, value in zip(events, line.split()[1:]):
                    total[event] = total.get(event, 0) + int(value)
                break
    if not total.get("Ir"):
        raise P.HarnessError(f"no callgrind output for the worker {pid} in {out}")
    return total


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--route", default="/json")
    ap.add_argument("--requests", type=int, default=300, help="N (the second run serves 3N)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate caches and the branch predictor: L1 misses (I1mr, D1mr, "
        "D1mw), last-level misses, mispredicted branches (Bcm, Bim), estimated cycles",
    )
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed (make system-deps installs it)")
        return 2
    with tempfile.TemporaryDirectory(prefix="pulsetrace-instr-") as tmp:
        processes = P.Processes(Path(tmp))
        try:
            env = P.base_env()
            env["PYTHONHASHSEED"] = "0"
            _recv, port = P.start_receiver(processes, env, Path(tmp) / "stats.json")
            configs = make_configs(port)
            per: dict[str, float] = {}
            misses: dict[str, dict[str, float]] = {}
            for name in args.configs.split(","):
                cfg = configs[name]
                totals = []
                for n in (args.requests, 3 * args.requests):
                    out = Path(tmp) / f"{name}-{n}"
                    out.mkdir()
                    totals.append(
                        serve(
                            processes,
                            cfg.launcher,
                            {**env, **cfg.env},
                            args.route,
                            n,
                            out,
                            args.cache_sim,
                        )
                    )
                each = {
                    e: (totals[1].get(e, 0) - totals[0].get(e, 0)) / (2 * args.requests)
                    for e in totals[1]
                }
                per[name] = each["Ir"]
                misses[name] = {e: each[e] for e in SIMULATED if e in each}
                if "I1mr" in each:
                    misses[name]["cycles (est.)"] = estimated_cycles(each)
                shown = "".join(f", {e} {v:,.0f}" for e, v in misses[name].items())
                print(
                    f"  {name:22} {per[name]:>12,.0f} instructions per request "
                    f"(worker, all threads){shown}"
                )
        finally:
            processes.stop_all()
    base = per.get("none")
    if base:
        for name, v in per.items():
            if name != "none":
                print(
                    f"  {name}: +{v - base:,.0f} per request, "
                    f"{(v - base) / base:+.1%} over no agent"
                )
                for e, m in misses.get(name, {}).items():
                    m0 = misses["none"][e]
                    if max(m, m0) < 1:  # last-level misses: none once warm
                        continue
                    share = f" ({(m - m0) / m0:+.1%})" if m0 >= 1 else ""
                    print(f"    {e}: {m - m0:+,.0f} per request{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
