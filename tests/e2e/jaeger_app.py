"""The application of the Jaeger tests (test_jaeger.py): a Flask app served
by ``pulsetrace-run gunicorn -w 1 jaeger_app:app``. The runner instruments it.

- ``GET /orders/<int:order_id>`` reads the order from a SQLite file
  (``JAEGER_E2E_DB``, made by the test) and asks the stock service
  (``JAEGER_E2E_STOCK_URL``, a plain HTTP server of the test's) with
  requests; the reply says which ``traceparent`` the stock service got.
- ``GET /orders/<int:order_id>/refund`` reads the order, then fails (an
  unhandled exception: Flask answers 500).
- ``GET /health/counters``: ``pulsetrace.counters()`` of this worker (a
  ``/health`` path: pulsetrace makes no span for it).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import requests
from flask import Flask, abort, jsonify

ORDER_SQL = "SELECT item, quantity FROM orders WHERE id = ?"

app = Flask(__name__)


def read_order(order_id: int) -> tuple[str, int]:
    conn = sqlite3.connect(os.environ["JAEGER_E2E_DB"])
    try:
        row = conn.execute(ORDER_SQL, (order_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        abort(404)
    return row[0], row[1]


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> Any:
    item, quantity = read_order(order_id)
    reply = requests.get(f"{os.environ['JAEGER_E2E_STOCK_URL']}/stock/{item}", timeout=5)
    reply.raise_for_status()
    stock = reply.json()
    return jsonify(
        item=item, quantity=quantity, stock=stock["stock"], traceparent=stock["traceparent"]
    )


@app.get("/orders/<int:order_id>/refund")
def refund(order_id: int) -> Any:
    read_order(order_id)
    raise RuntimeError("refunds are closed")


@app.get("/health/counters")
def counters() -> Any:
    import pulsetrace

    return jsonify(pulsetrace.counters())
