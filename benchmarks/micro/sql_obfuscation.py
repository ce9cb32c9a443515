#!/usr/bin/env python3
"""What SQL obfuscation costs a traced statement, in ns per call.

Cases, interleaved (each round times one batch of every case, the starting
case rotating), GC off, medians over rounds:

- ``summarize_first_time``: ``_sql.summarize(s)`` on statements never seen
  before (unique strings: the native parse, the str hash, the cache insert and,
  every 4096 statements, the cache reset);
- ``summarize_cached``: ``_sql.summarize(s)`` on one repeated statement (what a
  driver's prepared or ORM-compiled statement costs after its first call);
- ``native_obfuscate_sql``: ``obfuscate_sql(s, 4096)`` alone on unique
  statements (no cache);
- ``empty_loop``: the loop itself, included in every other figure.

    python benchmarks/micro/sql_obfuscation.py [--rounds 7] [--batch 20000]

Runs in a few seconds; exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any, Callable

from pulsetrace._native import obfuscate_sql
from pulsetrace.contrib import _sql

TEMPLATE = (
    "SELECT u.id, u.email, o.total FROM users u JOIN orders o ON o.user_id = u.id "
    "WHERE u.email = 'user{i}@example.com' AND o.status IN (1, 2, {i}) "
    "AND o.created_at > '2024-01-{d:02d}' /* request {i} */ ORDER BY o.total DESC LIMIT 50"
)


def unique(start: int, n: int) -> list[str]:
    return [TEMPLATE.format(i=i, d=i % 28 + 1) for i in range(start, start + n)]


def timed(fn: Callable[[Any], Any], items: list[Any]) -> float:
    """ns per call of ``fn`` over ``items``."""
    t0 = time.perf_counter_ns()
    for s in items:
        fn(s)
    return (time.perf_counter_ns() - t0) / len(items)


def timed_empty(items: list[Any]) -> float:
    t0 = time.perf_counter_ns()
    for _s in items:
        pass
    return (time.perf_counter_ns() - t0) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=20000)
    opts = parser.parse_args()
    n, rounds = opts.batch, opts.rounds
    summarize = _sql.summarize

    def native(s: str) -> Any:
        return obfuscate_sql(s, _sql.MAX_QUERY_LENGTH)

    repeated = [TEMPLATE.format(i=7, d=7)] * n
    summarize(repeated[0])  # cached from now on
    # Fresh unique statements for every batch of the cases that must miss.
    pools = {
        "summarize_first_time": [unique((2 * r) * n, n) for r in range(rounds)],
        "native_obfuscate_sql": [unique((2 * r + 1) * n, n) for r in range(rounds)],
    }
    cases: dict[str, Callable[[int], float]] = {
        "summarize_first_time": lambda r: timed(summarize, pools["summarize_first_time"][r]),
        "summarize_cached": lambda r: timed(summarize, repeated),
        "native_obfuscate_sql": lambda r: timed(native, pools["native_obfuscate_sql"][r]),
        "empty_loop": lambda r: timed_empty(repeated),
    }
    names = list(cases)
    results: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    t_start = time.monotonic()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                results[name].append(cases[name](r))
    finally:
        gc.enable()
    elapsed = time.monotonic() - t_start
    print(
        f"SQL obfuscation: {rounds} rounds x {n} calls per case, statement of "
        f"{len(repeated[0])} chars ({elapsed:.1f} s)"
    )
    print(f"{'case':<24}{'median ns':>12}{'min':>10}{'max':>10}")
    for name in names:
        xs = results[name]
        print(f"{name:<24}{statistics.median(xs):>12.0f}{min(xs):>10.0f}{max(xs):>10.0f}")
    print("obfuscated:", summarize(repeated[0])[0])


if __name__ == "__main__":
    main()
