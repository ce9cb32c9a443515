"""httpx: every request sent over the network a CLIENT span, sync and async.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_HTTPX_ENABLED=false`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=httpx``). Supported: httpx 0.23 to
0.28.

The hook is on the network transports, ``HTTPTransport.handle_request`` and
``AsyncHTTPTransport.handle_async_request``, as OpenTelemetry's is: every
request that goes on the wire is a span, so a redirect or retry hop is a span
of its own (each carrying its own ``traceparent``), while in-process
transports (``ASGITransport``, ``WSGITransport``, ``MockTransport``, test
clients) are not traced as outbound calls. The span is named after the
method (``GET``), with ``http.request.method``, ``url.full`` (credentials
replaced by ``REDACTED``, sensitive query values redacted),
``server.address``, ``server.port``, ``http.response.status_code`` and
``network.protocol.version``. 4xx and 5xx are errors; a connection error or
timeout (``httpx.ConnectError``, ``httpx.ReadTimeout``, ...) is recorded with
``error.type`` and re-raised unchanged.

``traceparent``/``tracestate`` are added to the request unless the caller
set a ``traceparent`` (any case), and taken out of the ``Request`` again when
the transport returns. The span ends then: at the response headers (httpx
reads the body after the transport returns).
"""

from __future__ import annotations

import importlib
from typing import Any

from pulsetrace.contrib import _client

SUPPORTED = ">=0.23,<0.29"

_MARK = "__pulsetrace_patched__"


def _describe_response(response: Any) -> tuple[Any, Any]:
    version = response.extensions.get("http_version")
    return response.status_code, _client.protocol(version)


def _request_of(args: Any, kwargs: Any) -> Any:
    return args[0] if args else kwargs.get("request")


def _handle_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    request = _request_of(args, kwargs)
    call = _client.start("httpx", lambda: (request.method, request.url))
    if call is None:
        return wrapped(*args, **kwargs)
    call.inject(request.headers, restore=True)
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    call.done(response, _describe_response)
    return response


async def _handle_async_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    request = _request_of(args, kwargs)
    call = _client.start("httpx", lambda: (request.method, request.url))
    if call is None:
        return await wrapped(*args, **kwargs)
    call.inject(request.headers, restore=True)
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    call.done(response, _describe_response)
    return response


def _transports() -> tuple[Any, Any]:
    module = importlib.import_module("httpx")
    return module.HTTPTransport, module.AsyncHTTPTransport


def patch() -> None:
    """Instrument httpx's network transports (idempotent)."""
    sync, asynchronous = _transports()
    if getattr(sync, _MARK, False):
        return
    _client.wrap(sync, "handle_request", _handle_request)
    _client.wrap(asynchronous, "handle_async_request", _handle_async_request)
    setattr(sync, _MARK, True)


def unpatch() -> None:
    sync, asynchronous = _transports()
    if not getattr(sync, _MARK, False):
        return
    _client.unwrap(sync, "handle_request")
    _client.unwrap(asynchronous, "handle_async_request")
    delattr(sync, _MARK)
