"""The instrumented process the deploy tests scrape: a small Flask app run
under ``pulsetrace-run`` with ``PROMETHEUS_ENABLED=true``.

``python stack_app.py <port>`` serves it on 127.0.0.1 and prints
``ready <metrics address>`` once listening. Its routes make every family
the deploy configuration reads: server requests (``/orders/<id>``, a
failing ``/fail``), an SQL query (SQLite), an outbound HTTP call (to its
own ``/orders/1``), business metrics (messages delivered and failed,
an external API call, an auth event, a contact, a template).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.request
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask

import pulsetrace.metrics
from pulsetrace import prometheus

app = Flask(__name__)
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 0


@app.route("/orders/<int:order_id>")
def order(order_id: int) -> str:
    return f"order {order_id}"


@app.route("/query")
def query() -> str:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO orders (total) VALUES (12.5)")
    (count,) = db.execute("SELECT count(*) FROM orders WHERE total > 1").fetchone()
    db.close()
    return str(count)


@app.route("/call")
def call() -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/orders/1", timeout=5) as r:
        return r.read().decode()


@app.route("/fail")
def fail() -> str:
    raise RuntimeError("the deploy tests' failing request")


@app.route("/business")
def business() -> str:
    pulsetrace.metrics.record_message("delivered", "text", campaign_id="c1", company_id="co1")
    pulsetrace.metrics.record_message("failed", "text", campaign_id="c1", company_id="co1")
    pulsetrace.metrics.record_message("sent", "text", campaign_id="c1", company_id="co1")
    pulsetrace.metrics.record_api_call("evolution", "send", 0.05, ok=False)
    pulsetrace.metrics.record_api_call("evolution", "send", 0.02, ok=True)
    pulsetrace.metrics.record_auth_event("login", success=False)
    pulsetrace.metrics.record_contacts(1, company_id="co1")
    pulsetrace.metrics.record_template_use("welcome")
    return "ok"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = make_server("127.0.0.1", PORT, app, server_class=_Server, handler_class=_QuietHandler)
    metrics = prometheus.start_server(os.environ.get("PULSETRACE_METRICS_ADDR", ""))
    print("ready", metrics and f"{metrics[0]}:{metrics[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
