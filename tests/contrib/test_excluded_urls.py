"""Excluded URLs: a probe route gets no span, no histogram count and no
access-log line, under every server integration, while its response is
untouched and the calls it makes are not traced either.

Each request is sent over a socket to two real servers in this process:
``wsgiref`` serving Flask (its native fast path), a bare WSGI app under
``PulsetraceMiddleware`` and Django's WSGI handler, and uvicorn serving
Starlette, FastAPI, a bare ASGI app under ``PulsetraceASGIMiddleware`` and
Django's ASGI handler (an ``X-App`` header picks the application). Every
application answers ``/health/live/``, ``/ping/`` and ``/work/`` with ``ok``
after one SQL statement (sqlite3, patched: a CLIENT span when traced).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import pulsetrace
from pulsetrace.contrib import django as django_hook
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.contrib import sqlite3 as sqlite3_hook
from pulsetrace.contrib import starlette as starlette_hook
from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished, fresh

for _module in ("django", "flask", "starlette", "fastapi", "uvicorn"):
    pytest.importorskip(_module)

from contrib.django_app import setup as django_setup  # noqa: E402

django_setup()

WSGI_APPS = ("flask", "wsgi", "django-wsgi")
ASGI_APPS = ("starlette", "fastapi", "asgi", "django-asgi")
ALL_APPS = WSGI_APPS + ASGI_APPS


def work() -> bytes:
    sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
    return b"ok"


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = work()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Mine", "1")])
    return [body]


async def plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = work()
    headers = [(b"content-type", b"text/plain"), (b"x-mine", b"1"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def wsgi_apps() -> dict[str, Any]:
    import flask
    from django.core.handlers.wsgi import WSGIHandler

    app = flask.Flask("excluded")

    @app.route("/<path:p>")
    def any_path(p: str) -> Any:
        return flask.Response(work(), headers={"X-Mine": "1"}, mimetype="text/plain")

    return {"flask": app, "wsgi": PulsetraceMiddleware(plain_wsgi), "django-wsgi": WSGIHandler()}


def asgi_apps() -> dict[str, Any]:
    from django.core.handlers.asgi import ASGIHandler
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Any) -> Response:
        return Response(work(), headers={"X-Mine": "1"}, media_type="text/plain")

    fast = FastAPI()

    @fast.get("/{p:path}")
    async def any_path(p: str) -> Response:
        return Response(work(), headers={"X-Mine": "1"}, media_type="text/plain")

    return {
        "starlette": Starlette(routes=[Route("/{p:path}", endpoint)]),
        "fastapi": fast,
        "asgi": PulsetraceASGIMiddleware(plain_asgi),
        "django-asgi": ASGIHandler(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    import uvicorn

    flask_hook.patch()
    django_hook.patch()
    starlette_hook.patch()
    sqlite3_hook.patch()
    wsgi = wsgi_apps()
    asgi = asgi_apps()

    def wsgi_dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        return wsgi[environ["HTTP_X_APP"]](environ, start_response)

    async def asgi_dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asgi[dict(scope["headers"])[b"x-app"].decode()](scope, receive, send)

    wsgi_server: WSGIServer = make_server("127.0.0.1", 0, wsgi_dispatch, handler_class=QuietHandler)
    wsgi_thread = threading.Thread(target=wsgi_server.serve_forever, daemon=True)
    wsgi_thread.start()
    asgi_port = free_port()
    config = uvicorn.Config(
        asgi_dispatch, host="127.0.0.1", port=asgi_port, lifespan="off", log_level="error"
    )
    asgi_server = uvicorn.Server(config)
    asgi_thread = threading.Thread(target=asgi_server.run, daemon=True)
    asgi_thread.start()
    deadline = time.monotonic() + 20
    while not asgi_server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield {"wsgi": wsgi_server.server_address[1], "asgi": asgi_port}
    finally:
        wsgi_server.shutdown()
        wsgi_server.server_close()
        asgi_server.should_exit = True
        asgi_thread.join(10)
        wsgi_thread.join(10)
        sqlite3_hook.unpatch()
        starlette_hook.unpatch()
        django_hook.unpatch()
        flask_hook.unpatch()


def get(servers: dict[str, int], app: str, path: str) -> bytes:
    """The raw response to ``GET path`` from ``app``."""
    port = servers["wsgi" if app in WSGI_APPS else "asgi"]
    head = f"GET {path} HTTP/1.1\r\nHost: testserver\r\nX-App: {app}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def spans_of(servers: dict[str, int], exporter: Any, app: str, path: str) -> list[str]:
    """Send the request; check the application's response is whole; the
    kinds of the spans it made."""
    response = get(servers, app, path)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", (app, path, response[:300])
    assert body == b"ok", (app, path, response[:300])
    if app not in ("django-wsgi", "django-asgi"):
        assert b"x-mine: 1" in head.lower(), (app, path, head)
    spans = finished(exporter)
    exporter.clear()
    return sorted(s.kind for s in spans)


def server_count(path_route: str) -> int:
    """Requests recorded in the SERVER histograms of operations naming ``path_route``."""
    return sum(
        r["count"]
        for r in pulsetrace.latency()
        if r["kind"] == "server" and path_route in r["name"]
    )


@pytest.mark.parametrize("app", ALL_APPS)
def test_the_default_excludes_health_and_nothing_else(servers, exporter, app):
    before = server_count("GET")
    assert spans_of(servers, exporter, app, "/health/live/") == []
    assert server_count("GET") == before  # no histogram count either
    assert spans_of(servers, exporter, app, "/work/") == ["client", "server"]
    assert server_count("GET") == before + 1


@pytest.mark.parametrize("app", ALL_APPS)
def test_a_configured_expression_replaces_the_default(servers, exporter, app):
    fresh(excluded_urls=("^/ping/?$", "nomatch"))
    assert spans_of(servers, exporter, app, "/ping/") == []
    assert spans_of(servers, exporter, app, "/health/live/") == ["client", "server"]
    assert spans_of(servers, exporter, app, "/work/") == ["client", "server"]


def test_nothing_is_excluded_when_the_list_matches_nothing(servers, exporter):
    fresh(excluded_urls=("^$",))
    for app in ALL_APPS:
        assert spans_of(servers, exporter, app, "/health/live/") == ["client", "server"], app


def test_an_excluded_request_writes_no_access_line(servers, exporter):
    import pulsetrace.logging as plog

    buf = io.StringIO()
    plog.configure(stream=buf, access_log=True)
    try:
        for path in ("/health/live/", "/work/"):
            spans_of(servers, exporter, "flask", path)
            spans_of(servers, exporter, "starlette", path)
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(x) for x in buf.getvalue().splitlines()]
            paths = [x["metadata"]["path"] for x in lines if x.get("type") == "access"]
            if len(paths) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # a line for the excluded requests would be there by now
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        paths = [x["metadata"]["path"] for x in lines if x.get("type") == "access"]
        assert paths == ["/work/", "/work/"]
    finally:
        plog.unconfigure()


def test_a_bad_expression_is_a_clear_error_and_the_others_still_work(servers, exporter, caplog):
    from pulsetrace.config import from_env

    with pytest.raises(ValueError, match=r"excluded_urls: \"/health/\(live\" is not a valid"):
        pulsetrace.Config(excluded_urls=("/health/(live",))
    with pytest.raises(ValueError, match="a list of regular expressions, not the text"):
        pulsetrace.Config(excluded_urls="^/ping$")  # would be one expression per character
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"PULSETRACE_EXCLUDED_URLS": "^/ping/$, /health/(live ,^/work/$"})
    assert cfg.excluded_urls == ("^/ping/$", "^/work/$")
    (warning,) = [r.getMessage() for r in caplog.records if "EXCLUDED_URLS" in r.getMessage()]
    assert "PULSETRACE_EXCLUDED_URLS" in warning and '"/health/(live"' in warning
    assert "unclosed group" in warning
    fresh(excluded_urls=cfg.excluded_urls)
    for app in ("flask", "fastapi"):
        assert spans_of(servers, exporter, app, "/ping/") == []
        assert spans_of(servers, exporter, app, "/work/") == []
        assert spans_of(servers, exporter, app, "/health/live/") == ["client", "server"]


def test_opentelemetry_variable_is_honoured():
    from pulsetrace.config import DEFAULT_EXCLUDED_URLS, from_env

    assert from_env({}).excluded_urls == DEFAULT_EXCLUDED_URLS
    assert from_env({"OTEL_PYTHON_EXCLUDED_URLS": "healthz,ping"}).excluded_urls == (
        "healthz",
        "ping",
    )
    both = {"OTEL_PYTHON_EXCLUDED_URLS": "healthz", "PULSETRACE_EXCLUDED_URLS": "^/ready$"}
    assert from_env(both).excluded_urls == ("^/ready$",)


def test_an_excluded_request_continues_no_trace_and_leaves_the_next_one_traced(servers, exporter):
    """The suppression of an excluded request ends with it: the same
    connection thread's next request is traced (native WSGI path, ASGI)."""
    for app in ("flask", "wsgi", "asgi", "django-wsgi"):
        assert spans_of(servers, exporter, app, "/health/live/") == []
        assert spans_of(servers, exporter, app, "/work/") == ["client", "server"], app


