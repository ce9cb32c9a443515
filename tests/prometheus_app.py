"""A small Flask app for the Prometheus tests, run under ``pulsetrace-run``
with ``PROMETHEUS_ENABLED=true`` (pulsetrace serves its metrics on
``PULSETRACE_METRICS_ADDR``).

``python prometheus_app.py <port>`` serves it with a threaded wsgiref
server on 127.0.0.1 and prints ``ready <metrics address>`` once listening.
``/measure?v=`` records v in a custom histogram. ``/slow`` sleeps
``SLOW_S`` and returns its trace id; ``/_truth`` returns,
for each ``/slow``, how long it really slept and the duration of its SERVER
span as exported (every trace is kept with ``PULSETRACE_SAMPLE_RATE=1``),
in seconds, so a test can compare the metrics with the truth.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, jsonify, request

import pulsetrace
import pulsetrace.metrics
from pulsetrace import prometheus

SLOW_S = 0.2

exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)

app = Flask(__name__)
_lock = threading.Lock()
_slept: dict[str, float] = {}


@app.route("/slow")
def slow():
    t0 = time.perf_counter()
    time.sleep(SLOW_S)
    slept = time.perf_counter() - t0
    span = pulsetrace.current_span()
    trace_id = f"{span.trace_id:032x}" if span is not None else ""
    with _lock:
        _slept[trace_id] = slept
    return jsonify(trace_id=trace_id)


#: ``/measure?v=<seconds>`` observes v: a custom histogram for the scrape test.
measured = pulsetrace.metrics.create_custom_histogram(
    "app_measured_seconds", "values the tests send", ["source"]
)


@app.route("/measure")
def measure():
    measured.observe(float(request.args["v"]), source="test")
    return "ok"


@app.route("/fast")
def fast():
    return "ok"


@app.route("/_truth")
def truth():
    pulsetrace.flush()
    spans = {
        f"{s.trace_id:032x}": s.duration_ns / 1e9
        for s in exporter.spans()
        if s.name == "GET /slow" and s.kind == "server"
    }
    with _lock:
        return jsonify(slept=dict(_slept), spans=spans)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = make_server(
        "127.0.0.1", int(sys.argv[1]), app, server_class=_Server, handler_class=_QuietHandler
    )
    # Idempotent: the address of the server pulsetrace.auto started from
    # PROMETHEUS_ENABLED and PULSETRACE_METRICS_ADDR (None if it could not).
    metrics = prometheus.start_server(os.environ.get("PULSETRACE_METRICS_ADDR", ""))
    print("ready", metrics and f"{metrics[0]}:{metrics[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
