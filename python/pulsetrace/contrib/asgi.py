"""ASGI: a middleware that makes every HTTP request a SERVER span.

    from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware
    app = PulsetraceASGIMiddleware(app)

Its name and attributes are built by the native core, the same for every
server integration (WSGI, ASGI, Django, Starlette). It continues an incoming
``traceparent``; without one the request is a trace of its own, whatever
span is current where the server runs it. It records the response status (5xx
and unhandled exceptions are errors, 4xx are not), and ends the span when
the last chunk of the response body has been sent, so streaming responses
are timed whole. A request for an excluded URL (``PULSETRACE_EXCLUDED_URLS``;
by default ``/health`` and what lies under it) gets no span: it runs
untouched, under pulsetrace's suppression context. A request the client
abandons (the application returns without finishing the response, or is
cancelled) is ended all the same, not marked as an error. ``lifespan`` and
``websocket`` connections pass through
untouched.

The span is named after the route template (``GET /users/{id}``) when the
framework records one: ``route_of(scope)`` reads ``scope["route"]``, and a
framework integration passes its own (Starlette and FastAPI are instrumented
by ``pulsetrace.contrib.starlette``). A bare ASGI app gets the method alone
(bounded cardinality). Wrapping an app that is already instrumented adds no
second span: the framework's naming is used for the outer one. Nothing here
can break the application: a failure inside pulsetrace is counted and the
request runs untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, MutableMapping
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._native import http_server_span
from pulsetrace._suppress import SUPPRESSED
from pulsetrace.contrib import _http

SUPPORTED = "ASGI 3"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteOf = Callable[[Scope], Optional[str]]

#: Set in the scope of a traced request, so that a nested instrumented app
#: (a mounted sub-application) does not start a second SERVER span.
SCOPE_KEY = "pulsetrace.span"
#: A framework's ``route_of``, left in the scope by its (nested) middleware
#: for the outer one that owns the span: a framework knows its routes best.
ROUTE_OF_KEY = "pulsetrace.route_of"

_WANTED = (b"host", b"user-agent", b"traceparent", b"tracestate", b"x-request-id")


def route_of(scope: Scope) -> Optional[str]:
    """The route template the framework recorded in the scope, if any:
    ``scope["route"]`` as a string or as an object with a string ``path``."""
    route = scope.get("route")
    if isinstance(route, str):
        return route
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


_scope_route = route_of


def _headers(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers") or ():
        key = bytes(name).lower()
        if key in _WANTED:
            text = bytes(value).decode("latin-1")
            if key == b"tracestate" and key in found:
                found[key] = f"{found[key]},{text}"
            else:
                found.setdefault(key, text)
    return found


def start_server_span(scope: Scope, tracer: Any, integration: Optional[str] = None) -> Any:
    """The SERVER span of an ASGI ``http`` request (not yet current), or
    None for an excluded URL (the excluded URLs of ``integration``, the
    framework hook that asks, if any). Its name and attributes are the native
    core's (``pulsetrace_core::http``), the same as a WSGI request's: this
    only reads the scope."""
    headers = _headers(scope)
    server = scope.get("server") or (None, None)
    client = scope.get("client")
    span = http_server_span(
        tracer,
        scope.get("method"),
        scheme=scope.get("scheme"),
        host=headers.get(b"host"),
        server_name=server[0],
        server_port=server[1],
        # The path as received, when the server gives it: its bytes decode
        # as a WSGI server's do (``path`` has U+FFFD for bytes that are not
        # UTF-8).
        path=scope.get("raw_path") or scope.get("path"),
        query=scope.get("query_string"),
        client=client[0] if client else None,
        user_agent=headers.get(b"user-agent"),
        protocol=scope.get("http_version"),
        traceparent=headers.get(b"traceparent"),
        tracestate=headers.get(b"tracestate"),
        integration=integration,
    )
    request_id = headers.get(b"x-request-id")
    if request_id and span is not None:
        _runtime.REQUEST_ID.set((span.trace_id, request_id))
    return span


class _Request:
    """One traced request: watches what the application sends, names the
    span at response start, ends it when the response is complete."""

    __slots__ = ("_send", "ended", "named", "route_of", "scope", "span", "status", "trailers")

    def __init__(self, span: Any, scope: Scope, send: Send, route_of: RouteOf) -> None:
        self.span = span
        self.scope = scope
        self._send = send
        self.route_of = route_of
        self.status = 0
        self.trailers = False
        self.named = False
        self.ended = False

    async def send(self, message: Message) -> None:
        last = False
        try:
            last = self._observe(message)
        except Exception as exc:
            _diag.internal_error("asgi.send", exc)
        if not last:
            await self._send(message)
            return
        try:
            await self._send(message)
        finally:
            # A 5xx stays open until the application returns: Starlette's
            # ServerErrorMiddleware sends its 500 and then re-raises the
            # exception, which belongs on this span.
            if self.status < 500:
                self.end()

    def _observe(self, message: Message) -> bool:
        """Record what ``message`` says; True if it completes the response."""
        kind = message.get("type")
        if kind == "http.response.start":
            self.status = int(message.get("status") or 0)
            self.trailers = bool(message.get("trailers", False))
            _http.set_status(self.span, self.status)
            self.name()
            return False
        if kind == "http.response.body":
            return not message.get("more_body", False) and not self.trailers
        if kind == "http.response.trailers":
            return not message.get("more_trailers", False)
        return kind == "http.response.pathsend"

    def name(self) -> None:
        if self.named:
            return
        self.named = True
        try:
            route = (self.scope.get(ROUTE_OF_KEY) or self.route_of)(self.scope)
            if route:
                self.span.update_name(_http.span_name(self.scope.get("method"), route))
                self.span.set_attribute("http.route", route)
        except Exception as exc:
            _diag.internal_error("asgi.route", exc)

    def fail(self, exc: BaseException) -> None:
        if self.ended:
            return
        try:
            self.span.record_exception(exc, escaped=True)
            self.span.set_status("error", f"{type(exc).__qualname__}: {exc}")
        except Exception as inner:
            _diag.internal_error("asgi.exception", inner)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.name()
        try:
            self.span.end()
        except Exception as exc:
            _diag.internal_error("asgi.end", exc)


async def traced_call(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    route_of: RouteOf = route_of,
    integration: Optional[str] = None,
) -> None:
    """Run ``app`` for one ASGI connection, inside a SERVER span if it is an
    HTTP request not already traced further out. ``integration`` names the
    framework hook whose excluded URLs apply (None: the common list)."""
    if scope.get("type") != "http":
        await app(scope, receive, send)
        return
    if SCOPE_KEY in scope:  # traced further out
        if route_of is not _scope_route:
            with contextlib.suppress(Exception):
                scope[ROUTE_OF_KEY] = route_of
        await app(scope, receive, send)
        return
    tracer = _runtime.tracer()
    if not tracer.enabled:
        await app(scope, receive, send)
        return
    try:
        scope[SCOPE_KEY] = None  # a nested app does not try again, even if this fails
        span = start_server_span(scope, tracer, integration)
    except Exception as exc:
        _diag.internal_error("asgi.start", exc)
        await app(scope, receive, send)
        return
    if span is None:  # an excluded URL
        await _untraced(app, scope, receive, send)
        return
    try:
        request = _Request(span, scope, send, route_of)
        scope[SCOPE_KEY] = span
        token = _runtime.CURRENT.set(span)
    except Exception as exc:
        _diag.internal_error("asgi.start", exc)
        await app(scope, receive, send)
        return
    try:
        await app(scope, receive, request.send)
    except Exception as exc:
        request.fail(exc)
        raise
    finally:
        # Also reached when the application returns without completing the
        # response (the client went away) or is cancelled: end it anyway.
        with contextlib.suppress(ValueError):
            _runtime.CURRENT.reset(token)
        request.end()


async def _untraced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """An excluded request: no span, and nothing it calls is traced."""
    token = SUPPRESSED.set(True)
    try:
        await app(scope, receive, send)
    finally:
        with contextlib.suppress(ValueError):
            SUPPRESSED.reset(token)


class PulsetraceASGIMiddleware:
    """ASGI 3 middleware: every HTTP request a SERVER span. ``route_of(scope)``
    returns the route template once the framework has routed the request
    (``None``: unmatched, the span is named after the method alone)."""

    def __init__(self, app: ASGIApp, route_of: Optional[RouteOf] = None) -> None:
        self.app = app
        self.route_of: RouteOf = route_of or _scope_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await traced_call(self.app, scope, receive, send, self.route_of)
