"""Worker of run.py, part 2: the total CPU time of one tracer per exported span
(create, record, decide, encode, send), in a process of its own.

    python benchmarks/export/cpu_worker.py --side pulsetrace|opentelemetry \\
        --port PORT --spans N --out /tmp/side.json

Traces of 1 root (SERVER) + 2 children (CLIENT), 3 attributes per span, sent
over OTLP/gRPC to the receiver on 127.0.0.1:PORT. Order of events:

1. set-up (imports, tracer, exporter), then a warm-up of WARMUP spans, flushed
   and sent (so the channel is connected and lazily built state exists);
2. the idle baseline: the same loop, the same attribute dicts built, no span;
3. the measured part: N spans, then a flush that returns once everything was
   sent and answered.

CPU time is ``time.process_time()`` (user + system of every thread of the
process: the application thread, pulsetrace's native worker and its export
thread, the SDK's export thread, gRPC's own threads). GC stays on, as in an
application. The buffers are sized to hold all N spans, so nothing is dropped:
the figure is the cost of spans that were exported.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

WARMUP = 3_000
SPANS_PER_TRACE = 3
FLUSH_TIMEOUT_S = 300.0


def idle_loop(traces: int) -> None:
    """The span loop without spans: the same iterations and attribute dicts."""
    for i in range(traces):
        _ = {
            "http.request.method": "GET",
            "http.route": "/users/{id}",
            "http.response.status_code": 200,
        }
        _ = {"db.system": "postgresql", "db.operation": "SELECT", "db.rows": i & 7}
        _ = {"cache.system": "redis", "cache.key": "user:42", "cache.hits": 1}


def pulsetrace_side(endpoint: str, capacity: int) -> dict[str, Any]:
    import pulsetrace
    from pulsetrace.export.otlp import config_from_env
    from pulsetrace.export.otlp_exporter import OtlpSpanExporter

    # Documented defaults (not the environment), every trace kept, the export
    # queues large enough for the whole run.
    cfg = pulsetrace.configure(
        pulsetrace.Config(),
        sample_rate=1.0,
        service_name="export-bench",
        export_queue_size=max(pulsetrace.Config().export_queue_size, capacity),
    )
    otlp = config_from_env(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    )
    exporter = OtlpSpanExporter(otlp)
    pulsetrace.add_exporter(exporter)
    start = pulsetrace.start_span

    def loop(traces: int) -> None:
        for i in range(traces):
            with start(
                "GET /users/{id}",
                kind="server",
                attributes={
                    "http.request.method": "GET",
                    "http.route": "/users/{id}",
                    "http.response.status_code": 200,
                },
            ):
                with start(
                    "SELECT users",
                    kind="client",
                    attributes={
                        "db.system": "postgresql",
                        "db.operation": "SELECT",
                        "db.rows": i & 7,
                    },
                ):
                    pass
                with start(
                    "cache.get",
                    kind="client",
                    attributes={"cache.system": "redis", "cache.key": "user:42", "cache.hits": 1},
                ):
                    pass

    def flush() -> bool:
        return bool(pulsetrace.flush(FLUSH_TIMEOUT_S))

    def exported() -> int:
        return int(exporter.counters()["otlp_spans_sent"])

    def finish() -> dict[str, Any]:
        ok = pulsetrace.shutdown(30.0)
        counters = pulsetrace.counters()
        return {"shutdown_ok": ok, "counters": counters}

    return {
        "loop": loop,
        "flush": flush,
        "exported": exported,
        "finish": finish,
        "settings": {
            "sample_rate": cfg.sample_rate,
            "export_queue_size": cfg.export_queue_size,
            "export_interval_ms": cfg.export_interval_ms,
            "worker_interval_ms": cfg.worker_interval_ms,
            "exporter": "pulsetrace.export.otlp_exporter.OtlpSpanExporter",
            "protocol": otlp.protocol,
            "endpoint": otlp.endpoint,
            "compression": otlp.compression,
        },
    }


def otel_side(endpoint: str, capacity: int) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.trace import SpanKind

    class CountingExporter(OTLPSpanExporter):
        """The gRPC exporter, counting the spans it delivered (one add per batch)."""

        sent = 0

        def export(self, spans: Any, *args: Any, **kwargs: Any) -> Any:
            result = super().export(spans, *args, **kwargs)
            if result is SpanExportResult.SUCCESS:
                self.sent += len(spans)
            return result

    exporter = CountingExporter(endpoint=endpoint.split("://", 1)[1], insecure=True)
    # The SDK's defaults (batches of 512, every 5 s or as soon as 512 are queued),
    # but a queue that holds the whole run.
    processor = BatchSpanProcessor(
        exporter, max_queue_size=capacity, max_export_batch_size=512, schedule_delay_millis=5000
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "export-bench"}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("export-bench")  # never made the global provider
    start = tracer.start_as_current_span
    server, client = SpanKind.SERVER, SpanKind.CLIENT

    def loop(traces: int) -> None:
        for i in range(traces):
            with start(
                "GET /users/{id}",
                kind=server,
                attributes={
                    "http.request.method": "GET",
                    "http.route": "/users/{id}",
                    "http.response.status_code": 200,
                },
            ):
                with start(
                    "SELECT users",
                    kind=client,
                    attributes={
                        "db.system": "postgresql",
                        "db.operation": "SELECT",
                        "db.rows": i & 7,
                    },
                ):
                    pass
                with start(
                    "cache.get",
                    kind=client,
                    attributes={"cache.system": "redis", "cache.key": "user:42", "cache.hits": 1},
                ):
                    pass

    def flush() -> bool:
        return bool(provider.force_flush(int(FLUSH_TIMEOUT_S * 1000)))

    def exported() -> int:
        return exporter.sent

    def finish() -> dict[str, Any]:
        provider.shutdown()
        return {"shutdown_ok": True, "counters": {"spans_sent": exporter.sent}}

    return {
        "loop": loop,
        "flush": flush,
        "exported": exported,
        "finish": finish,
        "settings": {
            "sampler": "ParentBased(ALWAYS_ON) (the default)",
            "processor": "BatchSpanProcessor",
            "max_queue_size": capacity,
            "max_export_batch_size": 512,
            "schedule_delay_millis": 5000,
            "exporter": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter.OTLPSpanExporter",
            "endpoint": endpoint.split("://", 1)[1],
            "compression": "none",
        },
    }


def cpu_now() -> tuple[float, float, float, float]:
    """(process CPU s, user s, system s, wall s)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), ru.ru_utime, ru.ru_stime, time.monotonic()


