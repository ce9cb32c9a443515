"""A response's status on a server span: one rule for every server
integration (the native WSGI path and the Python ones)."""

from __future__ import annotations

import pytest

import pulsetrace
from pulsetrace._native import http_response_status
from pulsetrace.contrib import flask as flask_hook

from conftest import finished, fresh


@pytest.fixture
def ended(exporter):
    """A server span given a response status, ended, as exported."""
    fresh(sample_rate=1.0)
    pulsetrace.add_exporter(exporter)

    def end(code: int, status: tuple[str, str] | None = None) -> pulsetrace.SpanData:
        span = pulsetrace.start_span("GET /x", kind="server")
        if status is not None:
            span.set_status(*status)
        http_response_status(span, code)
        span.end()
        (s,) = [s for s in finished(exporter) if s.span_id == span.span_id]
        return s

    return end


def test_a_5xx_is_an_error_with_its_code_and_a_4xx_is_not(ended):
    s = ended(503)
    assert (s.status, s.status_message) == ("error", "HTTP 503")
    assert s.attributes["http.response.status_code"] == 503
    s = ended(404)
    assert s.status == "unset" and s.attributes["http.response.status_code"] == 404


def test_an_exception_already_recorded_keeps_its_message(ended):
    s = ended(500, ("error", "RuntimeError: view failed"))
    assert (s.status, s.status_message) == ("error", "RuntimeError: view failed")
    # An error without a message of its own gets the code's.
    s = ended(500, ("error", ""))
    assert (s.status, s.status_message) == ("error", "HTTP 500")
    # An ok status is final.
    assert ended(500, ("ok", "")).status == "ok"


def test_flask_reports_the_exception_not_the_code(exporter):
    fresh(sample_rate=1.0)
    pulsetrace.add_exporter(exporter)
    flask = pytest.importorskip("flask")
    flask_hook.patch()
    try:
        from contrib.flask_app import app

        assert isinstance(app, flask.Flask)
        with app.test_client() as c:
            r = c.get("/boom")
            r.get_data()
            r.close()
        assert r.status_code == 500
    finally:
        flask_hook.unpatch()
    (s,) = [x for x in finished(exporter) if x.kind == "server"]
    assert s.status == "error"
    assert s.status_message == "RuntimeError: view failed"
    assert s.attributes["http.response.status_code"] == 500
