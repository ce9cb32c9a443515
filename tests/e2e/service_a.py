"""Service A of the cross-service end-to-end test: a Flask app served by
``pulsetrace-run gunicorn -w 2 service_a:app``. It does not import pulsetrace:
the runner instruments it.

``GET /orders/<int:order_id>`` reads the order from PostgreSQL (psycopg 3),
its status from Redis (redis-py) and the item's stock from service B over
HTTP (requests). Where they are comes from the environment (``E2E_*``).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import psycopg
import redis
import requests
from flask import Flask, jsonify

#: A ``%s`` placeholder (kept as it is in ``db.query.text``) and a literal
#: (replaced by ``?``).
ORDER_SQL = "SELECT id, item, quantity FROM e2e_orders WHERE id = %s AND status <> 'cancelled'"

app = Flask(__name__)
_db: Optional[psycopg.Connection[Any]] = None
_cache: Optional[redis.Redis] = None


def db() -> psycopg.Connection[Any]:
    """One connection per worker, made in the worker (after gunicorn forked it)."""
    global _db
    if _db is None:
        _db = psycopg.connect(
            host=os.environ["E2E_PG_HOST"],
            port=int(os.environ["E2E_PG_PORT"]),
            user=os.environ["E2E_PG_USER"],
            dbname=os.environ["E2E_PG_DBNAME"],
            autocommit=True,
        )
    return _db


def cache() -> redis.Redis:
    global _cache
    if _cache is None:
        _cache = redis.Redis(
            host=os.environ["E2E_REDIS_HOST"], port=int(os.environ["E2E_REDIS_PORT"])
        )
    return _cache


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> Any:
    row = db().execute(ORDER_SQL, (order_id,)).fetchone()
    if row is None:
        return jsonify(error="no such order"), 404
    status = cache().get(f"order:{order_id}")
    reply = requests.get(
        f"http://127.0.0.1:{os.environ['E2E_SERVICE_B_PORT']}/inventory/{row[1]}", timeout=5
    )
    reply.raise_for_status()
    stock = reply.json()
    return jsonify(
        id=row[0],
        item=row[1],
        quantity=row[2],
        status=None if status is None else status.decode(),
        stock=stock["stock"],
        pid=os.getpid(),
        inventory_pid=stock["pid"],
    )