#: Each framework integration's application here, by the name of its list
#: (``OTEL_PYTHON_<NAME>_EXCLUDED_URLS``).
FRAMEWORK_APPS = {
    "flask": ("flask",),
    "django": ("django-wsgi", "django-asgi"),
    "fastapi": ("fastapi",),
    "starlette": ("starlette",),
}


def configure_from(env: dict[str, str]) -> None:
    from pulsetrace.config import from_env

    cfg = from_env(env)
    fresh(excluded_urls=cfg.excluded_urls, framework_excluded_urls=cfg.framework_excluded_urls)


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_APPS))
def test_a_framework_variable_replaces_the_common_list_for_that_framework_only(
    servers, exporter, framework
):
    configure_from(
        {
            "OTEL_PYTHON_EXCLUDED_URLS": "^/ping/?$,^/health/",
            f"OTEL_PYTHON_{framework.upper()}_EXCLUDED_URLS": "^/work/?$",
        }
    )
    mine = FRAMEWORK_APPS[framework]
    for app in ALL_APPS:
        # Twice: Flask's first request takes the class-level hook, the next
        # ones the native bound method it installs.
        for _ in range(2):
            if app in mine:
                assert spans_of(servers, exporter, app, "/work/") == [], app
                assert spans_of(servers, exporter, app, "/ping/") == ["client", "server"], app
            else:
                assert spans_of(servers, exporter, app, "/ping/") == [], app
                assert spans_of(servers, exporter, app, "/work/") == ["client", "server"], app
        # The framework's list replaces the whole common list.
        expected = ["client", "server"] if app in mine else []
        assert spans_of(servers, exporter, app, "/health/live/") == expected, app


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_pulsetrace_variable_wins_over_a_framework_variable(servers, exporter, framework):
    configure_from(
        {
            "PULSETRACE_EXCLUDED_URLS": "^/ping/?$",
            f"OTEL_PYTHON_{framework.upper()}_EXCLUDED_URLS": "^/work/?$",
            "OTEL_PYTHON_EXCLUDED_URLS": "^/work/?$",
        }
    )
    for app in FRAMEWORK_APPS[framework] + ("wsgi",):
        for _ in range(2):
            assert spans_of(servers, exporter, app, "/ping/") == [], app
            assert spans_of(servers, exporter, app, "/work/") == ["client", "server"], app


