#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver that accepts every export and discards it.

    python receiver.py [--port 0] [--stats PATH]

Binds 127.0.0.1 only, prints ``READY <port>`` once it serves, and counts what
it received: after every Export it rewrites ``PATH`` (atomically) with
``{"requests": N, "spans": M, "by_root": {...}, "unattributed": K}`` so
``run.py`` can check that the spans actually left the application.

``by_root`` maps the name of a trace's root span (``GET /redis``: the server
span of a request) to ``{"traces": T, "spans": S}``, every span of the trace
counted under it, so ``S / T`` is the spans per request of that route. A span
whose root has not arrived (yet) is held by its trace id and counted once the
root comes, in whichever export; ``unattributed`` is how many are still held
(bounded: the oldest are given up, and stay counted there). At most
``MAX_ROOTS`` root names, the rest under ``(other)``. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections import OrderedDict
from concurrent import futures
from typing import Any, Optional

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

MAX_ROOTS = 64
#: Trace ids kept: children waiting for their root, roots that may still get children.
MAX_PENDING = 200_000
MAX_RECENT_ROOTS = 20_000


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, stats_path: Optional[str]) -> None:
        self.stats_path = stats_path
        self.lock = threading.Lock()
        self.requests = 0
        self.spans = 0
        self.by_root: dict[str, list[int]] = {}  # root name -> [traces, spans]
        self.pending: OrderedDict[bytes, int] = OrderedDict()  # trace id -> spans held
        self.recent: OrderedDict[bytes, str] = OrderedDict()  # trace id -> its root's key
        self.held = 0  # spans in pending, and given up

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        roots: dict[bytes, str] = {}
        children: dict[bytes, int] = {}
        n = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    n += 1
                    if span.parent_span_id:
                        children[span.trace_id] = children.get(span.trace_id, 0) + 1
                    else:
                        roots[span.trace_id] = span.name
        with self.lock:
            self.requests += 1
            self.spans += n
            self._attribute(roots, children)
            self._write()
        return trace_service_pb2.ExportTraceServiceResponse()

    def _attribute(self, roots: dict[bytes, str], children: dict[bytes, int]) -> None:
        for tid, name in roots.items():
            key = name if name in self.by_root or len(self.by_root) < MAX_ROOTS else "(other)"
            entry = self.by_root.setdefault(key, [0, 0])
            entry[0] += 1
            held = self.pending.pop(tid, 0)
            self.held -= held
            entry[1] += 1 + children.pop(tid, 0) + held
            self.recent[tid] = key
            if len(self.recent) > MAX_RECENT_ROOTS:
                self.recent.popitem(last=False)
        for tid, count in children.items():
            key = self.recent.get(tid)
            if key is not None:
                self.by_root[key][1] += count
                continue
            self.pending[tid] = self.pending.get(tid, 0) + count
            self.held += count
            if len(self.pending) > MAX_PENDING:
                self.pending.popitem(last=False)  # given up: stays in `held`

    def _write(self) -> None:
        if not self.stats_path:
            return
        stats = {
            "requests": self.requests,
            "spans": self.spans,
            "by_root": {k: {"traces": v[0], "spans": v[1]} for k, v in self.by_root.items()},
            "unattributed": self.held,
        }
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
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
