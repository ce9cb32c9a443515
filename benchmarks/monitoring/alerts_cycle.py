"""CPU cost of one alert evaluation cycle: 100 rules (error ratios and
rates over a window, percentiles, gauges, code conditions) over 1,000
series (operations with live histograms), no alert firing. Prints the
cycle's CPU time (thread time: what the evaluator takes from the
application) split into the snapshot (reading the histograms) and the
rules; target: under 10 ms.

``--builtins``: 12 of the 100 rules are the built-in ones (windowed
percentiles against baselines, slow queries, 429s, traffic);
``--traffic N``: N more requests of every series between two cycles (10 s
apart), so every window holds data and every operation is judged. The
cycle takes the histogram copies itself (no monitoring server thread), so
its figure includes them (shown apart too).

Figures, not a test: it exits 0 whatever the numbers.

    python benchmarks/monitoring/alerts_cycle.py [--cycles 50] [--builtins] [--traffic 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pulsetrace
from pulsetrace.monitoring.alerts.builtin import builtin_rules
from pulsetrace.monitoring.alerts.engine import Manager
from pulsetrace.monitoring.alerts.rules import Threshold, Verdict, make_rule
from pulsetrace.monitoring.alerts.store import Store

SERIES = 1000
RULES = 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--builtins", action="store_true")
    ap.add_argument("--traffic", type=int, default=0)
    args = ap.parse_args()
    pulsetrace.configure(max_metric_keys=SERIES + 10, export_queue_size=1, sample_rate=0.0)
    t0 = 1_700_000_000_000_000_000
    for i in range(SERIES):
        for j in range(5):
            span = pulsetrace.start_span(f"GET /route/{i}", kind="server", start_time=t0)
            span.end(end_time=t0 + (j + 1) * 1_000_000)
    pulsetrace.flush(timeout=10)
    now = [1_800_000_000.0]
    with tempfile.TemporaryDirectory() as d:
        m = Manager(Store(f"{d}/alerts.db"), {}, clock=lambda: now[0])
        m.health_fn = dict
        builtins = builtin_rules(memory_warning_bytes=1 << 50) if args.builtins else []
        for rule in builtins:
            m.add(rule)
        for r in range(RULES - len(builtins)):
            op = f"GET /route/{r * 7 % SERIES}"
            kind = ("error_ratio", "error_ratio", "rate", "percentile", "gauge", "code")[r % 6]
            cond: object
            if kind == "code":
                cond = lambda snap, op=op: Verdict(  # noqa: E731
                    (snap.operation(op) or {}).get("count", 0) > 1e9
                )
            else:
                cond = Threshold(kind, op if kind != "gauge" else f"g{r}", threshold=1e9)
            m.add(make_rule(f"r{r}", f"Rule {r}", cond))
        snap_ms, total_ms, copies_ms = [], [], []
        tick = m.windows.tick

        def timed_tick() -> None:
            c0 = time.thread_time()
            tick()
            copies_ms.append((time.thread_time() - c0) * 1000)

        m.windows.tick = timed_tick  # type: ignore[method-assign]
        for _ in range(args.cycles + 5):
            now[0] += 10
            for i in range(SERIES if args.traffic else 0):
                for j in range(args.traffic):
                    span = pulsetrace.start_span(f"GET /route/{i}", kind="server", start_time=t0)
                    span.end(end_time=t0 + (j + 1) * 1_000_000)
            # The core's worker records them (not the evaluator's work).
            pulsetrace.latency()
            m.cycle()  # takes the histogram copies (due every 10 s)
            total_ms.append(m.last_cycle_cpu_s * 1000)
            c0 = time.thread_time()
            m.snapshot(now[0])  # again at the same time: no copies taken
            snap_ms.append((time.thread_time() - c0) * 1000)
        snap_ms, total_ms, copies_ms = snap_ms[5:], total_ms[5:], copies_ms[5:]
        broken = [r.broken for r in m.rules.values() if r.broken]
        assert not broken, broken[:3]
        assert m.store.alerts() == []

    def fig(xs: list[float]) -> str:
        xs = sorted(xs)
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        return f"median {statistics.median(xs):.2f} ms, p99 {p99:.2f} ms, max {xs[-1]:.2f} ms"

    extra = f", {len(builtins)} of them built-in" if builtins else ""
    extra += f", {args.traffic} requests per series per cycle" if args.traffic else ""
    print(f"{RULES} rules over {SERIES} series{extra}, {args.cycles} cycles (CPU time):")
    print(f"  whole cycle: {fig(total_ms)}")
    print(f"  of which the snapshot (histograms read): {fig(snap_ms)}")
    if copies_ms:
        print(f"  of which the windows' histogram copies: {fig(copies_ms)}")


if __name__ == "__main__":
    main()
