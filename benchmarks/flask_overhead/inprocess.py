#!/usr/bin/env python3
"""pulsetrace's cost per request of the benchmark app, in process: no server,
no load generator, so far less noise than ``run.py`` (which measures what a
deployment sees, caches disturbed by the server and the kernel included).

    python benchmarks/flask_overhead/inprocess.py [--route /json] [--rounds 15] [--cold]

The app (``app.py``) is called through WSGI directly, with the Flask hook
patched and unpatched in interleaved rounds (the starting side alternating),
each round a batch of requests timed with ``perf_counter_ns`` and
``process_time_ns``. Prints the medians and the per-round paired differences.
``--cold`` disturbs the caches between requests (a 2 MiB buffer walked, some
unrelated Python run), as a busy server's own work and the kernel do, and
times the requests alone: the cost a deployment sees per request, with less
noise than a server run.
Exits 0 whatever the figures: a measurement, not a test. Set
``BENCH_OUTBOUND_URL`` (a running upstream) for ``/outbound``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--route", default="/json")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--requests", type=int, default=3000, help="per round and side")
    ap.add_argument(
        "--cold", action="store_true", help="disturb the caches between requests (see above)"
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    sys.path.insert(0, str(HERE))
    # pulsetrace first, then the app (it opens its SQLite connection on import).
    importlib.import_module("pulsetrace.auto")
    from pulsetrace.contrib import flask as flask_hook

    app = importlib.import_module("app").app
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": args.route,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "inprocess",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "5555",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    def batch(n: int) -> tuple[float, float]:
        if args.cold:
            return cold_batch(n)
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for _ in range(n):
            body = app(dict(environ), start_response)
            for _chunk in body:
                pass
            body.close()
        return (time.perf_counter_ns() - w0) / n / 1e3, (time.process_time_ns() - c0) / n / 1e3

    disturb = _disturber()

    def cold_batch(n: int) -> tuple[float, float]:
        wall_ns = cpu_ns = 0
        perf, proc = time.perf_counter_ns, time.process_time_ns
        for _ in range(n):
            disturb()
            w0, c0 = perf(), proc()
            body = app(dict(environ), start_response)
            for _chunk in body:
                pass
            body.close()
            wall_ns += perf() - w0
            cpu_ns += proc() - c0
        return wall_ns / n / 1e3, cpu_ns / n / 1e3

    wall: dict[str, list[float]] = {"none": [], "pulsetrace": []}
    cpu: dict[str, list[float]] = {"none": [], "pulsetrace": []}
    for r in range(args.rounds):
        order = ("none", "pulsetrace") if r % 2 == 0 else ("pulsetrace", "none")
        for side in order:
            if side == "none":
                flask_hook.unpatch()
            else:
                flask_hook.patch()
            batch(max(args.requests // 20, 10))  # warm-up (installs the fast path)
            gc.collect()
            w, c = batch(args.requests)
            wall[side].append(w)
            cpu[side].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    paired = [p - n for p, n in zip(wall["pulsetrace"], wall["none"])]
    q1, q2, q3 = statistics.quantiles(paired, n=4)
    print(
        f"{args.route}{' (cold caches)' if args.cold else ''}, "
        f"{args.rounds} interleaved rounds x {args.requests} requests "
        f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    print(f"  none        {med['none']:8.1f} us/request wall, {med_cpu['none']:8.1f} us CPU")
    print(
        f"  pulsetrace  {med['pulsetrace']:8.1f} us/request wall, "
        f"{med_cpu['pulsetrace']:8.1f} us CPU (every thread)"
    )
    print(
        f"  added: {med['pulsetrace'] - med['none']:+.2f} us wall "
        f"({(med['pulsetrace'] / med['none'] - 1) * 100:+.1f}%), "
        f"{med_cpu['pulsetrace'] - med_cpu['none']:+.2f} us CPU; "
        f"paired per round: median {q2:+.2f}, p25..p75 {q1:+.2f}..{q3:+.2f} us"
    )
    return 0


def _disturber() -> Any:
    """A function that evicts most of what a request left in the caches:
    it writes one byte per cache line of a 2 MiB buffer and runs unrelated
    library code (JSON, regular expressions, e-mail header parsing, decimal
    arithmetic), the way a server's own work between two requests does."""
    import decimal
    import email.parser
    import json
    import re

    buf = bytearray(2 << 20)
    blob = {f"k{i}": [i, str(i), {"x": i}] for i in range(100)}
    pattern = re.compile(r"(\w+)=(\d+)")
    parser = email.parser.Parser()

    def disturb() -> None:
        for i in range(0, len(buf), 64):
            buf[i] = (buf[i] + 1) & 255
        json.dumps(blob)
        pattern.findall("a=1 b=2 c=3" * 20)
        parser.parsestr("Host: x\r\nA: b\r\n\r\n")
        sorted(decimal.Decimal(i) / 7 for i in range(20))

    return disturb


if __name__ == "__main__":
    sys.exit(main())
