#!/usr/bin/env python3
"""Micro-benchmarks of pulsetrace's request-path costs next to reference points.

All cases run in one process, interleaved: each round times one batch of every
case (the starting case rotates from round to round), so drifts of the machine
hit every case alike. A batch is N executions of the case's statement in a
pre-compiled loop, timed with ``perf_counter_ns`` with the GC off. Figures are
raw ns per execution, loop included; the empty loop's own cost is reported on
its own line (subtract it yourself if you want the statement alone).

    python benchmarks/micro/run.py [--quick|--full] [--json PATH]

Exits 0 whatever the figures: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from report import print_report, summarize

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE.parent / "results" / "micro.json"
POOL = 1024  # every loop cycles over this many values; histogram_record records them
ATTRS = (
    '{"http.request.method": "GET", "http.route": "/users/{id}", "http.response.status_code": 200}'
)
SET3 = (
    "    span.set_attribute('http.request.method', 'GET')\n"
    "    span.set_attribute('http.route', '/users/{id}')\n"
    "    span.set_attribute('http.response.status_code', 200)"
)
#: name -> (setup run once per batch, outside the timing; statement timed)
CASES: dict[str, tuple[str, str]] = {
    "empty_loop": ("", "pass"),
    "empty_call": ("f = empty", "f()"),
    "wrapt_passthrough": ("w = wrapped_empty", "w()"),
    "pulsetrace_span": (
        "start_span = pulsetrace.start_span",
        f"with start_span('op', attributes={ATTRS}):\n    pass",
    ),
    "pulsetrace_span_set_attribute": (
        "start_span = pulsetrace.start_span",
        f"with start_span('op') as span:\n{SET3}",
    ),
    # The kill switch (APM_ENABLED=false): the same call on a tracer that is off.
    "pulsetrace_span_disabled": (
        "start_span = disabled_start_span",
        f"with start_span('op', attributes={ATTRS}):\n    pass",
    ),
    "otel_sdk_span": (
        "start = otel_tracer.start_as_current_span",
        f"with start('op', attributes={ATTRS}):\n    pass",
    ),
    "histogram_record": ("rec = histogram.record", "rec(_v)"),
}
CONFIG_SHOWN = (  # the buffer settings reported (those this build has)
    "sample_rate",
    "intake_queue_size",
    "max_open_traces",
    "max_spans_per_trace",
    "export_queue_size",
    "worker_interval_ms",
)
MODES = {  # rounds per process, processes, target duration of one batch (ms)
    "quick": (7, 1, 100.0),
    "full": (7, 3, 500.0),
}

Batch = Callable[[range, list[int], Callable[[], int]], int]


#: Environment variables that would change what is measured (kill switches, samplers
#: of pulsetrace or of the OpenTelemetry SDK); removed before either is imported.
SCRUBBED_ENV = (
    "APM_ENABLED",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


def scrub_env() -> list[str]:
    """Remove SCRUBBED_ENV from this process's environment; returns those that were set."""
    return [name for name in SCRUBBED_ENV if os.environ.pop(name, None) is not None]


