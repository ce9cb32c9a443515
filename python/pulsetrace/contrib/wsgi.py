"""WSGI: a middleware that makes every request a SERVER span.

    from pulsetrace.contrib.wsgi import PulsetraceMiddleware
    app = PulsetraceMiddleware(app)

It continues an incoming ``traceparent``, records the response status (5xx
and unhandled exceptions are errors, 4xx are not), and ends the span when
the response body has been sent (``close()``), so streaming responses are
timed whole. Frameworks with routes (Flask, Django) name the span after the
route template; a bare WSGI app gets the method alone (bounded
cardinality). A request for an excluded URL (``PULSETRACE_EXCLUDED_URLS``;
by default ``/health`` and what lies under it) gets no span: its
application call runs untouched, under pulsetrace's suppression context.
Nothing here can break the application: a failure inside pulsetrace is
counted and the request runs untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

from pulsetrace import _runtime
from pulsetrace._native import wsgi_call, wsgi_server_span

SUPPORTED = "PEP 3333"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def start_server_span(
    environ: Environ, tracer: Any, path: Optional[str] = None, integration: Optional[str] = None
) -> Any:
    """The SERVER span of a WSGI request (not yet current): the one the
    native request path starts, named and given its attributes by the core
    (``pulsetrace_core::http``). ``path``, if given, is the request's path
    as a framework decoded it, in place of ``SCRIPT_NAME`` + ``PATH_INFO``.
    None for an excluded URL (the request gets no span; the excluded URLs
    of ``integration``, the framework hook that asks, if any)."""
    span = wsgi_server_span(tracer, environ, path, integration)
    if span is not None:
        _note_request_id(environ, span.trace_id)
    return span


def _note_request_id(environ: Environ, trace_id: int) -> None:
    """Record the request's ``X-Request-ID`` for the log lines of trace
    ``trace_id`` (0: the trace the native path is about to start); an
    environ that raises records none."""
    try:
        value = environ.get("HTTP_X_REQUEST_ID")
    except Exception:
        value = None
    _runtime.REQUEST_ID.set((trace_id, value) if isinstance(value, str) and value else None)


def traced_call(
    app: WSGIApp,
    environ: Environ,
    start_response: StartResponse,
    route: Optional[Callable[[], Optional[str]]] = None,
) -> Iterable[bytes]:
    """Run ``app`` for one request inside a SERVER span. ``route()``, if
    given, is called when the response starts and returns the route template
    (or None): the span is then named ``METHOD route``, with ``http.route``.

    The request path is native (``pulsetrace._native.wsgi_call``): the span
    is built from the environ and is the current span from the application
    call until the body ends: when it is closed (or exhausted, if the
    application's body has no ``close()``)."""
    _note_request_id(environ, 0)  # the native path records no header
    return wsgi_call(_runtime.tracer(), app, environ, start_response, route)


class PulsetraceMiddleware:
    """WSGI middleware: every request a SERVER span."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return traced_call(self.app, environ, start_response)
