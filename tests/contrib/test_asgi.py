"""The generic ASGI middleware, driven in-process by a raw ASGI 3 app."""

from __future__ import annotations

import asyncio
import time

import pytest

import pulsetrace
from pulsetrace import _diag, _runtime
from pulsetrace.contrib import _http
from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware

from conftest import finished, fresh

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Boom(Exception):
    pass


async def respond(send, status, body=b"ok"):
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def raw_app(scope, receive, send):
    """No framework: a few behaviours, chosen by the path."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    await receive()
    if path == "/ok":
        with pulsetrace.start_span("load user"):
            pass
        await respond(send, 200, b"hello")
    elif path == "/missing":
        await respond(send, 404, b"not found")
    elif path == "/fail":
        await respond(send, 500, b"server error")
    elif path == "/raise":
        raise Boom("app failed")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"chunk%d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/raise-mid-stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise Boom("stream broke")
    elif path == "/500-then-raise":
        # What Starlette's ServerErrorMiddleware does: send a 500, re-raise.
        await respond(send, 500, b"Internal Server Error")
        raise Boom("handler failed")
    elif path == "/abandoned":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        # The client went away: the app gives up without finishing.


def scope_for(path="/ok", query=b"", headers=(), method="GET", **extra):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"example.com:8080"), *headers],
        "client": ("10.1.2.3", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


def call(app, scope):
    """Run one ASGI connection; returns the messages the app sent."""
    sent = []
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def get(path="/ok", app=None, **kw):
    return call(app or PulsetraceASGIMiddleware(raw_app), scope_for(path, **kw))


def server_spans(exporter):
    return [s for s in finished(exporter) if s.kind == "server"]


def test_a_request_is_a_server_span_with_http_attributes(exporter):
    untraced = call(raw_app, scope_for("/ok", query=b"token=s3cret&page=2"))
    finished(exporter)
    exporter.clear()
    messages = get(
        "/ok", query=b"token=s3cret&page=2", headers=[(b"user-agent", b"t/1")], http_version="2"
    )
    assert messages == untraced
    (s,) = server_spans(exporter)
    assert (s.name, s.kind, s.status) == ("GET", "server", "unset")
    assert s.attributes == {
        "http.request.method": "GET",
        "url.path": "/ok",
        "url.query": "token=REDACTED&page=2",
        "url.scheme": "http",
        "server.address": "example.com",
        "server.port": 8080,
        "client.address": "10.1.2.3",
        "user_agent.original": "t/1",
        "network.protocol.version": "2",
        "http.response.status_code": 200,
    }
    (child,) = [x for x in finished(exporter) if x.name == "load user"]
    assert child.parent_span_id == s.span_id and child.trace_id == s.trace_id


def test_without_a_host_header_the_server_tuple_is_used(exporter):
    call(PulsetraceASGIMiddleware(raw_app), {**scope_for("/ok"), "headers": []})
    (s,) = server_spans(exporter)
    assert s.attributes["server.address"] == "127.0.0.1"
    assert s.attributes["server.port"] == 8000


def test_unknown_methods_are_bounded(exporter):
    get("/ok", method="FROB")
    (s,) = server_spans(exporter)
    assert s.name == "HTTP"
    assert s.attributes["http.request.method"] == "_OTHER"
    assert s.attributes["http.request.method_original"] == "FROB"


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [("/ok", 200, "unset"), ("/missing", 404, "unset"), ("/fail", 500, "error")],
)
def test_5xx_is_an_error_4xx_is_not(exporter, path, code, status):
    assert get(path)[0]["status"] == code
    (s,) = server_spans(exporter)
    assert s.attributes["http.response.status_code"] == code
    assert s.status == status


def test_incoming_traceparent_is_continued(exporter):
    get("/ok", headers=[(b"traceparent", TP.encode()), (b"tracestate", b"k=v")])
    (s,) = server_spans(exporter)
    assert f"{s.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert s.parent_span_id == 0x00F067AA0BA902B7
    assert s.remote_parent and s.trace_state == "k=v"


def test_a_streaming_response_is_timed_until_its_last_chunk(exporter):
    started = time.monotonic_ns()
    messages = get("/stream")
    elapsed = time.monotonic_ns() - started
    assert [m.get("body") for m in messages[1:]] == [b"chunk0", b"chunk1", b"chunk2", b""]
    (s,) = server_spans(exporter)
    # Three 50 ms pauses between chunks, within the call (clocks may differ a little).
    assert 140_000_000 <= s.duration_ns <= elapsed + 10_000_000


def test_an_exception_is_recorded_and_re_raised_unchanged(exporter):
    seen = []

    async def app(scope, receive, send):
        seen.append(Boom("app failed"))
        raise seen[0]

    with pytest.raises(Boom) as info:
        call(PulsetraceASGIMiddleware(app), scope_for("/raise"))
    assert info.value is seen[0]
    (s,) = server_spans(exporter)
    assert s.status == "error"
    (event,) = s.events
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == f"{Boom.__module__}.Boom"
    assert event["attributes"]["exception.message"] == "app failed"
    assert event["attributes"]["exception.escaped"] is True


def test_an_exception_mid_stream_is_an_error(exporter):
    with pytest.raises(Boom):
        get("/raise-mid-stream")
    (s,) = server_spans(exporter)
    assert s.status == "error"
    assert s.attributes["http.response.status_code"] == 200
    assert s.events[0]["attributes"]["exception.message"] == "stream broke"


def test_an_exception_raised_after_a_500_is_sent_is_kept_on_the_span(exporter):
    with pytest.raises(Boom):
        get("/500-then-raise")
    (s,) = server_spans(exporter)
    assert s.status == "error"
    assert s.events[0]["attributes"]["exception.message"] == "handler failed"


def test_an_abandoned_response_still_ends_the_span(exporter):
    get("/abandoned")
    (s,) = server_spans(exporter)
    assert s.status == "unset"
    assert s.attributes["http.response.status_code"] == 200


def test_the_span_is_current_only_during_the_request(exporter):
    inside = []

    async def app(scope, receive, send):
        inside.append(_runtime.CURRENT.get())
        await respond(send, 200)

    async def main():
        before = _runtime.CURRENT.get()
        await PulsetraceASGIMiddleware(app)(scope_for("/"), None, _discard)
        return before, _runtime.CURRENT.get()

    assert asyncio.run(main()) == (None, None)
    (s,) = server_spans(exporter)
    assert inside[0].span_id == s.span_id


async def _discard(message):
    pass


def test_route_of_names_the_span(exporter):
    class Route:
        path = "/users/{id}"

    async def routed(scope, receive, send):
        if scope["path"].startswith("/users/"):
            scope["route"] = Route()
        await respond(send, 200)

    app = PulsetraceASGIMiddleware(routed)
    call(app, scope_for("/users/42"))
    call(app, scope_for("/other"))
    custom = PulsetraceASGIMiddleware(routed, route_of=lambda scope: "/custom/{x}")
    call(custom, scope_for("/other", method="POST"))
    spans = server_spans(exporter)
    assert [s.name for s in spans] == ["GET /users/{id}", "GET", "POST /custom/{x}"]
    assert [s.attributes.get("http.route") for s in spans] == ["/users/{id}", None, "/custom/{x}"]


def test_nested_middleware_makes_one_span(exporter):
    get("/ok", app=PulsetraceASGIMiddleware(PulsetraceASGIMiddleware(raw_app)))
    assert len(server_spans(exporter)) == 1


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_other_connection_types_pass_through_untouched(exporter, kind):
    seen = []

    async def app(scope, receive, send):
        seen.append((scope, receive, send))

    scope = {"type": kind, "asgi": {"version": "3.0"}}
    scope_copy = dict(scope)

    async def receive():
        return {}

    async def send(message):
        pass

    asyncio.run(PulsetraceASGIMiddleware(app)(scope, receive, send))
    assert seen == [(scope, receive, send)]
    assert scope == scope_copy
    assert server_spans(exporter) == []


def test_lifespan_messages_flow_through(exporter):
    queue = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message["type"])

    asyncio.run(PulsetraceASGIMiddleware(raw_app)({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert server_spans(exporter) == []


def test_tracing_off_calls_the_app_directly(exporter):
    fresh(enabled=False)
    assert not _runtime.tracer().enabled
    assert get("/ok")[0]["status"] == 200
    seen = []

    async def app(scope, receive, send):
        seen.append((scope, receive, send))

    scope = scope_for("/ok")
    asyncio.run(PulsetraceASGIMiddleware(app)(scope, _discard, _discard))
    assert seen == [(scope, _discard, _discard)]
    assert scope == scope_for("/ok")
    assert server_spans(exporter) == []


def test_a_disabled_tracer_makes_no_spans(exporter):
    tracer = _runtime.tracer()
    tracer.enabled = False
    try:
        get("/ok")
    finally:
        tracer.enabled = True
    assert server_spans(exporter) == []


PATHS = ("/ok", "/missing", "/fail", "/stream", "/abandoned")


def test_pulsetrace_failures_never_change_the_response(exporter, monkeypatch):
    baseline = [get(p) for p in PATHS]

    def broken(*a, **k):
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr("pulsetrace.contrib.asgi.http_server_span", broken)
    _diag.reset()
    assert [get(p) for p in PATHS] == baseline
    with pytest.raises(Boom):
        get("/raise")
    assert _diag.internal_errors() == {"asgi.start": len(PATHS) + 1}
    assert pulsetrace.counters()["internal_errors"] == len(PATHS) + 1


def test_failures_while_sending_never_change_the_response(exporter, monkeypatch):
    baseline = [get(p) for p in PATHS]
    finished(exporter)
    exporter.clear()

    def broken(*a, **k):
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(_http, "set_status", broken)
    _diag.reset()
    assert [get(p) for p in PATHS] == baseline
    assert _diag.internal_errors() == {"asgi.send": len(PATHS)}
    # Every span still ended.
    assert len(server_spans(exporter)) == len(PATHS)
