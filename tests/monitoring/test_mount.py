"""The monitoring endpoints mounted in the application
(``pulsetrace.monitoring.mount``): the same routes and JSON as the
monitoring server, the token rules decided by the request's remote address
(a mount is reachable from wherever the application is), and the mounted
prefix excluded from tracing. Real Flask, Django and FastAPI applications
(their test clients: this is routing), and one Flask application under
gunicorn."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pulsetrace.monitoring import mount

from conftest import finished, fresh

TOKEN = "mount-t0ken"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def _leave_no_ring_behind():
    """What the first mount starts (the traces' ring exporter, the windows'
    thread) is stopped after these tests, as stopping the server does."""
    yield
    from pulsetrace.monitoring import apm

    apm.uninstall()
    mount._started = False


@pytest.fixture
def token(exporter):
    fresh(monitoring_token=TOKEN)
    yield TOKEN
    fresh()


def server_spans(exporter: Any) -> list[str]:
    names = [s.name for s in finished(exporter) if s.kind == "server"]
    exporter.clear()
    return names


# --- Flask --------------------------------------------------------------------


@pytest.fixture
def flask_app():
    flask = pytest.importorskip("flask")
    from pulsetrace.contrib import flask as flask_hook

    flask_hook.patch()
    app = flask.Flask("mounted")

    @app.route("/hello")
    def hello() -> str:
        return "hello"

    mount.mount_flask(app)
    yield app
    flask_hook.unpatch()


def test_flask_serves_the_endpoints_under_the_prefix(flask_app, token, exporter):
    c = flask_app.test_client()
    r = c.get("/_pulsetrace/health/live")
    assert r.status_code == 200 and r.json["status"] == "pass"
    r = c.get("/_pulsetrace/apm/status")  # the test client's address is 127.0.0.1
    assert r.status_code == 200 and "enabled" in r.json
    r = c.get("/_pulsetrace/openapi.json")
    assert r.status_code == 200 and "/apm/transactions" in r.json["paths"]
    r = c.get("/_pulsetrace/no/such/thing")
    assert r.status_code == 404 and r.json["error"].startswith("no route")
    r = c.post("/_pulsetrace/apm/control", json={"enabled": True})
    assert r.status_code == 401  # mutating: always the token
    r = c.post(
        "/_pulsetrace/apm/control",
        json={"enabled": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 200
    # The mount's own requests are not traced; the application's are.
    assert c.get("/hello").data == b"hello"
    assert server_spans(exporter) == ["GET /hello"]


def test_beyond_loopback_every_endpoint_but_live_and_ready_needs_the_token(
    flask_app, token, exporter
):
    c = flask_app.test_client()
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    assert c.get("/_pulsetrace/health/live", environ_base=remote).status_code == 200
    r = c.get("/_pulsetrace/apm/transactions", environ_base=remote)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer wrong"}
    assert (
        c.get("/_pulsetrace/apm/transactions", environ_base=remote, headers=bad).status_code == 401
    )
    good = {"Authorization": f"Bearer {TOKEN}"}
    r = c.get("/_pulsetrace/apm/transactions", environ_base=remote, headers=good)
    assert r.status_code == 200 and "operations" in r.json
    loopback6 = {"REMOTE_ADDR": "::1"}
    assert c.get("/_pulsetrace/apm/transactions", environ_base=loopback6).status_code == 200


def test_a_wsgi_app_under_werkzeugs_dispatcher(token, exporter):
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from pulsetrace.contrib.wsgi import PulsetraceMiddleware

    app = flask.Flask("dispatched")
    app.wsgi_app = PulsetraceMiddleware(  # type: ignore[method-assign]
        DispatcherMiddleware(app.wsgi_app, {"/ops": mount.wsgi_app("/ops")})
    )
    c = app.test_client()
    r = c.get("/ops/health/live")
    assert r.status_code == 200 and r.json["status"] == "pass"
    r = c.head("/ops/health/live")
    assert r.status_code == 200 and r.data == b""
    r = c.post("/ops/apm/control", data=b"x" * 70_000, content_type="application/json")
    assert r.status_code == 413
    r = c.get("/ops")  # the mount itself: on to /ops/, where the page's relative URLs work
    assert r.status_code == 308 and r.headers["Location"].endswith("ops/")
    r = c.get("/ops/")
    assert r.status_code == 200 and r.content_type.startswith("text/html")
    assert c.get("/ops/page/app.js").status_code == 200
    r = c.post("/ops")  # not a page: answered as the root
    assert r.status_code != 308
    r = c.get("/elsewhere")
    assert r.status_code == 404
    r.close()  # the span ends with the body
    # Only the application's request has a span (the middleware sees the full path).
    assert server_spans(exporter) == ["GET"]


def test_a_bad_prefix_is_refused():
    for bad in ("_pulsetrace", "//x", 3):
        with pytest.raises(ValueError, match="mount prefix"):
            mount.wsgi_app(bad)  # type: ignore[arg-type]


# --- Django -------------------------------------------------------------------


def test_django_urls(token, exporter):
    pytest.importorskip("django")
    from contrib.django_app import setup as django_setup

    django_setup()
    from django.test import Client, override_settings

    from pulsetrace.contrib import django as django_hook

    django_hook.patch()
    try:
        with override_settings(ROOT_URLCONF="mount_django_urls", ALLOWED_HOSTS=["testserver"]):
            c = Client()
            r = c.get("/_pulsetrace/health/live")
            assert r.status_code == 200 and json.loads(r.content)["status"] == "pass"
            r = c.get("/_pulsetrace/apm/status", REMOTE_ADDR="198.51.100.7")
            assert r.status_code == 401
            r = c.get(
                "/_pulsetrace/apm/status",
                REMOTE_ADDR="198.51.100.7",
                HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
            )
            assert r.status_code == 200 and r["Content-Type"] == "application/json"
            r = c.post(  # no CSRF token: the bearer token is what guards it
                "/_pulsetrace/apm/control",
                data=json.dumps({"enabled": True}),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
            )
            assert r.status_code == 200
            # The prefix itself: on to prefix/, where the live page's relative
            # URLs (its script, the JSON it polls) resolve under the prefix.
            r = c.get("/_pulsetrace")
            assert r.status_code == 308 and r["Location"] == "_pulsetrace/"
            r = c.get("/_pulsetrace/")
            assert r.status_code == 200 and r["Content-Type"].startswith("text/html")
            assert b'src="page/app.js"' in r.content or b"page/app.js" in r.content
            r = c.get("/_pulsetrace/page/app.js")
            assert r.status_code == 200 and "javascript" in r["Content-Type"]
            assert server_spans(exporter) == []
    finally:
        django_hook.unpatch()


# --- FastAPI ------------------------------------------------------------------


def test_fastapi_mount(token, exporter):
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pulsetrace.contrib import starlette as starlette_hook

    starlette_hook.patch()
    try:
        app = FastAPI()

        @app.get("/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

        app.mount("/_pulsetrace", mount.asgi_app())
        with TestClient(app, client=("127.0.0.1", 50000)) as c:
            r = c.get("/_pulsetrace/health/live")
            assert r.status_code == 200 and r.json()["status"] == "pass"
            r = c.get("/_pulsetrace/apm/transactions")
            assert r.status_code == 200 and "operations" in r.json()
            r = c.post("/_pulsetrace/apm/control", json={"enabled": True})
            assert r.status_code == 401
            assert c.get("/hello").json() == {"hello": "world"}
            r = c.get("/_pulsetrace", follow_redirects=False)
            assert r.status_code in (307, 308) and r.headers["location"].endswith("/_pulsetrace/")
            r = c.get("/_pulsetrace/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        with TestClient(app, client=("192.0.2.1", 50000)) as c:
            assert c.get("/_pulsetrace/apm/transactions").status_code == 401
            r = c.get("/_pulsetrace/apm/transactions", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
        assert server_spans(exporter) == ["GET /hello"]
    finally:
        starlette_hook.unpatch()


# --- under gunicorn -----------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_under_gunicorn():
    from servers import free_port

    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_", "APM_"))
    }
    env.update(OTEL_TRACES_EXPORTER="none", PULSETRACE_SAMPLE_RATE="1")
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(HERE),
            "mount_app:app",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _get(port, "/_pulsetrace/health/live")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["status"] == "pass"
        for _ in range(3):
            assert _get(port, "/hello") == (200, b"hello")
        deadline = time.monotonic() + 10
        while True:
            status, body = _get(port, "/_pulsetrace/apm/transactions")
            assert status == 200
            ops = {o["name"]: o for o in json.loads(body)["operations"]}
            if ops.get("GET /hello", {}).get("count") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ops["GET /hello"]["count"] == 3
        # Neither the probes nor the transactions' own requests were recorded.
        assert not [name for name in ops if "pulsetrace" in name or "/health" in name], ops
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stderr.close()  # type: ignore[union-attr]
