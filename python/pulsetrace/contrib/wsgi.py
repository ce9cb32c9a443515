"""WSGI: a middleware that makes every request a SERVER span.

    from pulsetrace.contrib.wsgi import PulsetraceMiddleware
    app = PulsetraceMiddleware(app)

It continues an incoming ``traceparent``, records the response status (5xx
and unhandled exceptions are errors, 4xx are not), and ends the span when
the response body has been sent (``close()``), so streaming responses are
timed whole. Frameworks with routes (Flask, Django) name the span after the
route template; a bare WSGI app gets the method alone (bounded
cardinality). Nothing here can break the application: a failure inside
pulsetrace is counted and the request runs untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

from pulsetrace import _runtime
from pulsetrace._native import wsgi_call
from pulsetrace.contrib import _http

SUPPORTED = "PEP 3333"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def start_server_span(environ: Environ, tracer: Any) -> Any:
    """The SERVER span of a WSGI request (not yet current)."""
    raw_method = environ.get("REQUEST_METHOD") or "GET"
    method = _http.method_of(raw_method)
    scheme = environ.get("wsgi.url_scheme", "http")
    default_port = environ.get("SERVER_PORT")
    host, port = _http.split_host(
        environ.get("HTTP_HOST") or environ.get("SERVER_NAME"),
        int(default_port) if default_port and str(default_port).isdigit() else None,
    )
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    protocol = environ.get("SERVER_PROTOCOL", "")
    attrs = _http.server_attributes(
        method,
        raw_method,
        path or "/",
        environ.get("QUERY_STRING", ""),
        scheme,
        host,
        port,
        environ.get("REMOTE_ADDR"),
        environ.get("HTTP_USER_AGENT"),
        protocol.split("/", 1)[1] if "/" in protocol else None,
    )
    parent = tracer.extract(environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_TRACESTATE"))
    return tracer.start_span(
        _http.span_name(method, None), kind="server", attributes=attrs, parent=parent
    )


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
    return wsgi_call(_runtime.tracer(), app, environ, start_response, route)


class PulsetraceMiddleware:
    """WSGI middleware: every request a SERVER span."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return traced_call(self.app, environ, start_response)
