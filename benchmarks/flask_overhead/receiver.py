#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver that accepts every export and discards it.

    python receiver.py [--port 0] [--stats PATH]

Binds 127.0.0.1 only, prints ``READY <port>`` once it serves, and counts what
it received: after every Export it rewrites ``PATH`` (atomically) with
``{"requests": N, "spans": M}`` so ``run.py`` can check that OpenTelemetry's
spans actually left the application. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any, Optional

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, stats_path: Optional[str]) -> None:
        self.stats_path = stats_path
        self.lock = threading.Lock()
        self.requests = 0
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.requests += 1
            self.spans += n
            self._write()
        return trace_service_pb2.ExportTraceServiceResponse()

    def _write(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"requests": self.requests, "spans": self.spans}, f)
        os.replace(tmp, self.stats_path)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    ap.add_argument("--stats", default=None, help="JSON file rewritten after every export")
    args = ap.parse_args(argv)

    receiver = Receiver(args.stats)
    receiver._write()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        sys.stderr.write(f"receiver: cannot bind 127.0.0.1:{args.port}\n")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"READY {port}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop(grace=1.0).wait()
        with receiver.lock:
            receiver._write()
        print(f"receiver: {receiver.requests} export requests, {receiver.spans} spans", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
