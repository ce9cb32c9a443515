"""A panic inside pulsetrace never reaches the application: at every entry
point it is caught, counted in ``internal_errors``, logged once per place
(rate limited), and the call proceeds as if the value were dropped (a span
API call), with a no-op span (``start_span``), untraced (a WSGI request), or
as a ``RuntimeError`` for pulsetrace's own plumbing, which catches it.

Panics are injected through ``pulsetrace._native.inject_panic(place)``,
which makes the guard of ``place`` panic inside its body."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import pulsetrace
from pulsetrace import _diag, _native, _runtime
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def inject() -> Iterator[Callable[[str], None]]:
    yield _native.inject_panic
    _native.inject_panic(None)
    # A request span left current by a failed restore (wsgi.restore) would
    # otherwise parent the next test's spans.
    _runtime.CURRENT.set(None)


class AppError(Exception):
    pass


def request(app: Any) -> tuple[list[bytes], list[str]]:
    statuses: list[str] = []
    body = PulsetraceMiddleware(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "wsgi.url_scheme": "http"},
        lambda status, headers, exc_info=None: statuses.append(status),
    )
    chunks = list(body)
    if hasattr(body, "close"):
        body.close()
    return chunks, statuses


def ok_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [])
    return [b"ok"]


class Statement:
    rowcount = 3


def client_call() -> Any:
    """A statement through a native ClientCall (what the sqlite3 hook runs)."""
    call = _native.ClientCall(_runtime.TRACER, lambda t, s, p: (s, p), "rows", lambda s, e: None)
    return call.call(Statement(), "SELECT 1", (1,), "SELECT", (("db.system.name", "sqlite"),))


def in_span(call: Callable[[pulsetrace.Span], Any]) -> Any:
    """``call(span)`` inside a span with one attribute."""
    with pulsetrace.start_span("op", attributes={"kept": 1}) as span:
        return call(span)


def is_current(span: pulsetrace.Span) -> bool:
    return pulsetrace.current_span() is span


def injected_headers(span: pulsetrace.Span) -> dict[str, str]:
    headers: dict[str, str] = {}
    pulsetrace.inject(headers)
    return headers


def recorded_count() -> int:
    h = pulsetrace.Histogram()
    h.record(5)
    return h.count


OK_RESPONSE = ([b"ok"], ["503 Service Unavailable"])

# place -> (what the application does, what it must still get)
CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], bool]]] = {
    "tracer.start_span": (
        lambda: in_span(lambda s: s.set_attribute("a", 1) or s),
        lambda span: isinstance(span, pulsetrace.Span) and not span.is_recording(),
    ),
    "attributes": (lambda: in_span(lambda s: s.attributes), lambda a: a == {}),
    "span.set_attribute": (lambda: in_span(lambda s: s.set_attribute("a", 1)), lambda r: r is None),
    "span.set_attributes": (lambda: in_span(lambda s: s.set_attributes({"a": 1})), lambda r: True),
    "span.set_status": (lambda: in_span(lambda s: s.set_status("error", "d")), lambda r: True),
    "span.update_name": (lambda: in_span(lambda s: s.update_name("new")), lambda r: True),
    "span.add_event": (lambda: in_span(lambda s: s.add_event("e", {"a": 1})), lambda r: True),
    "span.add_link": (
        lambda: in_span(lambda s: s.add_link(pulsetrace.SpanContext(1, 2))),
        lambda r: True,
    ),
    "span.record_exception": (
        lambda: in_span(lambda s: s.record_exception(AppError("x"))),
        lambda r: True,
    ),
    "span.attributes": (lambda: in_span(lambda s: s.attributes), lambda a: a == {}),
    "span.enter": (lambda: in_span(is_current), lambda current: current is False),
    "span.end": (lambda: pulsetrace.start_span("op").end(), lambda r: r is None),
    "tracer.extract": (
        lambda: pulsetrace.extract({"traceparent": TRACEPARENT}),
        lambda c: c is None,
    ),
    "tracer.current_span": (lambda: in_span(injected_headers), lambda h: h == {}),
    "histogram.record": (recorded_count, lambda count: count == 0),
    "client.start": (client_call, lambda r: r == ("SELECT 1", (1,))),
    "client.end": (client_call, lambda r: r == ("SELECT 1", (1,))),
    "wsgi.start": (lambda: request(ok_app), lambda r: r == OK_RESPONSE),
    "wsgi.status": (lambda: request(ok_app), lambda r: r == OK_RESPONSE),
    "wsgi.restore": (lambda: request(ok_app), lambda r: r == OK_RESPONSE),
    "wsgi.end": (lambda: request(ok_app), lambda r: r == OK_RESPONSE),
}


@pytest.mark.parametrize("place", sorted(CASES))
def test_a_panic_at_an_entry_point_is_counted_logged_and_the_call_proceeds(
    place, inject, exporter, caplog
):
    call, still_gets = CASES[place]
    caplog.set_level(logging.WARNING, logger="pulsetrace")
    inject(place)
    results = []
    for _ in range(2):
        try:
            results.append(call())
        except BaseException as exc:  # a panic is a BaseException: catch them all
            pytest.fail(f"{type(exc).__module__}.{type(exc).__qualname__} reached the caller")
    inject(None)
    assert all(still_gets(r) for r in results), results
    assert _diag.internal_errors() == {place: 2}
    assert pulsetrace.counters()["internal_errors"] == 2
    logged = [r for r in caplog.records if f"panicked in {place}" in r.getMessage()]
    assert len(logged) == 1  # then rate limited
    # The agent goes on working.
    with pulsetrace.start_span("after", attributes={"a": 1}) as span:
        span.set_attribute("b", 2)
    (after,) = [s for s in finished(exporter) if s.name == "after"]
    assert after.attributes == {"a": 1, "b": 2}


def test_a_panic_while_an_exception_leaves_the_span_still_ends(inject, exporter):
    inject("span.exit.error")
    with pytest.raises(AppError) as info, pulsetrace.start_span("fails") as span:
        raise AppError("own")
    inject(None)
    assert str(info.value) == "own"
    assert pulsetrace.current_span() is None and span.ended
    (s,) = finished(exporter)
    assert s.events == []  # the exception could not be recorded
    assert _diag.internal_errors() == {"span.exit.error": 1}


def test_a_panic_in_exit_still_ends_the_span_and_restores_the_context(inject, exporter):
    with pulsetrace.start_span("outer") as outer:
        inject("span.exit")
        with pytest.raises(AppError), pulsetrace.start_span("inner"):
            raise AppError("own")
        inject(None)
        assert pulsetrace.current_span() is outer
    assert {s.name for s in finished(exporter)} == {"outer", "inner"}


def test_a_panic_recording_a_wsgi_error_lets_the_applications_error_through(inject, exporter):
    def failing(environ: Any, start_response: Any) -> Any:
        raise AppError("own")

    inject("wsgi.error")
    with pytest.raises(AppError):
        request(failing)
    inject(None)
    (s,) = finished(exporter)
    assert s.kind == "server" and s.events == []
    assert _diag.internal_errors() == {"wsgi.error": 1}


def test_a_panic_in_the_agents_plumbing_is_an_exception_it_catches(inject, exporter):
    with pulsetrace.start_span("kept"):
        pass
    inject("tracer.drain_batch")
    assert pulsetrace.flush(timeout=5) in (True, False)  # never raises
    inject(None)
    assert "export.drain" in _diag.internal_errors()
    assert [s.name for s in finished(exporter)] == ["kept"]  # exported by the next drain
    inject("tracer.counters")
    with pytest.raises(RuntimeError, match="panicked in tracer.counters"):
        _runtime.tracer().counters()
    inject(None)
