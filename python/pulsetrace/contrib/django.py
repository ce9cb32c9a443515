"""Django: every request a SERVER span named after its route.

Django 4.2 and later. Switched on by ``import pulsetrace.auto`` or
``pulsetrace-run`` (toggle: ``PULSETRACE_DJANGO_ENABLED=false``); nothing to
add to ``MIDDLEWARE``.
pulsetrace wraps each handler's middleware chain from the outside, under
WSGI and ASGI alike, so the span times every middleware, sees the responses
of middleware that answer early and the 500s Django makes of exceptions.

The span is named ``GET /users/<int:pk>/`` from the matched URL pattern
(never the raw path); a request that matches none (a 404, a redirect from
``APPEND_SLASH``, a rejected host) is named after its method alone. A 5xx or
an unhandled exception is an error (the exception is kept on the span), a
4xx is not. A streaming response (``StreamingHttpResponse``,
``FileResponse``) is timed until its body is finished, when the server
closes it. An incoming ``traceparent`` is continued. A request for an
excluded URL (``PULSETRACE_EXCLUDED_URLS``, else
``OTEL_PYTHON_DJANGO_EXCLUDED_URLS``, else ``OTEL_PYTHON_EXCLUDED_URLS``; by
default ``/health`` and what lies under it) gets no span, and its middleware chain runs under
pulsetrace's suppression context. A failure inside pulsetrace is counted
and the request runs untouched.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from typing import Any, Optional

import wrapt

from pulsetrace import _diag, _runtime
from pulsetrace._suppress import SUPPRESSED
from pulsetrace.contrib import _http, asgi, wsgi
from pulsetrace.contrib._patcher import Patcher, Target, twins

SUPPORTED = ">=4.2"

_SPAN = "_pulsetrace_span"
_RECORDED = "_pulsetrace_exception"
_DISPATCH_UID = "pulsetrace.contrib.django"

#: Chains wrapped while patched stay wrapped; after ``unpatch()`` they pass through.
_active = False


def _start(request: Any, tracer: Any) -> Any:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        # Under ASGI the request is read from its scope, as any ASGI app's.
        return asgi.start_server_span(scope, tracer, "django")
    # Django's META is the environ, with PATH_INFO replaced by the decoded
    # path: the path is read from ``request.path`` instead.
    return wsgi.start_server_span(request.META, tracer, request.path, "django")


def _route(request: Any) -> Optional[str]:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if not route or not isinstance(route, str):
        return None
    # ``re_path`` patterns: drop the anchors, keep the template readable.
    route = route.removeprefix("^")
    if route.endswith("$") and not route.endswith("\\$"):
        route = route[:-1]
    return route if route.startswith("/") else "/" + route


def _end(span: Any) -> None:
    try:
        span.end()
    except Exception as exc:
        _diag.internal_error("django.end", exc)


def _name(span: Any, request: Any) -> None:
    route = _route(request)
    if route is not None:
        span.update_name(_http.span_name(request.method, route))
        span.set_attribute("http.route", route)


def _finish(span: Any, request: Any, response: Any) -> None:
    """Name, status, and the end: now, or when a streaming body is closed."""
    try:
        _name(span, request)
        _http.set_status(span, int(response.status_code))
        if getattr(response, "streaming", False):
            # Run by ``response.close()``; or, if the server drops the
            # response without closing it, when it is collected.
            response._resource_closers.append(weakref.finalize(response, _end, span))
            return
    except Exception as exc:
        _diag.internal_error("django.finish", exc)
    _end(span)


def _escaped(span: Any, request: Any, exc: BaseException) -> None:
    """An exception left the middleware chain: keep it on the span."""
    try:
        _name(span, request)
        if getattr(request, _RECORDED, None) is not exc:
            span.record_exception(exc, escaped=True)
        if isinstance(exc, asyncio.CancelledError):
            return  # the client went away: not a server error
        span.set_status("error", f"{type(exc).__qualname__}: {exc}")
    except Exception as inner:
        _diag.internal_error("django.exception", inner)


def _reset(token: Any) -> None:
    try:
        _runtime.CURRENT.reset(token)
    except Exception as exc:
        _diag.internal_error("django.reset", exc)


def _begin(request: Any) -> Optional[tuple[Any, Any]]:
    """The request's span, made current; None when not tracing. An
    excluded URL gets no span (``(None, token)``): the chain runs with
    pulsetrace's suppression context set by ``token``."""
    if not _active:
        return None
    try:
        tracer = _runtime.tracer()
        if not tracer.enabled:
            return None
        span = _start(request, tracer)
        if span is None:
            return None, SUPPRESSED.set(True)
    except Exception as exc:
        _diag.internal_error("django.start", exc)
        return None
    try:
        setattr(request, _SPAN, span)
        return span, _runtime.CURRENT.set(span)
    except Exception as exc:
        _diag.internal_error("django.start", exc)
        _end(span)
        return None


def _chain_start(_instance: Any, args: Any, _kwargs: Any) -> Any:
    request = args[0]
    started = _begin(request)
    return None if started is None else (*started, request)


def _unsuppress(token: Any) -> None:
    try:
        SUPPRESSED.reset(token)
    except Exception as exc:
        _diag.internal_error("django.reset", exc)


def _chain_done(state: Any, response: Any) -> None:
    span, token, request = state
    if span is None:
        _unsuppress(token)
        return
    _reset(token)
    _finish(span, request, response)


def _chain_fail(state: Any, exc: BaseException) -> None:
    span, token, request = state
    if span is None:
        _unsuppress(token)
        return
    _reset(token)
    _escaped(span, request, exc)
    _end(span)


#: The wrappers of a handler's middleware chain, sync and async.
_CHAINS = twins(_chain_start, _chain_done, _chain_fail)


def _load_middleware(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        chain = instance._middleware_chain
        traced = isinstance(chain, wrapt.FunctionWrapper) and chain._self_wrapper in _CHAINS
        if chain is not None and not traced:
            is_async = bool(kwargs.get("is_async", args[0] if args else False))
            instance._middleware_chain = wrapt.FunctionWrapper(chain, _CHAINS[is_async])
    except Exception as exc:
        _diag.internal_error("django.load_middleware", exc)
    return result


def _record_exception(sender: Any, request: Any = None, **_: Any) -> None:
    """Django turned an exception into a 500: keep it on the request span."""
    try:
        span = getattr(request, _SPAN, None)
        exc = sys.exc_info()[1]
        if span is None or span.ended or exc is None or getattr(request, _RECORDED, None) is exc:
            return  # each middleware layer re-sends the signal for the same exception
        span.record_exception(exc, escaped=False)
        span.set_status("error", f"{type(exc).__qualname__}: {exc}")
        setattr(request, _RECORDED, exc)
    except Exception as inner:
        _diag.internal_error("django.exception", inner)


def _connect_signal() -> None:
    global _active
    from django.core.signals import got_request_exception  # type: ignore[import-untyped]

    got_request_exception.connect(_record_exception, weak=False, dispatch_uid=_DISPATCH_UID)
    _active = True


def _disconnect_signal() -> None:
    global _active
    from django.core.signals import got_request_exception

    _active = False
    got_request_exception.disconnect(dispatch_uid=_DISPATCH_UID)


# Every Django handler built from now on.
_PATCHER = Patcher(
    "django",
    SUPPORTED,
    (Target("django.core.handlers.base", "BaseHandler.load_middleware", _load_middleware),),
    on_patch=_connect_signal,
    on_unpatch=_disconnect_signal,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
