"""Flask: route-named SERVER spans, errors, streaming, propagation, safety."""

from __future__ import annotations

import gc
import weakref

import pytest

import pulsetrace
from pulsetrace.contrib import flask as flask_hook

from conftest import finished, fresh

flask = pytest.importorskip("flask")

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def app(exporter):
    flask_hook.patch()
    from contrib.flask_app import app

    yield app
    flask_hook.unpatch()


def get(app, path, **kw):
    with app.test_client() as c:
        r = c.get(path, **kw)
        body = r.get_data()
        r.close()
        return r.status_code, body


def server_spans(exporter):
    return [s for s in finished(exporter) if s.kind == "server"]


def test_spans_are_named_after_the_route_template(app, exporter):
    assert get(app, "/users/42?token=s3cret&page=2", headers={"User-Agent": "t/1"})[0] == 200
    (s,) = server_spans(exporter)
    assert s.name == "GET /users/<int:user_id>"
    a = s.attributes
    assert a["http.route"] == "/users/<int:user_id>"
    assert a["http.request.method"] == "GET"
    assert a["http.response.status_code"] == 200
    assert a["url.path"] == "/users/42"
    assert a["url.query"] == "token=REDACTED&page=2"
    assert a["url.scheme"] == "http"
    assert a["server.address"] == "localhost"
    assert a["user_agent.original"] == "t/1"
    assert s.status == "unset"
    (child,) = [x for x in finished(exporter) if x.name == "load user"]
    assert child.parent_span_id == s.span_id


def test_errors_and_client_errors(app, exporter):
    assert get(app, "/boom")[0] == 500
    assert get(app, "/missing")[0] == 404
    assert get(app, "/no/such/route")[0] == 404
    spans = {s.name: s for s in server_spans(exporter)}
    boom = spans["GET /boom"]
    assert boom.status == "error"
    assert boom.events[0]["attributes"]["exception.type"] == "RuntimeError"
    assert boom.events[0]["attributes"]["exception.message"] == "view failed"
    assert spans["GET /missing"].status == "unset"
    # An unmatched path is named after the method alone (bounded cardinality).
    assert spans["GET"].attributes["http.response.status_code"] == 404


def test_incoming_traceparent_is_continued(app, exporter):
    get(app, "/users/1", headers={"traceparent": TP, "tracestate": "k=v"})
    (s,) = server_spans(exporter)
    assert f"{s.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert s.parent_span_id == 0x00F067AA0BA902B7
    assert s.remote_parent and s.trace_state == "k=v"


def test_streaming_responses_end_when_the_body_is_sent(app, exporter):
    status, body = get(app, "/stream")
    assert status == 200 and body.count(b"chunk") == 3
    (s,) = server_spans(exporter)
    assert s.duration_ns >= 140_000_000


def test_patching_twice_is_harmless_and_unpatch_removes_it(app, exporter):
    flask_hook.patch()
    get(app, "/users/1")
    assert len(server_spans(exporter)) == 1
    flask_hook.unpatch()
    exporter.clear()
    get(app, "/users/1")
    assert server_spans(exporter) == []
    flask_hook.patch()


def test_pulsetrace_failures_never_change_the_response(app, exporter, monkeypatch):
    baseline = [get(app, p) for p in ("/users/7", "/boom", "/stream")]

    def broken(*a, **k):
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(flask_hook, "_route", broken)
    # The app's installed fast path holds the namer it was made with: the
    # next request goes through the class hook again and installs one with
    # the broken namer (so both paths run it).
    vars(app).pop("wsgi_app", None)
    assert [get(app, p) for p in ("/users/7", "/boom", "/stream")] == baseline
    assert pulsetrace._diag.internal_errors()["wsgi.name"] == 3
    # The spans still end, with their status.
    assert len(server_spans(exporter)) == 6


