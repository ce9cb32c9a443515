"""WSGI: which span is current, from the application call to the body's end.

The request span stays current from the application call until its body is
exhausted, closed or dropped (one context switch per request, not one per
chunk); the server's context then gets its previous value back. Servers that
iterate the body in another context or thread, or start a request while an
earlier body is still being sent, still get correct parents and no request
merged into another.
"""

from __future__ import annotations

import contextvars
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pulsetrace
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished


def environ(path: str = "/") -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}


def streaming_app(environ, start_response):
    """Each chunk and the body's close() start a span of their own."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    tag = environ["PATH_INFO"]

    def chunks():
        try:
            for i in range(3):
                with pulsetrace.start_span(f"chunk {tag} {i}"):
                    pass
                yield b"x"
        finally:
            with pulsetrace.start_span(f"generator end {tag}"):
                pass

    class Body:
        def __init__(self):
            self.it = chunks()

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.it)

        def close(self):
            self.it.close()
            with pulsetrace.start_span(f"close {tag}"):
                pass

    return Body()


def by_name(exporter):
    """Spans by name (the server spans, all named GET, under their path)."""
    return {
        s.attributes["url.path"] if s.kind == "server" else s.name: s for s in finished(exporter)
    }


def children_of(spans, server, tag):
    names = [f"chunk {tag} {i}" for i in range(3)] + [f"generator end {tag}", f"close {tag}"]
    return {n: spans[n].parent_span_id == server.span_id for n in names}


def test_chunks_and_close_run_inside_the_request_span(exporter):
    app = PulsetraceMiddleware(streaming_app)
    body = app(environ("/a"), lambda *a: None)
    # Between the application call and the body's end, the request span is
    # the current one (the server writes the chunks inside it).
    current = pulsetrace.current_span()
    assert current is not None and current.kind == "server"
    assert list(body) == [b"x"] * 3
    body.close()
    assert pulsetrace.current_span() is None
    spans = by_name(exporter)
    (server,) = [s for s in spans.values() if s.kind == "server"]
    assert all(children_of(spans, server, "/a").values())
    # The span covers the body's close().
    assert server.end_time_unix_nano >= spans["close /a"].end_time_unix_nano


def test_the_previous_current_span_comes_back(exporter):
    app = PulsetraceMiddleware(streaming_app)
    with pulsetrace.start_span("outer") as outer:
        body = app(environ("/b"), lambda *a: None)
        for _ in body:
            pass
        assert pulsetrace.current_span() is not outer  # the request span, until close
        body.close()
        assert pulsetrace.current_span() is outer
    assert pulsetrace.current_span() is None
    spans = by_name(exporter)
    # A request is a trace of its own: the server span never takes a parent
    # from the server's context.
    assert spans["/b"].parent_span_id is None


def test_a_body_dropped_without_close_gives_the_context_back(exporter):
    app = PulsetraceMiddleware(streaming_app)
    body = app(environ("/c"), lambda *a: None)
    assert next(iter(body)) == b"x"
    del body
    gc.collect()
    assert pulsetrace.current_span() is None
    spans = by_name(exporter)
    assert spans["/c"].parent_span_id is None
    assert spans["chunk /c 0"].parent_span_id == spans["/c"].span_id


def test_an_application_error_gives_the_context_back(exporter):
    def failing(environ, start_response):
        raise KeyError("app bug")

    app = PulsetraceMiddleware(failing)
    try:
        app(environ("/d"), lambda *a: None)
    except KeyError as e:
        assert e.args == ("app bug",)
    else:
        raise AssertionError("the application's exception was swallowed")
    assert pulsetrace.current_span() is None
    (s,) = finished(exporter)
    assert s.status == "error"


def test_a_body_iterated_in_a_copied_context(exporter):
    app = PulsetraceMiddleware(streaming_app)
    body = app(environ("/e"), lambda *a: None)

    def send():
        out = list(body)
        body.close()
        return out

    assert contextvars.copy_context().run(send) == [b"x"] * 3
    # The application's context still holds the request span (its token
    # belongs here); the next request in this context gives it back.
    body2 = app(environ("/f"), lambda *a: None)
    list(body2)
    body2.close()
    assert pulsetrace.current_span() is None
    spans = by_name(exporter)
    servers = {k: s for k, s in spans.items() if s.kind == "server"}
    assert set(servers) == {"/e", "/f"}
    assert servers["/f"].parent_span_id is None
    assert all(children_of(spans, servers["/e"], "/e").values())
    assert all(children_of(spans, servers["/f"], "/f").values())


def test_a_body_iterated_in_another_thread(exporter):
    app = PulsetraceMiddleware(streaming_app)
    body = app(environ("/g"), lambda *a: None)

    def send():
        assert pulsetrace.current_span() is None
        out = list(body)
        body.close()
        assert pulsetrace.current_span() is None
        return out

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(send).result() == [b"x"] * 3
    spans = by_name(exporter)
    (server,) = [s for s in spans.values() if s.kind == "server"]
    assert all(children_of(spans, server, "/g").values())


def test_a_request_started_while_an_earlier_body_is_sent_gets_its_own_span(exporter):
    # A server that interleaves requests in one context: the second request
    # is not taken for a middleware nested in the first one.
    app = PulsetraceMiddleware(streaming_app)
    first = app(environ("/h1"), lambda *a: None)
    second = app(environ("/h2"), lambda *a: None)
    first_chunks, second_chunks = list(first), list(second)
    first.close()
    second.close()
    assert first_chunks == second_chunks == [b"x"] * 3
    assert pulsetrace.current_span() is None
    spans = by_name(exporter)
    servers = {k: s for k, s in spans.items() if s.kind == "server"}
    assert set(servers) == {"/h1", "/h2"}
    assert servers["/h1"].trace_id != servers["/h2"].trace_id
    assert all(children_of(spans, servers["/h1"], "/h1").values())
    assert all(children_of(spans, servers["/h2"], "/h2").values())


def test_many_threads_each_serving_requests(exporter):
    app = PulsetraceMiddleware(streaming_app)
    errors: list[BaseException] = []

    def serve(n: int) -> None:
        try:
            for i in range(50):
                body = app(environ(f"/t{n}-{i}"), lambda *a: None)
                assert list(body) == [b"x"] * 3
                body.close()
                assert pulsetrace.current_span() is None
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = finished(exporter)
    spans = {s.name: s for s in every}
    servers = [s for s in every if s.kind == "server"]
    assert len(servers) == 400
    for s in servers:
        assert all(children_of(spans, s, s.attributes["url.path"]).values())


class Sentinel:
    """Something the application's body holds, to see it freed."""


def lazy_app(environ, start_response):
    """A generator application: it starts the response on the first chunk,
    so its body holds start_response (a reference cycle through the
    response pulsetrace returns)."""
    held = Sentinel()
    lazy_app.last = weakref.ref(held)

    def body():
        assert held is not None
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"made"

    return body()


def test_a_body_that_starts_the_response_lazily(exporter):
    app = PulsetraceMiddleware(lazy_app)
    body = app(environ("/lazy"), lambda *a: None)
    assert list(body) == [b"made"]
    body.close()
    (s,) = finished(exporter)
    assert s.attributes["http.response.status_code"] == 201


def test_a_dropped_body_holding_start_response_is_collected_and_ends(exporter):
    app = PulsetraceMiddleware(lazy_app)
    body = app(environ("/cycle"), lambda *a: None)
    held = lazy_app.last
    del body
    gc.collect()
    assert held() is None, "the application's body was not freed"
    assert pulsetrace.current_span() is None
    (s,) = finished(exporter)
    assert s.attributes["url.path"] == "/cycle"
