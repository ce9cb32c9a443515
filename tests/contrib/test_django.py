"""Django: route-named SERVER spans under WSGI and ASGI, errors, streaming,
propagation, patch/unpatch, and safety when pulsetrace itself fails."""

from __future__ import annotations

import asyncio
import gc
import traceback
from typing import Any, Callable

import pytest

import pulsetrace
import pulsetrace.contrib
from pulsetrace import _diag
from pulsetrace.contrib import _http

from conftest import finished

pytest.importorskip("django")

from contrib.django_app import setup, views  # noqa: E402

setup()

from django.core.handlers.base import BaseHandler  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402

from pulsetrace.contrib import django as django_hook  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TP = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Result:
    def __init__(self, response: Any, body: bytes) -> None:
        self.status = response.status_code
        self.headers = dict(response.items())
        self.body = body


def wsgi_get(path: str, **kw: Any) -> Result:
    """A request through Django's WSGI test handler, body read and closed."""
    r = Client(raise_request_exception=False).get(path, **kw)
    body = b"".join(r.streaming_content) if r.streaming else r.content
    return Result(r, body)


async def _abody(r: Any) -> bytes:
    if not r.streaming:
        return r.content
    if r.is_async:
        return b"".join([chunk async for chunk in r.streaming_content])
    return b"".join(r.streaming_content)


def asgi_get(path: str, **kw: Any) -> Result:
    """The same through Django's ASGI test handler."""

    async def go() -> Result:
        r = await AsyncClient(raise_request_exception=False).get(path, **kw)
        return Result(r, await _abody(r))

    return asyncio.run(go())


Fetch = Callable[..., Result]


@pytest.fixture(params=["wsgi", "asgi"])
def fetch(request: Any) -> Fetch:
    return wsgi_get if request.param == "wsgi" else asgi_get


@pytest.fixture
def patched(exporter):
    django_hook.patch()
    yield
    django_hook.unpatch()


def take(exporter) -> list[pulsetrace.SpanData]:
    """Every span exported since the last take."""
    spans = finished(exporter)
    exporter.clear()
    return spans


def server_spans(exporter) -> list[pulsetrace.SpanData]:
    return [s for s in take(exporter) if s.kind == "server"]


def the_server_span(exporter) -> pulsetrace.SpanData:
    spans = server_spans(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_span_is_named_after_the_route_template(patched, exporter, fetch):
    r = fetch("/users/42/?token=abc&page=2", headers={"user-agent": "t/1"})
    assert r.status == 200
    spans = take(exporter)
    (s,) = [x for x in spans if x.kind == "server"]
    assert s.name == "GET /users/<int:pk>/"
    assert s.kind == "server"
    assert s.status == "unset"
    a = s.attributes
    assert a["http.route"] == "/users/<int:pk>/"
    assert a["http.request.method"] == "GET"
    assert a["http.response.status_code"] == 200
    assert a["url.path"] == "/users/42/"
    assert a["url.query"] == "token=REDACTED&page=2"
    assert "abc" not in str(a)
    assert a["url.scheme"] == "http"
    assert a["server.address"] == "testserver"
    assert a["user_agent.original"] == "t/1"
    # The span is current while the view runs: the view's span is its child.
    (child,) = [x for x in spans if x.name == "load user"]
    assert child.parent_span_id == s.span_id
    assert child.trace_id == s.trace_id


def test_async_view_runs_inside_the_span(patched, exporter, fetch):
    assert fetch("/async/users/7/").status == 200
    spans = take(exporter)
    (s,) = [x for x in spans if x.kind == "server"]
    assert s.name == "GET /async/users/<int:pk>/"
    (child,) = [x for x in spans if x.name == "load user"]
    assert child.parent_span_id == s.span_id


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/v1/items/blue/", "/api/v1/items/<slug:name>/"),
        ("/legacy/12/", "/legacy/(?P<pk>[0-9]+)/"),
    ],
)
def test_included_and_regex_routes(patched, exporter, fetch, path, route):
    assert fetch(path).status == 200
    s = the_server_span(exporter)
    assert s.name == f"GET {route}"
    assert s.attributes["http.route"] == route


def test_view_exception_is_a_500_error_with_the_exception(patched, exporter, fetch):
    assert fetch("/boom/").status == 500
    s = the_server_span(exporter)
    assert s.name == "GET /boom/"
    assert s.status == "error"
    assert s.attributes["http.response.status_code"] == 500
    (event,) = [e for e in s.events if e["name"] == "exception"]
    assert event["attributes"]["exception.type"].endswith(".ViewError")
    assert event["attributes"]["exception.message"] == "view failed"