def test_a_strange_environ_never_breaks_the_request(app, exporter):
    with app.test_client() as c:
        r = c.get("/users/3", environ_overrides={"SERVER_PORT": "not-a-port", "HTTP_HOST": "[::1"})
        assert r.status_code == 200
        r.close()
    (s,) = server_spans(exporter)
    assert s.name == "GET /users/<int:user_id>"


def test_tracing_off_means_no_spans(app, exporter):
    fresh(enabled=False)
    get(app, "/users/1")
    assert server_spans(exporter) == []


def test_the_app_is_freed_when_dropped(exporter):
    from pulsetrace._native import TracedWsgiApp

    flask_hook.patch()
    try:
        app = flask.Flask("temporary")
        app.route("/")(lambda: "ok")
        get(app, "/")
        get(app, "/")
        # It holds the native bound method installed by the first request.
        assert isinstance(vars(app)["wsgi_app"], TracedWsgiApp)
        ref = weakref.ref(app)
        del app
        gc.collect()
        assert ref() is None
    finally:
        flask_hook.unpatch()


def test_a_generic_middleware_around_flask_gives_one_span(app, exporter):
    from pulsetrace.contrib.wsgi import PulsetraceMiddleware

    wrapped = PulsetraceMiddleware(app.wsgi_app)
    app.wsgi_app = wrapped
    try:
        assert get(app, "/users/5")[0] == 200
    finally:
        app.wsgi_app = wrapped.app
    (s,) = server_spans(exporter)
    assert s.name == "GET /users/<int:user_id>"


def _one_span_per_request(exporter, n):
    spans = server_spans(exporter)
    assert len(spans) == n
    assert all(s.name == "GET /users/<int:user_id>" for s in spans)


def test_the_first_request_installs_a_native_bound_wsgi_app(app, exporter):
    from pulsetrace._native import TracedWsgiApp

    vars(app).pop("wsgi_app", None)
    assert not isinstance(app.wsgi_app, TracedWsgiApp)
    for _ in range(3):
        assert get(app, "/users/1")[0] == 200
    fast = app.wsgi_app
    assert isinstance(fast, TracedWsgiApp)
    _one_span_per_request(exporter, 3)
    # It reads as the bound method it stands for.
    assert fast.__self__ is app
    assert fast.__func__ is flask.Flask.wsgi_app.__wrapped__
    assert fast.__name__ == "wsgi_app"
    assert fast.__wrapped__.__self__ is app
    assert "wsgi_app" in repr(fast)
    # A call that is not a WSGI call reaches the method untouched.
    with pytest.raises(TypeError):
        fast({"REQUEST_METHOD": "GET"})
    # unpatch() takes it away with the class hook.
    flask_hook.unpatch()
    assert "wsgi_app" not in vars(app)
    flask_hook.patch()


def test_a_subclass_wsgi_app_and_user_middleware_are_left_in_place(exporter):
    from pulsetrace._native import TracedWsgiApp

    flask_hook.patch()
    try:
        calls = []

        class App(flask.Flask):
            def wsgi_app(self, environ, start_response):
                calls.append(environ["PATH_INFO"])
                return super().wsgi_app(environ, start_response)

        sub = App("sub")
        sub.route("/users/<int:user_id>")(lambda user_id: "ok")
        for _ in range(2):
            assert get(sub, "/users/2")[0] == 200
        assert calls == ["/users/2", "/users/2"], "the subclass's own wsgi_app still runs"
        assert "wsgi_app" not in vars(sub)

        plain = flask.Flask("plain")
        plain.route("/users/<int:user_id>")(lambda user_id: "ok")
        seen = []
        inner = plain.wsgi_app

        def middleware(environ, start_response):
            seen.append(1)
            return inner(environ, start_response)

        plain.wsgi_app = middleware
        for _ in range(2):
            assert get(plain, "/users/3")[0] == 200
        assert plain.wsgi_app is middleware and seen == [1, 1]
        assert not isinstance(plain.wsgi_app, TracedWsgiApp)
        _one_span_per_request(exporter, 4)
    finally:
        flask_hook.unpatch()
