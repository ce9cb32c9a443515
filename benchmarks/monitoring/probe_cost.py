#!/usr/bin/env python3
"""CPU each probe costs the process that serves the monitoring endpoints,
per endpoint: Flask ``/json`` under gunicorn (1 sync worker) with
pulsetrace (``pulsetrace-run``, ``MONITORING_ENABLED=true``, the endpoints
served by the gunicorn master, as ``probed_throughput.py`` runs it), the
application kept busy at a steady rate (``--app-rate``, default 200
requests/s: the worker records and publishes, so the merged view changes
as under load).

For each endpoint, in rounds: ``--seconds`` without probes, then
``--seconds`` probing that endpoint alone at ``--rate`` (default 50/s, one
connection per probe, as a load balancer does). The serving process's CPU
is read from ``/proc/<pid>/task/*/schedstat`` (nanoseconds, every thread)
before and after; per probe = (probed CPU - unprobed CPU) / probes. The
report gives the median over rounds per endpoint, in microseconds.

With ``--py-spy DIR``, the first probed round of each endpoint is also
sampled by py-spy (``requirements-dev.txt``; it needs ptrace rights on the
serving process) while the serving process holds the GIL: one raw profile
(folded stacks, ``thread;frame;... count``) per endpoint in ``DIR``, where
its Python time goes.

Figures, not a test: it exits 0 whatever the numbers.

    python benchmarks/monitoring/probe_cost.py                 # 3 rounds x 4 s
    python benchmarks/monitoring/probe_cost.py --rounds 5 --seconds 6
    python benchmarks/monitoring/probe_cost.py --paths /health/live /health
    python benchmarks/monitoring/probe_cost.py --py-spy /tmp/profiles
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "flask_overhead"))

from overhead.procs import (  # noqa: E402
    HarnessError,
    Processes,
    base_env,
    free_port,
    http_get,
    start_gunicorn,
)
from overhead.settings import HOST, venv_bin  # noqa: E402

PATHS = [
    "/health/live",
    "/health",
    "/health/ready",
    "/apm/transactions",
    "/apm/status",
    "/health/metrics",
    "/metrics",
]
RESULTS = HERE.parent / "results"


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds of the process's threads (those alive: the serving
    process's threads live as long as it does)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def probe(port: int, path: str) -> int:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            head = head or data
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


def probe_at(port: int, path: str, rate: float, seconds: float) -> tuple[int, dict[int, int]]:
    statuses: dict[int, int] = defaultdict(int)
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            statuses[probe(port, path)] += 1
        except OSError:
            statuses[0] += 1
    return n, dict(statuses)


class AppLoad:
    """Requests ``/json`` at ``rate``/s on one keep-alive connection."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        start, i = time.perf_counter(), 0
        while not self.stop.is_set() and self.rate > 0:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("GET", "/json")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn = None
            i += 1
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                start, i = time.perf_counter(), 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=50.0, help="probes/s (default 50)")
    ap.add_argument("--app-rate", type=float, default=200.0, help="app requests/s meanwhile")
    ap.add_argument("--paths", nargs="*", default=PATHS)
    ap.add_argument("--json", type=Path, default=RESULTS / "probe_cost.json")
    ap.add_argument("--py-spy", type=Path, help="write a py-spy profile per endpoint here")
    args = ap.parse_args(argv)
    spy = None
    if args.py_spy is not None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if spy is None:
            print("probe_cost: --py-spy needs py-spy (pip install -r requirements-dev.txt)")
            return 1
        args.py_spy.mkdir(parents=True, exist_ok=True)

    log_dir = Path(tempfile.mkdtemp(prefix="pt-probe-cost-"))
    procs = Processes(log_dir)
    env = base_env()
    metrics_port = free_port()
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_SERVICE_NAME="probe-cost",
        MONITORING_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"{HOST}:{metrics_port}",
    )
    print(
        f"probe_cost: Flask /json, gunicorn 1 sync worker, pulsetrace-run; app load "
        f"{args.app_rate:g} req/s; {args.rounds} rounds x {args.seconds:g} s; "
        f"probes {args.rate:g}/s, one endpoint at a time"
    )
    report: dict[str, dict[str, object]] = {}
    try:
        master, port, info, _ = start_gunicorn(
            procs, "app", [str(venv_bin("pulsetrace-run"))], "app:app", env
        )
        status, body = http_get(metrics_port, "/health/live")
        if status != 200:
            raise HarnessError(f"GET /health/live: {status} {body[:200]!r}")
        served_by = int(json.loads(body)["pid"])
        if served_by != master.pid:
            print(f"  note: the endpoints are served by pid {served_by}, not the master")
        load = AppLoad(port, args.app_rate)
        for path in args.paths:  # warm every endpoint (imports, first renderings)
            probe(metrics_port, path)
        time.sleep(2.0)
        per: dict[str, list[float]] = defaultdict(list)
        statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for r in range(args.rounds):
            for path in args.paths:
                a = cpu_ns(served_by)
                time.sleep(args.seconds)
                b = cpu_ns(served_by)
                profiler = None
                if args.py_spy is not None and r == 0 and spy is not None:
                    out = args.py_spy / (path.strip("/").replace("/", "_") + ".txt")
                    cmd = [spy, "record", "--pid", str(served_by), "--gil", "--nonblocking"]
                    cmd += ["--rate", "1000", "--duration", str(max(1, int(args.seconds)))]
                    cmd += ["--format", "raw"]
                    profiler = subprocess.Popen(
                        [*cmd, "--output", str(out)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                n, st = probe_at(metrics_port, path, args.rate, args.seconds)
                c = cpu_ns(served_by)
                if profiler is not None:
                    profiler.wait(30)
                for k, v in st.items():
                    statuses[path][k] += v
                per[path].append(((c - b) - (b - a)) / n / 1e3)
        load.stop.set()
    except HarnessError as exc:
        print(f"probe_cost: harness failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    print(f"  {'endpoint':24} {'µs CPU/probe':>13}  (rounds)")
    for path in args.paths:
        med = statistics.median(per[path])
        rounds = " ".join(f"{x:.0f}" for x in per[path])
        print(f"  {path:24} {med:13.0f}  ({rounds})")
        report[path] = {
            "us_per_probe_median": med,
            "us_per_probe_rounds": per[path],
            "statuses": dict(statuses[path]),
        }
    loadavg = os.getloadavg()[0]
    print(f"  load average (1 min) at the end: {loadavg:.2f} (a shared machine: figures are noisy)")
    RESULTS.mkdir(exist_ok=True)
    args.json.write_text(json.dumps({"endpoints": report, "load_1m": loadavg}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
