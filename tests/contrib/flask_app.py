"""A Flask app for the integration tests, also served by a real gunicorn.

``/_spans`` flushes pulsetrace and returns what this process exported, with
its pid, so a test can see each worker's own spans.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, jsonify

import pulsetrace

exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)

app = Flask(__name__)


@app.route("/users/<int:user_id>")
def user(user_id: int):
    with pulsetrace.start_span("load user", kind="internal"):
        pass
    return jsonify(id=user_id, pid=os.getpid())


@app.route("/boom")
def boom():
    raise RuntimeError("view failed")


@app.route("/missing")
def missing():
    return "no", 404


@app.route("/stream")
def stream():
    def body():
        for i in range(3):
            time.sleep(0.05)
            yield f"chunk {i}\n"

    return Response(body(), mimetype="text/plain")


@app.route("/_spans")
def spans():
    pulsetrace.flush()
    return jsonify(
        pid=os.getpid(),
        spans=[
            {"name": s.name, "trace_id": f"{s.trace_id:032x}", "span_id": f"{s.span_id:016x}"}
            for s in exporter.spans()
        ],
    )
