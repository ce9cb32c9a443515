"""The fallback load generator, used when ``wrk`` is not installed.

Closed loop like wrk: ``connections`` threads, each with one
``http.client`` connection (HTTP/1.1 keep-alive, reopened when the server
closes it, as gunicorn's sync worker does after every response), sending the
next request as soon as the previous response is read, for ``duration``
seconds. Latency is timed from sending the request to having read the whole
response (the connect is outside it, as in wrk), in microseconds. Returns the
same fields as ``latency.lua`` prints for wrk.

It is slower than wrk (the client threads share one GIL), so figures taken
with it are not comparable with wrk's; they are comparable with each other.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from typing import Any

#: Points of the percentile curve: 50% to 99.99%, evenly spaced on a log scale
#: of 1/(1-p), as ``latency.lua`` prints them for wrk.
CURVE_POINTS = 40
NAMED = (50.0, 75.0, 90.0, 99.0, 99.9, 99.99)


def curve_percentiles() -> list[float]:
    lo, hi = math.log10(2), 4.0
    return [100 * (1 - 10 ** -(lo + (hi - lo) * i / CURVE_POINTS)) for i in range(CURVE_POINTS + 1)]


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def run_load(
    host: str, port: int, path: str, connections: int, duration: float, timeout: float = 10.0
) -> dict[str, Any]:
    start_barrier = threading.Barrier(connections + 1)
    lat_lists: list[list[int]] = [[] for _ in range(connections)]
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    err_lock = threading.Lock()
    nbytes = [0] * connections
    deadline = [0.0]

    def count(kind: str) -> None:
        with err_lock:
            errors[kind] += 1

    def worker(i: int) -> None:
        lats = lat_lists[i]
        conn = None
        start_barrier.wait()
        end = deadline[0]
        while time.perf_counter() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                    conn.connect()
            except OSError:
                count("connect")
                conn = None
                time.sleep(0.01)
                continue
            try:
                t0 = time.perf_counter_ns()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                t1 = time.perf_counter_ns()
            except TimeoutError:
                count("timeout")
                conn.close()
                conn = None
                continue
            except (OSError, http.client.HTTPException):
                count("read")
                conn.close()
                conn = None
                continue
            lats.append((t1 - t0) // 1000)
            nbytes[i] += len(body)
            if resp.status > 399:
                count("status")
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True, name=f"loadgen-{i}")
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + duration
    start_barrier.wait()
    for t in threads:
        t.join(duration + timeout + 5)
    elapsed = time.perf_counter() - t_start
    lats = sorted(v for lst in lat_lists for v in lst)
    n = len(lats)
    mean = sum(lats) / n if n else float("nan")
    stdev = math.sqrt(sum((v - mean) ** 2 for v in lats) / n) if n else float("nan")
    return {
        "requests": n,
        "duration_us": int(elapsed * 1e6),
        "bytes": sum(nbytes),
        "errors": errors,
        "latency_us": {
            "min": float(lats[0]) if n else float("nan"),
            "max": float(lats[-1]) if n else float("nan"),
            "mean": mean,
            "stdev": stdev,
        },
        "named": {f"{p:g}": percentile(lats, p) for p in NAMED},
        "percentiles": [[p, percentile(lats, p)] for p in curve_percentiles()],
    }