class Collected(logging.Handler):
    """Keeps the log records of a third-party library (the OpenTelemetry SDK)
    for the report, instead of letting them through to stderr in the middle
    of it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        self.messages[text] = self.messages.get(text, 0) + 1


def empty() -> None:
    pass


def compile_batch(setup: str, stmt: str, env: dict[str, Any]) -> Batch:
    """A function running ``stmt`` len(reps) * POOL times; returns elapsed ns."""
    body = "\n".join("            " + line for line in stmt.splitlines())
    src = (
        "def _batch(_reps, _pool, _timer):\n"
        f"    {setup or 'pass'}\n"
        "    _t0 = _timer()\n"
        "    for _r in _reps:\n"
        "        for _v in _pool:\n"
        f"{body}\n"
        "    _t1 = _timer()\n"
        "    return _t1 - _t0\n"
    )
    namespace = dict(env)
    exec(compile(src, "<batch>", "exec"), namespace)
    fn: Batch = namespace["_batch"]
    return fn


def build_env() -> tuple[dict[str, Any], dict[str, Callable[[], object]], dict[str, Any]]:
    """The objects the statements use, the per-case settle hooks, the versions."""
    import wrapt
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    import pulsetrace

    class DropExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    # Documented defaults (not the environment), traces kept: realistic buffers.
    cfg = pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)
    # Kept traces go to the export queue as with an exporter set (nothing
    # drains it: full, it drops and counts, as with a stuck exporter).
    pulsetrace._runtime.tracer().exporting = True
    processor = BatchSpanProcessor(DropExporter())
    provider = TracerProvider()  # never made the global provider
    provider.add_span_processor(processor)
    env = {
        "pulsetrace": pulsetrace,
        "empty": empty,
        "wrapped_empty": wrapt.FunctionWrapper(
            empty, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
        ),
        "otel_tracer": provider.get_tracer("pulsetrace-bench"),
        "histogram": pulsetrace.Histogram(significant_digits=2),
        "disabled_start_span": disabled_tracer(cfg).start_span,
    }
    # Run after a case's batch, untimed: background work it queued (OTel's export
    # thread wants the GIL; pulsetrace's buffered spans) is not billed to the next case.
    settle = {
        "otel_sdk_span": lambda: processor.force_flush(),
        "pulsetrace_span": lambda: pulsetrace.flush(1.0),
        "pulsetrace_span_set_attribute": lambda: pulsetrace.flush(1.0),
    }
    versions = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "pulsetrace": pulsetrace.__version__,
        "opentelemetry-sdk": metadata.version("opentelemetry-sdk"),
        "opentelemetry-api": metadata.version("opentelemetry-api"),
        "wrapt": metadata.version("wrapt"),
    }
    env["_config"] = cfg
    return env, settle, versions


def disabled_tracer(cfg: Any) -> Any:
    """A second tracer, switched off (APM_ENABLED=false)."""
    import pulsetrace

    t = pulsetrace._native.Tracer(contextvars.ContextVar("off", default=None))
    t.configure(cfg.replace(enabled=False))
    return t


def timed(fn: Batch, n: int, pool: list[int]) -> int:
    gc.disable()
    try:
        return fn(range(n // POOL), pool, time.perf_counter_ns)
    finally:
        gc.enable()


def calibrate(fn: Batch, pool: list[int], target_ns: float) -> int:
    """Calls per batch (a multiple of POOL) so that a batch lasts about target_ns."""
    n = POOL
    while True:
        elapsed = max(timed(fn, n, pool), 1)
        if elapsed * 20 >= target_ns or n >= 1 << 28:
            break
        n *= 4
    return max(POOL, round(target_ns * n / elapsed / POOL) * POOL)


def measure(rounds: int, batch_ms: float) -> dict[str, Any]:
    """Run every case ``rounds`` times, interleaved, in this process."""
    scrubbed = scrub_env()
    third_party = Collected()
    otel_logger = logging.getLogger("opentelemetry")
    otel_logger.addHandler(third_party)
    otel_logger.propagate = False
    import pulsetrace

    env, settle, versions = build_env()
    cfg = env.pop("_config")
    rng = random.Random(42)  # log-uniform latencies, 1 us .. 1 s
    pool = [int(10 ** rng.uniform(3, 9)) for _ in range(POOL)]
    fns = {name: compile_batch(setup, stmt, env) for name, (setup, stmt) in CASES.items()}
    sizes: dict[str, int] = {}
    for name, fn in fns.items():  # calibrate, then one untimed warm-up batch
        sizes[name] = calibrate(fn, pool, batch_ms * 1e6)
        timed(fn, sizes[name], pool)
        settle.get(name, lambda: None)()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    cpu_samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    attempted = 0
    drops: dict[str, int] = {}  # spans_dropped_* counters, deltas over the timed batches
    load_start = os.getloadavg()
    for r in range(rounds):
        gc.collect()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before = pulsetrace.counters() if name.startswith("pulsetrace") else None
            cpu0 = time.process_time_ns()
            elapsed = timed(fns[name], sizes[name], pool)
            settle.get(name, lambda: None)()
            # CPU of every thread of the process, the batch's background work
            # (pulsetrace's core worker, OTel's export thread) and the settle
            # that finishes it included.
            cpu_samples[name].append((time.process_time_ns() - cpu0) / sizes[name])
            samples[name].append(elapsed / sizes[name])
            if before is not None:
                after = pulsetrace.counters()
                attempted += sizes[name]
                for key, value in after.items():
                    if key.startswith("spans_dropped_"):
                        drops[key] = drops.get(key, 0) + value - before.get(key, 0)
    return {
        "versions": versions,
        "pulsetrace_config": {k: getattr(cfg, k) for k in CONFIG_SHOWN if hasattr(cfg, k)},
        "cases": {
            name: {"n": sizes[name], "samples": samples[name], "cpu_samples": cpu_samples[name]}
            for name in names
        },
        "counters": pulsetrace.counters(),
        "env_scrubbed": scrubbed,
        "spans_timed": attempted,
        "span_drops_timed": drops,
        "loadavg": [load_start, os.getloadavg()],
        "third_party_log": third_party.messages,
    }


def run_processes(processes: int, rounds: int, batch_ms: float) -> list[dict[str, Any]]:
    """Re-invoke this script ``processes`` times (fresh interpreters), collect results."""
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(processes):
            out = Path(tmp) / f"part{i}.json"
            cmd = [sys.executable, __file__, "--worker", str(out)]
            cmd += ["--rounds", str(rounds), "--batch-ms", str(batch_ms)]
            print(f"  process {i + 1}/{processes} ...", flush=True)
            subprocess.run(cmd, check=True)
            parts.append(json.loads(out.read_text()))
    return parts


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write figures")
    ap.add_argument("--rounds", type=int, help="rounds per process (overrides the mode)")
    ap.add_argument("--processes", type=int, help="processes (overrides the mode)")
    ap.add_argument("--batch-ms", type=float, help="target batch duration (overrides the mode)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode_name = args.mode or "quick"
    d_rounds, d_procs, d_batch = MODES[mode_name]
    rounds = args.rounds or d_rounds
    processes = args.processes or d_procs
    batch_ms = args.batch_ms or d_batch

    if args.worker is not None:  # a child of run_processes
        args.worker.write_text(json.dumps(measure(rounds, batch_ms)))
        return 0

    t0 = time.monotonic()
    print(
        f"pulsetrace micro-benchmarks, {mode_name} mode: {processes} process(es) x "
        f"{rounds} rounds, ~{batch_ms:g} ms per batch, {os.cpu_count()} CPUs",
        flush=True,
    )
    if processes == 1:
        parts = [measure(rounds, batch_ms)]
    else:
        parts = run_processes(processes, rounds, batch_ms)
    result = summarize(parts)
    result.update(
        mode=mode_name,
        rounds_per_process=rounds,
        processes=processes,
        batch_ms=batch_ms,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        wall_seconds=round(time.monotonic() - t0, 2),
    )
    print_report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures written to {args.json} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
