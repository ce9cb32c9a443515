"""The application under test: a small Flask app served by gunicorn.

    gunicorn -w 1 -b 127.0.0.1:8000 --chdir benchmarks/flask_overhead app:app

Routes (what ``run.py`` drives):

- ``/json``: a small JSON dict, Flask alone.
- ``/sqlite``: one ``SELECT`` of a few rows through ``sqlite3`` (an in-memory
  database created when the app is imported, i.e. in the worker).
- ``/sqlite_connect``: open a connection to a SQLite file (created when the
  app is imported), one ``SELECT`` of a few rows, close: what an app without
  a connection pool does on every request.
- ``/outbound``: one ``requests.get`` to ``BENCH_OUTBOUND_URL`` (a tiny local
  server that ``run.py`` starts; a new connection per call, as a bare
  ``requests.get`` does).
- ``/redis``: one ``GET`` of the key ``bench:key`` with redis-py, against the
  ``redis-server`` that ``run.py`` starts (``BENCH_REDIS_HOST``,
  ``BENCH_REDIS_PORT``) and in which it sets that key; one client per worker, so
  its connection is reused from request to request.
- ``/_bench/info``: not measured; tells ``run.py`` which agent instrumented this
  process (and pulsetrace's counters), so a configuration that silently ran
  uninstrumented is caught.

The app knows nothing of any agent: it is instrumented from outside
(``pulsetrace-run`` or ``opentelemetry-instrument``), like a real deployment.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
from typing import Any

from flask import Flask, jsonify

try:
    import requests
except ImportError:  # run.py skips /outbound then
    requests = None  # type: ignore[assignment]

try:
    import redis
except ImportError:  # run.py skips /redis then
    redis = None  # type: ignore[assignment]

OUTBOUND_URL = os.environ.get("BENCH_OUTBOUND_URL", "http://127.0.0.1:1/")
REDIS_KEY = "bench:key"

app = Flask(__name__)

# BENCH_IDLE_THREAD=1 (run.py's none_threaded): one thread that only waits. A
# worker process with a second thread pays for it on every request, whatever
# that thread does: glibc's malloc then locks its arena, and blocking system
# calls become cancellation points. Every agent with a thread of its own pays
# this too; the configuration shows how much of a loss it is.
if os.environ.get("BENCH_IDLE_THREAD") == "1":
    threading.Thread(target=threading.Event().wait, name="bench-idle", daemon=True).start()

_db = sqlite3.connect(":memory:", check_same_thread=False)
_db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
_db.executemany(
    "INSERT INTO items (id, name, price) VALUES (?, ?, ?)",
    [(i, f"item-{i}", i * 1.25) for i in range(1, 21)],
)
_db.commit()

# A file for /sqlite_connect (one per worker process: the app is imported there).
_DB_FILE = os.path.join(tempfile.mkdtemp(prefix="flask-overhead-"), "items.db")
with sqlite3.connect(_DB_FILE) as _file_db:
    _file_db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
    _file_db.executemany(
        "INSERT INTO items (id, name, price) VALUES (?, ?, ?)",
        [(i, f"item-{i}", i * 1.25) for i in range(1, 21)],
    )
_file_db.close()

# Made in the worker (the app is imported there); connects at the first command.
_redis = (
    redis.Redis(
        host=os.environ.get("BENCH_REDIS_HOST", "127.0.0.1"),
        port=int(os.environ["BENCH_REDIS_PORT"]),
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    if redis is not None and os.environ.get("BENCH_REDIS_PORT")
    else None
)


@app.get("/json")
def json_route() -> Any:
    return jsonify(status="ok", service="flask-overhead", items=[1, 2, 3], version=1)


@app.get("/sqlite")
def sqlite_route() -> Any:
    cur = _db.cursor()
    try:
        cur.execute("SELECT id, name, price FROM items WHERE id <= ? ORDER BY id", (5,))
        rows = cur.fetchall()
    finally:
        cur.close()
    return jsonify(rows=[{"id": r[0], "name": r[1], "price": r[2]} for r in rows])


@app.get("/sqlite_connect")
def sqlite_connect_route() -> Any:
    conn = sqlite3.connect(_DB_FILE)
    try:
        rows = conn.execute(
            "SELECT id, name, price FROM items WHERE id <= ? ORDER BY id", (5,)
        ).fetchall()
    finally:
        conn.close()
    return jsonify(rows=[{"id": r[0], "name": r[1], "price": r[2]} for r in rows])


@app.get("/outbound")
def outbound_route() -> Any:
    if requests is None:
        return jsonify(error="requests is not installed"), 500
    resp = requests.get(OUTBOUND_URL, timeout=5)
    return jsonify(upstream_status=resp.status_code, upstream_bytes=len(resp.content))


@app.get("/redis")
def redis_route() -> Any:
    if _redis is None:
        return jsonify(error="redis is not installed, or BENCH_REDIS_PORT is not set"), 500
    value = _redis.get(REDIS_KEY)
    return jsonify(key=REDIS_KEY, found=value is not None, value_bytes=len(value or b""))


def _describe(obj: Any) -> str:
    """Where a (possibly wrapped) callable or class comes from."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


@app.get("/_bench/info")
def info_route() -> Any:
    import flask

    out: dict[str, Any] = {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "app_class": f"{type(app).__module__}.{type(app).__qualname__}",
        "wrappers": {
            "flask.Flask.wsgi_app": _describe(getattr(flask.Flask, "wsgi_app", None)),
            "app.wsgi_app (instance)": _describe(vars(app).get("wsgi_app")),
            "sqlite3.connect": _describe(sqlite3.connect),
            "sqlite3.connection": _describe(_db),
            "requests.Session.send": _describe(
                getattr(getattr(requests, "Session", None), "send", None)
            ),
            "redis.Redis.execute_command": _describe(
                getattr(getattr(redis, "Redis", None), "execute_command", None)
            ),
        },
        "pulsetrace": None,
        "opentelemetry": None,
    }
    if "pulsetrace.auto" in sys.modules:
        import pulsetrace
        from pulsetrace import contrib

        cfg = pulsetrace.get_config()
        out["pulsetrace"] = {
            "enabled": cfg.enabled,
            "sample_rate": cfg.sample_rate,
            "export_queue_size": cfg.export_queue_size,
            "integrations": contrib.instrumented(),
            "exporters": [type(e).__name__ for e in pulsetrace._runtime.exporters()],
            "counters": pulsetrace.counters(),
            "operations": {op["name"]: op["count"] for op in pulsetrace.latency()},
        }
    if "opentelemetry.instrumentation.auto_instrumentation" in sys.modules or any(
        m.startswith("opentelemetry.instrumentation.") for m in sys.modules
    ):
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        out["opentelemetry"] = {
            "provider": _describe(provider),
            "instrumentations": sorted(
                m.split(".")[2]
                for m in sys.modules
                if m.startswith("opentelemetry.instrumentation.") and m.count(".") == 2
            ),
        }
    return jsonify(out)
