#!/usr/bin/env python3
"""One JSON log line: pulsetrace's formatter against python-json-logger and
structlog's JSON renderer, on the same records, in one run.

    python benchmarks/logs/run.py            # prints µs per line and the ratios
    python benchmarks/logs/run.py --quick    # fewer rounds

Each contender turns the same record (a message with arguments and three
``extra`` values, written inside a span) into its JSON line: the
``logging`` formatters get a ``LogRecord`` made before the timing (making
it is the ``logging`` module's cost, the same for both), structlog the
event dict it would build. I/O is not counted. pulsetrace's line carries
more: the schema's fields, ``trace_id`` and ``span_id`` of the current
span, the request/user/company context, and the scrubber's pass over
message and metadata (when ``pulsetrace.scrub`` is part of the build).
python-json-logger formats ``asctime levelname name message`` plus the
extras; structlog runs ``add_log_level``, an ISO UTC
``TimeStamper`` and ``JSONRenderer`` on the event dict, the chain its
documentation recommends for JSON output. Prints the median of the rounds;
exits 1 if pulsetrace is slower than either. "pulsetrace, no scrubbing" (the
same line with the scrubber's pass left out) is printed for reference.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Callable

import structlog
from pythonjsonlogger.json import JsonFormatter as PjlFormatter

import pulsetrace
from pulsetrace.logging import JsonFormatter
from pulsetrace.logging.formatter import _scrubbers

EXTRA = {"campaignId": "camp_123", "jobsCreated": 1500, "estimatedTime": "15 minutes"}


def make_record() -> logging.LogRecord:
    rec = logging.LogRecord(
        "campaigns", logging.INFO, __file__, 42, "Campaign %s started", ("camp_123",), None
    )
    rec.__dict__.update(EXTRA)
    return rec


def contenders() -> dict[str, Callable[[logging.LogRecord], str]]:
    tags = {"environment": "production", "version": "1.0.0"}
    ours = JsonFormatter(service="api", tags=tags)
    unscrubbed = JsonFormatter(service="api", tags=tags, scrub=False)
    pjl = PjlFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=True)
    chain = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ]

    def structlog_line(_: logging.LogRecord) -> str:
        event: dict = {"event": "Campaign camp_123 started", "logger": "campaigns", **EXTRA}
        for p in chain:
            event = p(None, "info", event)  # type: ignore[assignment]
        return event  # type: ignore[return-value]

    return {
        "pulsetrace": ours.format,
        "pulsetrace, no scrubbing": unscrubbed.format,
        "python-json-logger": pjl.format,
        "structlog": structlog_line,
    }


def per_line_us(fn: Callable[[logging.LogRecord], str], n: int) -> float:
    records = [make_record() for _ in range(n)]  # made outside the timing
    t0 = time.perf_counter()
    for rec in records:
        fn(rec)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds, n = (5, 5_000) if args.quick else (15, 20_000)
    pulsetrace.configure(sample_rate=0.0)
    scrubbed = _scrubbers()[0].__name__ != "_no_scrub"
    with pulsetrace.start_span("GET /campaigns", kind="server"):
        pulsetrace.set_user("user_789")
        pulsetrace.set_company("comp_456")
        cases = contenders()
        for fn in cases.values():  # warm up
            per_line_us(fn, n // 10)
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):  # interleaved: drift hits every contender alike
            for name, fn in cases.items():
                results[name].append(per_line_us(fn, n))
        sample = cases["pulsetrace"](make_record())
    print(f"one JSON line, median of {rounds} rounds of {n} (scrubbing: {scrubbed})")
    median = {name: statistics.median(v) for name, v in results.items()}
    for name, us in median.items():
        print(f"  {name:20s} {us:6.2f} µs/line")
    ours = median["pulsetrace"]
    ok = True
    for name in ("python-json-logger", "structlog"):
        ratio = ours / median[name]
        print(f"  pulsetrace / {name}: {ratio:.2f}")
        ok = ok and ratio <= 1.0
    print(f"  pulsetrace's line: {sample}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
