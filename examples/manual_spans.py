"""The span API on its own, without a server: a few hundred simulated
requests made of manual spans (a SERVER span with database, cache and
outbound CLIENT children, some slow, some failing), then what pulsetrace
recorded: live latency per operation from the native histograms, the traces
the tail sampler kept and why, and the agent's counters.

Run with ``.venv/bin/python examples/manual_spans.py`` (after ``make build``).
Environment variables from the README apply, e.g.
``PULSETRACE_SAMPLE_RATE=0.05 .venv/bin/python examples/manual_spans.py``.
``make demo`` runs the demo service instead (``examples/demo_service``).
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pulsetrace

ROUTES = ["GET /users/{id}", "GET /campaigns", "POST /messages"]


def handle(route: str, rng: random.Random) -> None:
    """One simulated request: a SERVER span with CLIENT children."""
    with pulsetrace.start_span(
        route,
        kind="server",
        attributes={"http.request.method": route.split()[0], "http.route": route.split()[1]},
    ) as span:
        with pulsetrace.start_span(
            "SELECT campaigns",
            kind="client",
            attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT"},
        ):
            time.sleep(rng.expovariate(1 / 0.0004))
        if rng.random() < 0.5:
            with pulsetrace.start_span(
                "GET", kind="client", attributes={"db.system.name": "redis"}
            ):
                time.sleep(0.0001)
        status = 200
        try:
            with pulsetrace.start_span(
                "POST", kind="client", attributes={"server.address": "api.example.com"}
            ):
                if rng.random() < 0.03:
                    raise TimeoutError("upstream timed out")
                time.sleep(0.003 if rng.random() < 0.02 else 0.0002)
        except TimeoutError:
            status = 504
        span.set_attribute("http.response.status_code", status)


def main() -> None:
    config = pulsetrace.get_config()
    exporter = pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(exporter)
    rng = random.Random(7)
    n = 400
    started = time.perf_counter()
    for i in range(n):
        handle(ROUTES[i % len(ROUTES)], rng)
    elapsed = time.perf_counter() - started
    pulsetrace.flush(timeout=5)

    print(
        f"pulsetrace manual spans: {n} requests in {elapsed:.2f} s "
        f"(sample_rate={config.sample_rate})\n"
    )
    print("Latency per operation (native HDR histograms):")
    print(
        f"  {'kind':8} {'operation':18} {'count':>6} {'errors':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for row in sorted(pulsetrace.latency(), key=lambda r: (r["kind"], r["name"])):
        print(
            f"  {row['kind']:8} {row['name']:18} {row['count']:6d} {row['errors']:6d} "
            f"{row['p50'] * 1e3:8.3f} {row['p99'] * 1e3:8.3f} {row['max'] * 1e3:8.3f}"
        )
    traces = exporter.traces()
    reasons = Counter(t[0].keep_reason for t in traces)
    print(f"\nTail sampler kept {len(traces)} of {n} traces: {dict(reasons)}")
    for t in traces[:3]:
        root = next((s for s in t if s.local_root), t[0])
        print(
            f"  trace {root.trace_id:032x} {root.name!r} {root.duration_ns / 1e6:.3f} ms "
            f"({len(t)} spans, kept: {root.keep_reason})"
        )
        for s in sorted(t, key=lambda s: s.start_time_unix_nano):
            if s is not root:
                print(f"      {s.kind:6} {s.name:18} {s.duration_ns / 1e6:8.3f} ms {s.status}")
    nonzero = {k: v for k, v in pulsetrace.counters().items() if v}
    print(f"\nCounters: {nonzero}")
    pulsetrace.shutdown()


if __name__ == "__main__":
    main()
