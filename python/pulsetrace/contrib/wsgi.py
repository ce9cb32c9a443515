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

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
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


class _Body:
    """The response iterable, passed through; ends the span when the body is
    exhausted or closed, whichever comes first."""

    __slots__ = ("_closed", "_iterable", "_span")

    def __init__(self, iterable: Iterable[bytes], span: Any) -> None:
        self._iterable = iterable
        self._span = span
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        # The span is current while the application produces each chunk, and
        # only then: a generator must not leave it set in the server's context
        # between chunks.
        it = iter(self._iterable)
        current = _runtime.CURRENT
        while True:
            token = current.set(self._span)
            try:
                chunk = next(it)
            except StopIteration:
                _reset(token)
                self._finish()
                return
            except BaseException as exc:
                _reset(token)
                _fail(self._span, exc)
                self._finish()
                raise
            _reset(token)
            yield chunk

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            _end(self._span)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def __del__(self) -> None:
        # A server that neither exhausts nor closes the body (a test client,
        # an aborted connection) still gets the span ended, late.
        if not self._closed:
            self._finish()


def _fail(span: Any, exc: BaseException) -> None:
    try:
        span.record_exception(exc, escaped=True)
        span.set_status("error", f"{type(exc).__qualname__}: {exc}")
    except Exception as inner:
        _diag.internal_error("wsgi.exception", inner)


def _end(span: Any) -> None:
    try:
        span.end()
    except Exception as exc:
        _diag.internal_error("wsgi.end", exc)


def traced_call(
    app: WSGIApp,
    environ: Environ,
    start_response: StartResponse,
    name_span: Optional[Callable[[Any], None]] = None,
) -> Iterable[bytes]:
    """Run ``app`` for one request inside a SERVER span. ``name_span(span)``,
    if given, is called when the response starts, to name it after the route."""
    tracer = _runtime.tracer()
    if not tracer.enabled:
        return app(environ, start_response)
    outer = _runtime.CURRENT.get()
    if getattr(outer, "kind", None) == "server" and outer.is_recording():
        # Already inside this request's SERVER span (a generic middleware
        # around a framework hook): name that span, do not nest a second one.
        return app(environ, _naming(outer, start_response, name_span))
    try:
        span = start_server_span(environ, tracer)
        token = _runtime.CURRENT.set(span)
    except Exception as exc:
        _diag.internal_error("wsgi.start", exc)
        return app(environ, start_response)

    def traced_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        try:
            _http.set_status(span, int(str(status)[:3]))
            if name_span is not None:
                name_span(span)
        except Exception as exc:
            _diag.internal_error("wsgi.start_response", exc)
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    try:
        result = app(environ, traced_start_response)
    except BaseException as exc:
        _fail(span, exc)
        _reset(token)
        _end(span)
        raise
    _reset(token)
    try:
        return _Body(result, span)
    except Exception as exc:
        _diag.internal_error("wsgi.body", exc)
        _end(span)
        return result


def _naming(span: Any, start_response: StartResponse, name_span: Any) -> StartResponse:
    if name_span is None:
        return start_response

    def naming_start_response(*args: Any) -> Any:
        try:
            name_span(span)
        except Exception as exc:
            _diag.internal_error("wsgi.name", exc)
        return start_response(*args)

    return naming_start_response


def _reset(token: Any) -> None:
    # A token made in another context cannot be reset here; nothing to undo.
    with contextlib.suppress(ValueError):
        _runtime.CURRENT.reset(token)


class PulsetraceMiddleware:
    """WSGI middleware: every request a SERVER span."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return traced_call(self.app, environ, start_response)