def test_the_span_wraps_every_middleware(patched, exporter, fetch):
    # A middleware that fails: Django answers 500, the span has the exception.
    assert fetch("/mw-boom/").status == 500
    s = the_server_span(exporter)
    assert (s.name, s.status) == ("GET", "error")
    (event,) = [e for e in s.events if e["name"] == "exception"]
    assert event["attributes"]["exception.type"].endswith(".MiddlewareError")
    # A middleware that answers itself: its response is the span's.
    assert fetch("/blocked/").status == 403
    s = the_server_span(exporter)
    assert (s.name, s.status) == ("GET", "unset")
    assert s.attributes["http.response.status_code"] == 403


def test_not_found(patched, exporter, fetch):
    # No pattern matched: the method alone (bounded cardinality), not an error.
    assert fetch("/nowhere/at/all/").status == 404
    s = the_server_span(exporter)
    assert (s.name, s.status) == ("GET", "unset")
    assert "http.route" not in s.attributes
    assert s.attributes["http.response.status_code"] == 404
    assert s.attributes["url.path"] == "/nowhere/at/all/"
    # A matched view that answers 404: named after its route, not an error.
    assert fetch("/missing/3/").status == 404
    s = the_server_span(exporter)
    assert (s.name, s.status) == ("GET /missing/<int:pk>/", "unset")
    assert not [e for e in s.events if e["name"] == "exception"]


def test_streaming_span_covers_the_body_wsgi(patched, exporter):
    r = Client().get("/stream/")
    assert r.streaming
    assert server_spans(exporter) == []  # still open: the body is not sent yet
    assert b"".join(r.streaming_content) == b"abc"
    s = the_server_span(exporter)
    assert s.name == "GET /stream/"
    assert s.duration_ns >= 2 * views.CHUNK_PAUSE_S * 1e9 * 0.8
    assert s.duration_ns >= 100_000_000


def test_streaming_span_covers_the_body_asgi(patched, exporter):
    async def go() -> None:
        r = await AsyncClient().get("/astream/")
        assert r.streaming and r.is_async
        assert server_spans(exporter) == []
        assert b"".join([c async for c in r.streaming_content]) == b"abc"

    asyncio.run(go())
    s = the_server_span(exporter)
    assert s.name == "GET /astream/"
    assert s.duration_ns >= 100_000_000


def test_streaming_response_dropped_unclosed_still_ends(patched, exporter):
    r = Client().get("/stream/")
    assert server_spans(exporter) == []
    del r
    gc.collect()
    s = the_server_span(exporter)
    assert (s.name, s.attributes["http.response.status_code"]) == ("GET /stream/", 200)


def test_file_response_ends_when_closed(patched, exporter, fetch):
    r = fetch("/file/")
    assert (r.status, len(r.body)) == (200, 10_000)
    s = the_server_span(exporter)
    assert s.name == "GET /file/"
    assert s.attributes["http.response.status_code"] == 200


def test_incoming_traceparent_is_continued(patched, exporter, fetch):
    assert fetch("/users/1/", headers={"traceparent": TP}).status == 200
    s = the_server_span(exporter)
    assert s.trace_id == int(TRACE_ID, 16)
    assert s.parent_span_id == int(PARENT_ID, 16)
    assert s.remote_parent


def test_escaping_exception_passes_through_unchanged(patched, exporter):
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True):
        with pytest.raises(views.ViewError, match="view failed") as info:
            Client(raise_request_exception=False).get("/boom/")

        async def go() -> None:
            await AsyncClient(raise_request_exception=False).get("/boom/")

        with pytest.raises(views.ViewError, match="view failed") as ainfo:
            asyncio.run(go())
    for exc_info in (info, ainfo):
        # Raised where the view raised it, not re-created by pulsetrace.
        assert traceback.extract_tb(exc_info.tb)[-1].name == "boom"
    spans = server_spans(exporter)
    assert len(spans) == 2
    for s in spans:
        assert (s.name, s.status) == ("GET /boom/", "error")
        assert len([e for e in s.events if e["name"] == "exception"]) == 1


def test_patching_twice_is_harmless(patched, exporter, fetch):
    django_hook.patch()
    assert fetch("/users/5/").status == 200
    assert len(server_spans(exporter)) == 1
    django_hook.unpatch()
    assert not hasattr(BaseHandler.load_middleware, "__wrapped__")


def test_unpatch_stops_tracing(exporter):
    django_hook.patch()
    client = Client()
    assert client.get("/users/5/").status_code == 200  # builds a traced chain
    assert len(server_spans(exporter)) == 1
    django_hook.unpatch()
    django_hook.unpatch()
    assert not hasattr(BaseHandler.load_middleware, "__wrapped__")
    assert client.get("/users/5/").status_code == 200  # the chain built while patched
    assert wsgi_get("/users/5/").status == 200
    assert asgi_get("/boom/").status == 500
    assert server_spans(exporter) == []


