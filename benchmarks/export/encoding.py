"""Worker of run.py, part 1: OTLP encoding throughput, pulsetrace's native
encoder vs opentelemetry-exporter-otlp-proto-common, on the same spans, in
one process, interleaved rounds.

    python benchmarks/export/encoding.py --rounds 9 --sample-ms 25 --out /tmp/enc.json

Both sides get one batch of BATCH spans of the same shape (TRACE below, repeated):
the same names, kinds and parent/child structure, 5 attributes per span (3
strings, 2 ints), one event (with 2 attributes) on every tenth span. pulsetrace's
batch is ``tracer().drain_batch(BATCH)`` and one sample is ``batch.otlp()`` called
k times on that Batch; OpenTelemetry's is the SDK's ReadableSpans (TracerProvider
+ SimpleSpanProcessor into an InMemorySpanExporter) and one sample is
``encode_spans(spans).SerializePartialToString()`` called k times.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import stats

BATCH = 512
#: One trace: (name, index of the parent in this list or None, kind).
TRACE = (
    ("GET /users/{id}", None, "server"),
    ("auth.check", 0, "internal"),
    ("SELECT users", 1, "client"),
    ("cache.get", 0, "client"),
    ("SELECT orders", 0, "client"),
    ("render", 0, "internal"),
    ("template.load", 5, "internal"),
    ("POST /billing", 0, "client"),
)
EVENT_EVERY = 10


def attributes(i: int) -> dict[str, Any]:
    """The 5 attributes of span number ``i`` (3 strings, 2 ints)."""
    return {
        "http.request.method": "GET",
        "http.route": "/users/{id}",
        "server.address": "users.internal",
        "http.response.status_code": 200,
        "app.user.id": 100_000 + i,
    }


EVENT = ("cache.miss", {"cache.key": "user:42", "attempt": 1})


def pulsetrace_batch() -> Any:
    """BATCH spans recorded by pulsetrace, drained as one Batch."""
    import pulsetrace
    from pulsetrace import _runtime

    # Documented defaults (not the environment), every trace kept.
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0, service_name="export-bench")
    tracer = _runtime.tracer()
    tracer.exporting = True  # queue kept traces with no exporter set: drained below
    i = 0
    while i < BATCH:
        spans: list[Any] = []
        for name, parent, kind in TRACE:
            p = spans[parent] if parent is not None else None
            s = tracer.start_span(name, kind=kind, attributes=attributes(i), parent=p)
            if i % EVENT_EVERY == 0:
                s.add_event(*EVENT)
            spans.append(s)
            i += 1
        for s in reversed(spans):
            s.end()
    tracer.process(True)
    batch = tracer.drain_batch(BATCH)
    if batch is None or len(batch) != BATCH:
        raise RuntimeError(f"drain_batch gave {0 if batch is None else len(batch)} spans")
    return batch


def otel_spans() -> list[Any]:
    """The same BATCH spans recorded by the OpenTelemetry SDK, as ReadableSpans."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    kinds = {
        "server": trace.SpanKind.SERVER,
        "client": trace.SpanKind.CLIENT,
        "internal": trace.SpanKind.INTERNAL,
    }
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "export-bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("export-bench")
    i = 0
    while i < BATCH:
        spans: list[Any] = []
        for name, parent, kind in TRACE:
            ctx = trace.set_span_in_context(spans[parent]) if parent is not None else None
            s = tracer.start_span(name, context=ctx, kind=kinds[kind], attributes=attributes(i))
            if i % EVENT_EVERY == 0:
                s.add_event(*EVENT)
            spans.append(s)
            i += 1
        for s in reversed(spans):
            s.end()
    out = list(exporter.get_finished_spans())
    if len(out) != BATCH:
        raise RuntimeError(f"the in-memory exporter has {len(out)} spans, not {BATCH}")
    return out


def describe(payload: bytes) -> dict[str, Any]:
    """What an ExportTraceServiceRequest holds, to check both sides encode the same."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest.FromString(payload)
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return {
        "bytes": len(payload),
        "spans": len(spans),
        "traces": len({s.trace_id for s in spans}),
        "with_parent": sum(1 for s in spans if s.parent_span_id),
        "attributes": sum(len(s.attributes) for s in spans),
        "events": sum(len(s.events) for s in spans),
        "names": dict(sorted(collections.Counter(s.name for s in spans).items())),
        "resource_attributes": sum(len(rs.resource.attributes) for rs in req.resource_spans),
    }


def timed(fn: Callable[[], object], reps: int) -> tuple[int, int]:
    """(wall ns, CPU ns of this thread) of ``reps`` calls of ``fn``, GC off."""
    gc.disable()
    try:
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            fn()
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        return t1 - t0, c1 - c0
    finally:
        gc.enable()


def calibrate(fn: Callable[[], object], target_ns: float) -> int:
    """Repetitions so that one sample takes about target_ns of CPU time (at least 1).
    CPU time, not wall: a preemption during calibration must not shrink the samples."""
    reps = 1
    while True:
        elapsed = min(timed(fn, reps)[1] for _ in range(2))
        if elapsed >= target_ns / 4 or reps >= 1 << 20:
            return max(1, round(reps * target_ns / max(elapsed, 1)))
        reps *= 4


def measure(rounds: int, sample_ms: float) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    batch = pulsetrace_batch()
    spans = otel_spans()
    cases: dict[str, Callable[[], bytes]] = {
        "pulsetrace": batch.otlp,
        "opentelemetry": lambda: encode_spans(spans).SerializePartialToString(),
    }
    shapes = {name: describe(fn()) for name, fn in cases.items()}

    target_ns = sample_ms * 1e6
    for fn in cases.values():  # warm-up
        timed(fn, 3)
    reps = {name: calibrate(fn, target_ns) for name, fn in cases.items()}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    for r in range(rounds):
        for name in order[r % 2 :] + order[: r % 2]:  # the first case alternates
            wall_ns, cpu_ns = timed(cases[name], reps[name])
            wall[name].append(wall_ns / reps[name] / BATCH)
            cpu[name].append(cpu_ns / reps[name] / BATCH)
        gc.collect()

    def per_round(samples: dict[str, list[float]]) -> list[float]:
        return [o / p for p, o in zip(samples["pulsetrace"], samples["opentelemetry"])]

    return {
        "batch_spans": BATCH,
        "rounds": rounds,
        "sample_ms": sample_ms,
        "reps_per_sample": reps,
        "cpu_ns_per_span": {name: stats(v) for name, v in cpu.items()},
        "wall_ns_per_span": {name: stats(v) for name, v in wall.items()},
        "cpu_ratio_per_round": stats(per_round(cpu)),
        "wall_ratio_per_round": stats(per_round(wall)),
        "payload": shapes,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--sample-ms", type=float, default=25.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.write_text(json.dumps(measure(args.rounds, args.sample_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
