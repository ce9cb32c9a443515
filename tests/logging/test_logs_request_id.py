"""``requestId`` from the ``X-Request-ID`` header through the Python server
hooks too (the ASGI middleware under Starlette, the WSGI middleware), not
only Flask's native path; without the header, the request span's id; a
header of one request never reaches the next."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

import pulsetrace.logging as plog
from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished

log = logging.getLogger("shop")


@pytest.fixture
def lines(exporter):
    buf = io.StringIO()
    plog.configure(stream=buf)
    yield lambda: [json.loads(x) for x in buf.getvalue().splitlines()]
    plog.unconfigure()


def starlette_client():
    starlette = pytest.importorskip("starlette.applications")
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    def view(request: Any) -> Any:
        log.info("served")
        return PlainTextResponse("ok")

    app = starlette.Starlette(routes=[Route("/r", view)])
    return TestClient(PulsetraceASGIMiddleware(app))


def wsgi_get(headers: dict[str, str]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        log.info("served")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/r",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    body = PulsetraceMiddleware(app)(environ, lambda *a: None)
    list(body)
    getattr(body, "close", lambda: None)()


def served(lines: Any) -> list[dict[str, Any]]:
    """The application's lines (the test client logs its own too)."""
    return [x for x in lines() if x["message"] == "served"]


def server_span_ids(exporter) -> list[str]:
    return [f"{s.span_id:016x}" for s in finished(exporter) if s.kind == "server"]


def test_the_asgi_middleware_reads_the_header(lines, exporter):
    client = starlette_client()
    assert client.get("/r", headers={"X-Request-ID": "req_asgi_1"}).status_code == 200
    assert client.get("/r").status_code == 200
    first, second = served(lines)
    assert first["requestId"] == "req_asgi_1"
    # The next request has no header: its own span's id, not the last header.
    assert second["requestId"] == server_span_ids(exporter)[-1]


def test_the_wsgi_middleware_reads_the_header(lines, exporter):
    wsgi_get({"X-Request-ID": "req_wsgi_1"})
    wsgi_get({})
    first, second = served(lines)
    assert first["requestId"] == "req_wsgi_1"
    assert second["requestId"] == server_span_ids(exporter)[-1]