def test_registry_switches_it_on(exporter):
    names = pulsetrace.contrib.instrument(pulsetrace.get_config(), ["django"])
    try:
        assert names == ["django"]
        assert "django" in pulsetrace.contrib.instrumented()
        assert wsgi_get("/users/9/").status == 200
        assert the_server_span(exporter).name == "GET /users/<int:pk>/"
    finally:
        pulsetrace.contrib.uninstrument(["django"])
    assert wsgi_get("/users/9/").status == 200
    assert server_spans(exporter) == []


def test_host_validation_still_works(exporter, fetch):
    bad = {"headers": {"host": "evil.example"}}
    without = fetch("/users/1/", **bad)
    assert without.status == 400
    django_hook.patch()
    try:
        traced = fetch("/users/1/", **bad)
    finally:
        django_hook.unpatch()
    assert (traced.status, traced.body) == (without.status, without.body)
    s = the_server_span(exporter)
    assert (s.name, s.status) == ("GET", "unset")
    assert s.attributes["http.response.status_code"] == 400


PATHS = ["/users/3/?page=1", "/boom/", "/nowhere/", "/stream/", "/blocked/"]


def test_pulsetrace_failure_leaves_the_response_untouched(exporter, fetch, monkeypatch):
    baseline = [fetch(p) for p in PATHS]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr("pulsetrace.contrib.asgi.http_server_span", broken)
    monkeypatch.setattr("pulsetrace.contrib.wsgi.wsgi_server_span", broken)
    django_hook.patch()
    try:
        got = [fetch(p) for p in PATHS]
    finally:
        django_hook.unpatch()
    for before, after in zip(baseline, got):
        assert (after.status, after.headers, after.body) == (
            before.status,
            before.headers,
            before.body,
        )
    assert _diag.internal_errors().get("django.start") == len(PATHS)
    assert server_spans(exporter) == []


def test_failure_while_finishing_still_ends_the_span(exporter, fetch, monkeypatch):
    baseline = fetch("/users/3/")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(_http, "set_status", broken)
    django_hook.patch()
    try:
        got = fetch("/users/3/")
    finally:
        django_hook.unpatch()
    assert (got.status, got.headers, got.body) == (
        baseline.status,
        baseline.headers,
        baseline.body,
    )
    assert _diag.internal_errors().get("django.finish") == 1
    assert the_server_span(exporter).name == "GET /users/<int:pk>/"


def test_real_wsgi_handler(patched, exporter):
    """Django's own WSGIHandler (what a WSGI server runs), streaming body."""
    from wsgiref.util import setup_testing_defaults

    from django.core.handlers.wsgi import WSGIHandler

    environ: dict[str, Any] = {"PATH_INFO": "/stream/", "HTTP_TRACEPARENT": TP}
    setup_testing_defaults(environ)
    environ["HTTP_HOST"] = "testserver"
    statuses = []
    body = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    assert server_spans(exporter) == []
    assert b"".join(body) == b"abc"
    assert server_spans(exporter) == []  # the server has not closed the body yet
    body.close()
    assert statuses == ["200 OK"]
    s = the_server_span(exporter)
    assert (s.name, s.trace_id) == ("GET /stream/", int(TRACE_ID, 16))
    assert s.attributes["network.protocol.version"] == "1.0"
    assert s.duration_ns >= 100_000_000


def test_real_asgi_handler(patched, exporter):
    """Django's own ASGIHandler (what an ASGI server runs), streaming body."""
    from django.core.handlers.asgi import ASGIHandler

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2",
        "method": "GET",
        "scheme": "https",
        "path": "/astream/",
        "query_string": b"session=s3cret",
        "headers": [(b"host", b"testserver"), (b"traceparent", TP.encode())],
        "client": ("10.0.0.1", 5000),
        "server": ("testserver", 443),
    }
    sent: list[dict[str, Any]] = []
    received = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        if len(received) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(10)  # a client that stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ASGIHandler()(scope, receive, send))
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"abc"
    s = the_server_span(exporter)
    assert (s.name, s.trace_id) == ("GET /astream/", int(TRACE_ID, 16))
    a = s.attributes
    assert (a["url.scheme"], a["server.port"], a["client.address"]) == ("https", 443, "10.0.0.1")
    assert a["url.query"] == "session=REDACTED"
    assert a["network.protocol.version"] == "2"
    assert s.duration_ns >= 100_000_000
