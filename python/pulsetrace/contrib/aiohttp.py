"""aiohttp client: every request a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_AIOHTTP_ENABLED=false`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=aiohttp``). Supported: aiohttp 3.8
and later 3.x.

``ClientSession._request`` is wrapped (``session.get``, ``session.request``,
``aiohttp.request`` go through it), so one call is one span named after the
method (``GET``); the redirects it follows belong to that span, which
records the final status. Attributes: ``http.request.method``, ``url.full``
(base URL and ``params`` applied, credentials replaced by ``REDACTED``,
sensitive query values redacted), ``server.address``, ``server.port``,
``http.response.status_code``, ``network.protocol.version``. 4xx and 5xx are
errors (also when ``raise_for_status`` raises them); a connection error or
timeout (``ClientConnectorError``, ``asyncio.TimeoutError``, ...) is recorded
with ``error.type`` and re-raised unchanged.

``traceparent``/``tracestate`` go into a copy of the request's headers (the
caller's object is never modified) unless the caller, or the session's
default headers, set a ``traceparent``. The span ends when the response
headers have arrived: aiohttp reads the body afterwards.
"""

from __future__ import annotations

import importlib
from typing import Any

from pulsetrace import _diag
from pulsetrace.contrib import _client
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=3.8,<4"


def _describe_response(response: Any) -> tuple[Any, Any]:
    version = getattr(response, "version", None)
    if not version:
        return response.status, None
    text = f"{version[0]}.{version[1]}"
    return response.status, {"1.0": "1.0", "1.1": "1.1", "2.0": "2", "0.9": "0.9"}.get(text)


def _url(session: Any, args: Any, kwargs: Any) -> Any:
    raw = args[1] if len(args) > 1 else kwargs["str_or_url"]
    try:
        url = session._build_url(raw)
    except ValueError:  # aiohttp raises InvalidUrlClientError for it
        return raw
    params = kwargs.get("params")
    return url.extend_query(params) if params else url


def _method(args: Any, kwargs: Any) -> Any:
    return args[0] if args else kwargs["method"]


def _with_context(call: Any, session: Any, kwargs: Any) -> Any:
    """``kwargs`` with a copy of ``headers=`` carrying the trace context."""
    multidict = importlib.import_module("multidict")
    given = kwargs.get("headers")
    headers = multidict.CIMultiDict(given if given is not None else ())
    if _client.has_header(session.headers, "traceparent"):
        return kwargs
    call.inject(headers)
    return {**kwargs, "headers": headers}


def _status_of(exc: BaseException) -> Any:
    errors = importlib.import_module("aiohttp.client_exceptions")
    status = getattr(exc, "status", None)
    if isinstance(exc, errors.ClientResponseError) and isinstance(status, int) and status:
        return status
    return None


async def _request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    call = _client.start("aiohttp", lambda: (_method(args, kwargs), _url(instance, args, kwargs)))
    if call is None:
        return await wrapped(*args, **kwargs)
    try:
        kwargs = _with_context(call, instance, kwargs)
    except Exception as exc:
        _diag.internal_error("aiohttp.headers", exc)
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        try:
            status = _status_of(exc)
        except Exception as inner:
            _diag.internal_error("aiohttp.status", inner)
            status = None
        call.fail(exc, status)
        raise
    call.done(response, _describe_response)
    return response


_PATCHER = Patcher(
    "aiohttp", SUPPORTED, (Target("aiohttp.client", "ClientSession._request", _request),)
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
