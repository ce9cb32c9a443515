"""One request, one span: every server integration reports the same span name
and attributes for the same request.

Each request of the corpus is sent as raw bytes over a socket to two real
servers in this process: ``wsgiref`` (PEP 3333) serving Flask (its native
fast path), a bare WSGI app under ``PulsetraceMiddleware`` and Django's WSGI
handler, and uvicorn (ASGI) serving Starlette, FastAPI, a bare ASGI app under
``PulsetraceASGIMiddleware`` and Django's ASGI handler. An ``X-App`` header
picks the application (it is no attribute). No application has a route for
these paths, so every span is named after its method alone, and the status
codes may differ (Django answers a Host it does not allow with 400): the
request's attributes and the span's name may not.

The corpus has the cases where the integrations used to disagree: an IPv6
Host (``[::1]:8080``) and a broken one (``[::1``), an empty and a missing
Host, a UTF-8 path (``/café``), bytes that are not UTF-8 (Django writes
them ``%XX``, uvicorn's ``path`` has U+FFFD for them), percent-encoded
paths (uvicorn's HTTP parser refuses bytes above 0x7F in the request line,
so these arrive percent-encoded), a query of 60,000 bytes (``wsgiref`` refuses a request line over
64 KiB), and the methods ``get``, ``PURGE`` and ``FOO``. Where a request
has no usable Host, the span takes the server's own address and port: the
two servers listen on different ports, so that value is compared as "the
server's own port".
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from pulsetrace.contrib import django as django_hook
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.contrib import starlette as starlette_hook
from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished

for _module in ("django", "flask", "starlette", "fastapi", "uvicorn"):
    pytest.importorskip(_module)

from contrib.django_app import setup as django_setup  # noqa: E402

django_setup()

WSGI_APPS = ("flask", "wsgi", "django-wsgi")
ASGI_APPS = ("starlette", "fastapi", "asgi", "django-asgi")

HUGE_QUERY = "q=" + "x" * 59_990 + "&token=secret"

# (id, method, request target as sent, Host header: None for none)
CORPUS = [
    ("plain", "GET", "/users/1?page=2&token=s3cret", "example.com:8080"),
    ("ipv6-host", "GET", "/", "[::1]:8080"),
    ("ipv6-host-no-port", "GET", "/", "[::1]"),
    ("broken-ipv6-host", "GET", "/", "[::1"),
    ("bad-port", "GET", "/", "example.com:http"),
    ("empty-host", "GET", "/", ""),
    ("no-host", "GET", "/", None),
    ("utf8-path", "GET", "/caf%C3%A9", "example.com"),
    ("not-utf8-path", "GET", "/%FF%FEx/%C3", "example.com"),
    ("percent-encoded", "GET", "/a%20b/c%2Fd/%7Euser", "example.com"),
    ("query-encodings", "GET", "/q?name=caf%C3%A9&%74oken=1&x=%FF&y=a+b", "example.com"),
    ("huge-query", "GET", "/q?" + HUGE_QUERY, "example.com"),
    ("lower-case-method", "get", "/", "example.com"),
    ("purge", "PURGE", "/", "example.com"),
    ("unknown-method", "FOO", "/", "example.com"),
]


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page"]


async def plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"no such page"})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def wsgi_apps() -> dict[str, Any]:
    import flask
    from django.core.handlers.wsgi import WSGIHandler

    return {
        "flask": flask.Flask("differential"),
        "wsgi": PulsetraceMiddleware(plain_wsgi),
        "django-wsgi": WSGIHandler(),
    }


def asgi_apps() -> dict[str, Any]:
    from django.core.handlers.asgi import ASGIHandler
    from fastapi import FastAPI
    from starlette.applications import Starlette

    return {
        "starlette": Starlette(),
        "fastapi": FastAPI(),
        "asgi": PulsetraceASGIMiddleware(plain_asgi),
        "django-asgi": ASGIHandler(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    """Both servers, serving every application; the port of each."""
    import uvicorn

    flask_hook.patch()
    django_hook.patch()
    starlette_hook.patch()
    wsgi = wsgi_apps()
    asgi = asgi_apps()

    def wsgi_dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        return wsgi[environ["HTTP_X_APP"]](environ, start_response)

    async def asgi_dispatch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = dict(scope["headers"])[b"x-app"].decode()
        await asgi[name](scope, receive, send)

    wsgi_server: WSGIServer = make_server("127.0.0.1", 0, wsgi_dispatch, handler_class=QuietHandler)
    # The server's own name, as uvicorn gives it (wsgiref would look up the
    # host's fully qualified name).
    wsgi_server.server_name = "127.0.0.1"
    wsgi_server.setup_environ()
    wsgi_thread = threading.Thread(target=wsgi_server.serve_forever, daemon=True)
    wsgi_thread.start()

    asgi_port = free_port()
    config = uvicorn.Config(
        asgi_dispatch,
        host="127.0.0.1",
        port=asgi_port,
        lifespan="off",
        log_level="error",
        http="h11",
        h11_max_incomplete_event_size=1 << 20,
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
        starlette_hook.unpatch()
        django_hook.unpatch()
        flask_hook.unpatch()


def send(port: int, app: str, method: str, target: str, host: str | None) -> bytes:
    """One request, as raw bytes (latin-1 text: one character a byte); the
    raw response."""
    lines = [f"{method} {target} HTTP/1.1" if host is not None else f"{method} {target} HTTP/1.0"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += ["User-Agent: differential/1.0", f"X-App: {app}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall("\r\n".join(lines).encode("latin-1"))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def span_of(exporter: Any, app: str, own_port: int) -> dict[str, Any]:
    """The one server span the request made: its name and attributes, the
    status code left out and the server's own port named as such."""
    servers = [s for s in finished(exporter) if s.kind == "server"]
    exporter.clear()
    assert len(servers) == 1, (app, [s.name for s in servers])
    (s,) = servers
    attrs = dict(s.attributes)
    attrs.pop("http.response.status_code", None)
    if attrs.get("server.port") == own_port:
        attrs["server.port"] = "<the server's own port>"
    return {"name": s.name, **attrs}