def test_framework_variables_are_read_in_order_of_precedence(caplog):
    from pulsetrace._native import http_exclusion_frameworks
    from pulsetrace.config import DEFAULT_EXCLUDED_URLS, EXCLUSION_FRAMEWORKS, from_env

    # The variables pulsetrace reads are the frameworks the core keeps lists for.
    assert [n.lower() for n in EXCLUSION_FRAMEWORKS] == http_exclusion_frameworks()
    cfg = from_env({"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "^/a$,^/b$"})
    assert cfg.excluded_urls == DEFAULT_EXCLUDED_URLS
    assert dict(cfg.framework_excluded_urls) == {"fastapi": ("^/a$", "^/b$")}
    cfg = from_env(
        {"OTEL_PYTHON_EXCLUDED_URLS": "^/c$", "OTEL_PYTHON_STARLETTE_EXCLUDED_URLS": "^/d$"}
    )
    assert (cfg.excluded_urls, dict(cfg.framework_excluded_urls)) == (
        ("^/c$",),
        {"starlette": ("^/d$",)},
    )
    cfg = from_env({"PULSETRACE_EXCLUDED_URLS": "^/e$", "OTEL_PYTHON_DJANGO_EXCLUDED_URLS": "x"})
    assert (cfg.excluded_urls, dict(cfg.framework_excluded_urls)) == (("^/e$",), {})
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"OTEL_PYTHON_FLASK_EXCLUDED_URLS": "^/ok$,(bad"})
    assert dict(cfg.framework_excluded_urls) == {"flask": ("^/ok$",)}
    (warning,) = [r.getMessage() for r in caplog.records if "EXCLUDED_URLS" in r.getMessage()]
    assert "OTEL_PYTHON_FLASK_EXCLUDED_URLS" in warning and '"(bad"' in warning


def test_a_bad_framework_list_in_code_is_a_clear_error():
    with pytest.raises(ValueError, match=r"framework_excluded_urls\['bottle'\]: not one of flask"):
        pulsetrace.Config(framework_excluded_urls={"bottle": ("^/x$",)})
    with pytest.raises(ValueError, match=r"\['flask'\] is a list of regular expressions, not"):
        pulsetrace.Config(framework_excluded_urls={"flask": "^/x$"})
    with pytest.raises(ValueError, match=r"\['django'\]: \"\(x\" is not a valid regular"):
        pulsetrace.Config(framework_excluded_urls={"django": ("(x",)})
