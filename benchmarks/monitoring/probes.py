"""Probe latency of the monitoring endpoints: a monitoring server in a
process of its own (1,000 operations recorded, a few health checks
registered), probed on 127.0.0.1 at a fixed rate (default 200 probes/s)
and then closed-loop at saturation. Prints p50/p99/max per endpoint and
the saturated requests/s; writes JSON under benchmarks/results/.
``/apm/transactions`` (since start and over 5 minutes) is probed while a
thread of the served process keeps recording spans over the same 1,000
operations (``--load`` spans/s, default 2,000).

Figures, not a test: it exits 0 whatever the numbers.

    python benchmarks/monitoring/probes.py            # quick: 3 s per phase
    python benchmarks/monitoring/probes.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = """
import sys, threading, time
import pulsetrace, pulsetrace.health
from pulsetrace import prometheus
pulsetrace.configure(monitoring_enabled=True, export_queue_size=1)
for i in range(1000):
    with pulsetrace.start_span(f"op-{i}"):
        pass
pulsetrace.flush()
LOAD = float(sys.argv[1])

def load():
    i = 0
    while LOAD > 0:
        t0 = time.perf_counter()
        for _ in range(100):
            with pulsetrace.start_span(f"op-{i % 1000}"):
                pass
            i += 1
        time.sleep(max(0.0, 100 / LOAD - (time.perf_counter() - t0)))

threading.Thread(target=load, daemon=True).start()
pulsetrace.health.register("custom", lambda: True)
pulsetrace.health.check_disk()
pulsetrace.health.check_memory()
addr = prometheus.start_server("127.0.0.1:0", monitoring=True)
print(addr[1], flush=True)
sys.stdin.read()
"""

PATHS = [
    "/health/live",
    "/health/ready",
    "/health",
    "/health/metrics",
    "/apm/transactions",
    "/apm/transactions?window=5m",
]
RESULTS = Path(__file__).resolve().parents[1] / "results"


def probe(port: int, path: str) -> float:
    """Seconds for one request, connect to last byte."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        while s.recv(65536):
            pass
    return time.perf_counter() - t0


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fixed_rate(port: int, path: str, rate: float, seconds: float) -> list[float]:
    """Open loop: one probe every 1/rate s, each on its own thread."""
    out: list[float] = []
    lock = threading.Lock()
    threads = []

    def one() -> None:
        d = probe(port, path)
        with lock:
            out.append(d)

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return out


def saturated(port: int, path: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Closed loop: ``clients`` threads probing back to back."""
    out: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < stop:
            mine.append(probe(port, path))
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(out) / seconds, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--load", type=float, default=2000.0, help="spans/s recorded meanwhile")
    ap.add_argument("--paths", nargs="*", default=PATHS)
    args = ap.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.load)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    report: dict[str, dict[str, float]] = {}
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for path in args.paths:
            probe(port, path)  # warm
            lat = fixed_rate(port, path, args.rate, args.seconds)
            rps, sat = saturated(port, path, args.clients, args.seconds)
            row = {
                f"p50_ms_at_{args.rate:g}_per_s": quantile(lat, 0.5) * 1000,
                f"p99_ms_at_{args.rate:g}_per_s": quantile(lat, 0.99) * 1000,
                f"max_ms_at_{args.rate:g}_per_s": max(lat) * 1000,
                "saturated_requests_per_s": rps,
                "saturated_p99_ms": quantile(sat, 0.99) * 1000,
            }
            report[path] = row
            print(f"{path:30} " + "  ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "monitoring_probes.json"
    out.write_text(json.dumps({"endpoints": report, "load_1m": load}, indent=2))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