@pytest.mark.parametrize(
    ("method", "target", "host"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_every_integration_reports_the_same_span(servers, exporter, method, target, host):
    seen = {}
    for app in WSGI_APPS + ASGI_APPS:
        port = servers["wsgi" if app in WSGI_APPS else "asgi"]
        response = send(port, app, method, target, host)
        assert response.startswith(b"HTTP/1."), (app, response[:200])
        seen[app] = span_of(exporter, app, port)
    reference = seen["flask"]
    differing = {app: span for app, span in seen.items() if span != reference}
    assert not differing, {"flask": reference, **differing}


def test_the_decisions_the_integrations_share(servers, exporter):
    """What the shared span says for the cases that used to disagree (the
    core's decisions; each integration reports the same, as above)."""

    def span(method: str, target: str, host: str | None) -> dict[str, Any]:
        send(servers["asgi"], "asgi", method, target, host)
        return span_of(exporter, "asgi", servers["asgi"])

    s = span("GET", "/", "[::1]:8080")
    assert (s["server.address"], s["server.port"]) == ("::1", 8080)
    s = span("GET", "/", "[::1")
    assert (s["server.address"], s["server.port"]) == ("127.0.0.1", "<the server's own port>")
    s = span("GET", "/", "")
    assert s["server.address"] == "127.0.0.1"
    assert span("GET", "/caf%C3%A9", "h")["url.path"] == "/café"
    # Bytes that are not UTF-8 are kept, percent-encoded (as Django reports them).
    assert span("GET", "/%FFx%C3", "h")["url.path"] == "/%FFx%C3"
    s = span("get", "/", "h")
    assert (s["name"], s["http.request.method"], s["http.request.method_original"]) == (
        "GET",
        "GET",
        "get",
    )
    s = span("PURGE", "/", "h")
    assert (s["name"], s["http.request.method"], s["http.request.method_original"]) == (
        "HTTP",
        "_OTHER",
        "PURGE",
    )
    s = span("GET", "/q?name=caf%C3%A9&token=1", "h")
    assert s["url.query"] == "name=caf%C3%A9&token=REDACTED"
    s = span("GET", "/q?" + HUGE_QUERY, "h")
    assert 0 < len(s["url.query"]) < len(HUGE_QUERY)  # cut to the attribute length limit
