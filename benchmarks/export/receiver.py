"""An OTLP/gRPC trace receiver for run.py, in its own process: it parses each
ExportTraceServiceRequest, counts its spans and drops it (nothing recorded).

    python benchmarks/export/receiver.py [--port 0]

Prints ``port N`` once listening on 127.0.0.1. Then, for every line read on
stdin, prints ``spans S requests R bytes B`` (running totals); stops at EOF.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent import futures
from typing import Any, Optional

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0
        self.bytes = 0

    def Export(self, request: Any, context: Any) -> Any:
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        size = request.ByteSize()
        with self.lock:
            self.spans += n
            self.requests += 1
            self.bytes += size
        return trace_service_pb2.ExportTraceServiceResponse()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    servicer = CountingServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"port {port}", flush=True)
    for _ in sys.stdin:
        with servicer.lock:
            line = f"spans {servicer.spans} requests {servicer.requests} bytes {servicer.bytes}"
        print(line, flush=True)
    server.stop(1).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