def delta(a: tuple[float, ...], b: tuple[float, ...]) -> dict[str, float]:
    return {
        "cpu_s": b[0] - a[0],
        "user_s": b[1] - a[1],
        "system_s": b[2] - a[2],
        "wall_s": b[3] - a[3],
    }


def measure(side: str, port: int, spans: int) -> dict[str, Any]:
    traces = spans // SPANS_PER_TRACE
    spans = traces * SPANS_PER_TRACE
    endpoint = f"http://127.0.0.1:{port}"
    t_setup = time.monotonic()
    make: Callable[[str, int], dict[str, Any]] = (
        pulsetrace_side if side == "pulsetrace" else otel_side
    )
    s = make(endpoint, spans + WARMUP + 1024)
    loop, flush, exported = s["loop"], s["flush"], s["exported"]

    loop(WARMUP // SPANS_PER_TRACE)
    warm_ok = flush()
    warm_sent = exported()
    setup_s = time.monotonic() - t_setup

    gc.collect()
    a = cpu_now()
    idle_loop(traces)
    b = cpu_now()
    baseline = delta(a, b)

    gc.collect()
    a = cpu_now()
    loop(traces)
    b = cpu_now()
    flushed = flush()
    c = cpu_now()
    sent = exported() - warm_sent
    end = s["finish"]()

    total = delta(a, c)
    net_cpu = total["cpu_s"] - baseline["cpu_s"]
    return {
        "side": side,
        "spans": spans,
        "traces": traces,
        "warmup_spans": (WARMUP // SPANS_PER_TRACE) * SPANS_PER_TRACE,
        "warmup_flush_ok": warm_ok,
        "warmup_sent": warm_sent,
        "setup_s": setup_s,
        "baseline": baseline,
        "loop": delta(a, b),
        "flush": delta(b, c),
        "total": total,
        "flush_ok": flushed,
        "sent_by_exporter": sent,
        "cpu_us_per_span": net_cpu / spans * 1e6,
        "settings": s["settings"],
        **end,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--side", choices=("pulsetrace", "opentelemetry"), required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spans", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = measure(args.side, args.port, args.spans)
    args.out.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
