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

from typing import Any

from pulsetrace.contrib import _client
from pulsetrace.contrib._patcher import Patcher, Target, twins

SUPPORTED = ">=0.23,<0.29"


def _describe_response(response: Any) -> tuple[Any, Any]:
    version = response.extensions.get("http_version")
    return response.status_code, _client.protocol(version)


def _request_of(args: Any, kwargs: Any) -> Any:
    return args[0] if args else kwargs.get("request")


def _start(_instance: Any, args: Any, kwargs: Any) -> Any:
    request = _request_of(args, kwargs)
    call = _client.start("httpx", lambda: (request.method, request.url))
    if call is not None:
        call.inject(request.headers, restore=True)
    return call


def _done(call: Any, response: Any) -> None:
    call.done(response, _describe_response)


def _fail(call: Any, exc: BaseException) -> None:
    call.fail(exc)


_handle_request, _handle_async_request = twins(_start, _done, _fail)

_PATCHER = Patcher(
    "httpx",
    SUPPORTED,
    (
        Target("httpx", "HTTPTransport.handle_request", _handle_request),
        Target("httpx", "AsyncHTTPTransport.handle_async_request", _handle_async_request),
    ),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
