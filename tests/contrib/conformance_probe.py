"""Run by test_conformance.py in a fresh interpreter: one integration, one
scenario; prints one JSON object (what happened) on its last line.

    python conformance_probe.py <integration> <scenario>

Scenarios: ``before_import`` (instrumented, then the library imported),
``after_import`` (imported, instrumented, patched again, uninstrumented),
``toggled`` (instrumented while the environment switches it off).
Servers the library needs come from the environment (``PROBE_REDIS``,
``PROBE_POSTGRES``, ``PROBE_MYSQL``, ``PROBE_RABBITMQ``: ``host:port``).
"""

from __future__ import annotations

import asyncio
import http.server
import importlib
import json
import os
import socket
import sys
import threading
from typing import Any, Callable

import pulsetrace
from pulsetrace import _diag, contrib
from pulsetrace.contrib import INTEGRATIONS

MISSING = "<missing>"
ROUTES_MODULE = "__main__"  # Django's ROOT_URLCONF: this script


# -- a local HTTP server for the outbound clients ---------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _http_urls() -> tuple[str, str]:
    """(a URL that answers ``hello``, a URL whose port refuses connections)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    return f"http://127.0.0.1:{server.server_address[1]}/x", f"http://127.0.0.1:{closed}/x"


def _server(var: str) -> tuple[str, int]:
    host, port = os.environ[var].rsplit(":", 1)
    return host, int(port)


# -- one small use of each library: (a call that succeeds, a call that fails) -----------
def _flask() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import flask

    app = flask.Flask("probe")
    app.testing = True  # an exception in a view reaches the caller

    @app.route("/ok")
    def ok() -> str:
        return "ok"

    @app.route("/fail")
    def fail() -> str:
        raise ValueError("boom")

    client = app.test_client()

    def good() -> Any:
        r = client.get("/ok")
        return [r.status_code, r.get_data(as_text=True)]

    return good, lambda: client.get("/fail")


def ok_view(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


def fail_view(request: Any) -> Any:
    raise ValueError("boom")


urlpatterns: list[Any] = []


def _django() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="probe",
            ROOT_URLCONF=ROUTES_MODULE,
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.test import Client
    from django.urls import path

    urlpatterns[:] = [path("ok", ok_view), path("fail", fail_view)]

    def good() -> Any:
        r = Client().get("/ok")
        return [r.status_code, r.content.decode()]

    return good, lambda: Client(raise_request_exception=True).get("/fail")


def _starlette() -> tuple[Callable[[], Any], Callable[[], Any]]:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    def ok(request: Any) -> Any:
        return PlainTextResponse("ok")

    def fail(request: Any) -> Any:
        raise ValueError("boom")

    def app() -> Any:  # an app builds its middleware stack (the hook) once: one per call
        return Starlette(routes=[Route("/ok", ok), Route("/fail", fail)])

    def good() -> Any:
        with TestClient(app()) as client:
            r = client.get("/ok")
            return [r.status_code, r.text]

    def bad() -> Any:
        with TestClient(app()) as client:
            return client.get("/fail")

    return good, bad


def _redis() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import redis

    host, port = _server("PROBE_REDIS")
    client = redis.Redis(host=host, port=port)
    client.set("probe", "v")
    return lambda: client.get("probe").decode(), lambda: client.execute_command("NOSUCHCMD")


def _requests() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import requests

    ok, refused = _http_urls()

    def good() -> Any:
        r = requests.get(ok, timeout=5)
        return [r.status_code, r.text]

    return good, lambda: requests.get(refused, timeout=5)


def _urllib3() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import urllib3

    ok, refused = _http_urls()
    pool = urllib3.PoolManager(retries=False)

    def good() -> Any:
        r = pool.request("GET", ok)
        return [r.status, r.data.decode()]

    return good, lambda: pool.request("GET", refused)


def _httpx() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import httpx

    ok, refused = _http_urls()

    def good() -> Any:
        r = httpx.get(ok)
        return [r.status_code, r.text]

    return good, lambda: httpx.get(refused)


def _urllib() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import urllib.request

    ok, refused = _http_urls()

    def good() -> Any:
        with urllib.request.urlopen(ok, timeout=5) as r:
            return [r.status, r.read().decode()]

    return good, lambda: urllib.request.urlopen(refused, timeout=5)


def _aiohttp() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import aiohttp

    ok, refused = _http_urls()

    async def get(url: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as r:
                return [r.status, await r.text()]

    return lambda: asyncio.run(get(ok)), lambda: asyncio.run(get(refused))


def _sqlite3() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import sqlite3

    def good() -> Any:
        conn = sqlite3.connect(":memory:")
        try:
            return [list(r) for r in conn.execute("SELECT 1, 'a'").fetchall()]
        finally:
            conn.close()

    def bad() -> Any:
        conn = sqlite3.connect(":memory:")
        try:
            return conn.execute("SELECT * FROM missing")
        finally:
            conn.close()

    return good, bad


def _dbapi(connect: Callable[[], Any], failing: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    def run(sql: str) -> Any:
        conn = connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return [list(r) for r in cur.fetchall()]
        finally:
            conn.close()

    return lambda: run("SELECT 1, 'a'"), lambda: run(failing)


def _psycopg() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import psycopg

    host, port = _server("PROBE_POSTGRES")
    return _dbapi(
        lambda: psycopg.connect(host=host, port=port, user="postgres", dbname="postgres"),
        "SELEC 1",
    )


def _psycopg2() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import psycopg2

    host, port = _server("PROBE_POSTGRES")
    return _dbapi(
        lambda: psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres"),
        "SELEC 1",
    )


def _pymysql() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import pymysql

    host, port = _server("PROBE_MYSQL")
    return _dbapi(lambda: pymysql.connect(host=host, port=port, user="root"), "SELEC 1")


def _sqlalchemy() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import sqlalchemy

    engine = sqlalchemy.create_engine("sqlite://")

    def run(sql: str) -> Any:
        with engine.connect() as conn:
            return [list(r) for r in conn.execute(sqlalchemy.text(sql)).fetchall()]

    return lambda: run("SELECT 1, 'a'"), lambda: run("SELECT * FROM missing")


def _pika() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import pika

    host, port = _server("PROBE_RABBITMQ")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare("probe", auto_delete=True)

    def good() -> Any:
        channel.basic_publish("", "probe", b"hello")
        _method, _props, body = channel.basic_get("probe", auto_ack=True)
        return body.decode()

    def bad() -> Any:  # a missing exchange closes the channel: one per call
        other = conn.channel()
        other.confirm_delivery()
        other.basic_publish("no-such-exchange", "probe", b"hello")

    return good, bad


def _aio_pika() -> tuple[Callable[[], Any], Callable[[], Any]]:
    import aio_pika

    host, port = _server("PROBE_RABBITMQ")
    url = f"amqp://guest:guest@{host}:{port}/"

    async def run(exchange_name: str) -> Any:
        async with await aio_pika.connect(url) as conn:
            channel = await conn.channel()
            queue = await channel.declare_queue("probe-aio", auto_delete=True)
            exchange = (
                await channel.get_exchange(exchange_name, ensure=False)
                if exchange_name
                else channel.default_exchange
            )
            await exchange.publish(aio_pika.Message(b"hello"), routing_key="probe-aio")
            message = await queue.get(timeout=5)
            await message.ack()
            return message.body.decode()

    return lambda: asyncio.run(run("")), lambda: asyncio.run(run("no-such-exchange"))


def _celery() -> tuple[Callable[[], Any], Callable[[], Any]]:
    from celery import Celery

    app = Celery("probe", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("probe")

    # Run in this process (eager): one task run each, no worker.
    return lambda: add.apply((1, 2)).get(), lambda: fail.apply(throw=True)


USES: dict[str, Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]] = {
    "flask": _flask,
    "django": _django,
    "starlette": _starlette,
    "redis": _redis,
    "requests": _requests,
    "urllib3": _urllib3,
    "httpx": _httpx,
    "urllib": _urllib,
    "aiohttp": _aiohttp,
    "sqlite3": _sqlite3,
    "psycopg": _psycopg,
    "psycopg2": _psycopg2,
    "pymysql": _pymysql,
    "sqlalchemy": _sqlalchemy,
    "pika": _pika,
    "aio_pika": _aio_pika,
    "celery": _celery,
}


# -- what the probe observes ------------------------------------------------------------
class Probe:
    def __init__(self, name: str) -> None:
        self.integration = next(i for i in INTEGRATIONS if i.name == name)
        self.exporter = pulsetrace.InMemorySpanExporter()
        pulsetrace.configure(sample_rate=1.0)
        pulsetrace.add_exporter(self.exporter)
        self.out: dict[str, Any] = {}

    @property
    def hook(self) -> Any:
        return importlib.import_module(self.integration.hook)

    def attributes(self) -> dict[str, Any]:
        """Each target's attribute as its owner holds it (MISSING: inherited)."""
        found = {}
        for target in self.hook._PATCHER.targets:
            owner: Any = importlib.import_module(target.module)
            *parents, attr = target.path.split(".")
            for part in parents:
                owner = getattr(owner, part)
            found[f"{target.module}:{target.path}"] = vars(owner).get(attr, MISSING)
        return found

    def spans(self) -> int:
        assert pulsetrace.flush(timeout=10)
        n = len(self.exporter.spans())
        self.exporter.clear()
        return n

    def use(self) -> dict[str, Any]:
        """Run the library's calls once; their outcome and the spans they made."""
        if not hasattr(self, "_calls"):
            self._calls = USES[self.integration.name]()
            self.spans()  # setting up (a first connection) is not counted
        good, bad = self._calls
        outcome: dict[str, Any] = {"result": good()}
        try:
            bad()
            outcome["error"] = None
        except Exception as exc:
            outcome["error"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        outcome["spans"] = self.spans()
        return outcome


def wrapped_by_pulsetrace(value: Any, original: Any) -> bool:
    import wrapt

    return isinstance(value, wrapt.FunctionWrapper) and value.__wrapped__ is (
        original if original is not MISSING else value.__wrapped__
    )


def main() -> None:
    name, scenario = sys.argv[1], sys.argv[2]
    probe = Probe(name)
    out = probe.out
    config = pulsetrace.get_config()
    top = probe.integration.module.split(".")[0]
    if scenario == "before_import":
        out["imported_before"] = top in sys.modules
        out["chosen"] = contrib.instrument(config, [name])
        out["patched"] = probe.use()  # imports the library: the lazy hook patches it
        out["wrapped"] = all(wrapped_by_pulsetrace(v, MISSING) for v in probe.attributes().values())
        out["instrumented"] = contrib.instrumented()
    elif scenario == "hook_first":
        # The application imports pulsetrace's hook module (to call its
        # patch() or unpatch() later) before the library: the hook module's
        # own import of the library fires the lazy hook while it is half run.
        out["imported_before"] = top in sys.modules
        out["chosen"] = contrib.instrument(config, [name])
        importlib.import_module(probe.integration.hook)
        out["patched"] = probe.use()
        out["wrapped"] = all(wrapped_by_pulsetrace(v, MISSING) for v in probe.attributes().values())
        out["instrumented"] = contrib.instrumented()
        out["internal_errors"] = _diag.internal_errors()
    elif scenario == "after_import":
        importlib.import_module(probe.integration.module)
        out["bare"] = probe.use()
        before = probe.attributes()
        out["chosen"] = contrib.instrument(config, [name])
        out["instrumented"] = contrib.instrumented()
        after = probe.attributes()
        out["wrapped"] = all(
            wrapped_by_pulsetrace(after[k], before[k]) for k in before if before[k] is not MISSING
        ) and all(wrapped_by_pulsetrace(v, MISSING) for v in after.values())
        out["patched"] = probe.use()
        out["patch_again"] = probe.hook.patch()
        contrib.instrument(config, [name])
        out["same_wrappers"] = all(
            a is b for a, b in zip(after.values(), probe.attributes().values())
        )
        out["patched_twice"] = probe.use()
        contrib.uninstrument([name])
        out["restored"] = all(before[k] is v for k, v in probe.attributes().items())
        out["unpatched"] = probe.use()
        out["instrumented_after"] = contrib.instrumented()
    elif scenario == "toggled":
        out["chosen"] = contrib.instrument(config, [name])
        importlib.import_module(probe.integration.module)
        out["wrapped_any"] = any(
            wrapped_by_pulsetrace(v, MISSING) for v in probe.attributes().values()
        )
        out["use"] = probe.use()
        out["instrumented"] = contrib.instrumented()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    sys.stdout.flush()
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # no exit-time flush or server shutdown to wait for


if __name__ == "__main__":
    main()
