"""urllib3: every request a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_URLLIB3_ENABLED=false`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=urllib3``). Supported: urllib3 1.26
and 2.x.

Both ``PoolManager.urlopen`` (``urllib3.request``, ``PoolManager.request``,
proxies) and ``HTTPConnectionPool.urlopen`` (pools used directly) are
wrapped; the outermost call of a request starts the span and the calls it
makes itself (retries, redirects, the pool under the manager) pass through,
so one logical request is one span named after the method (``GET``), with
the final status. Attributes: ``http.request.method``, ``url.full``
(credentials replaced by ``REDACTED``, sensitive query values redacted),
``server.address``, ``server.port``, ``http.response.status_code``,
``network.protocol.version``. 4xx and 5xx are errors; a connection error or
timeout (``MaxRetryError``, ``NewConnectionError``, ...) is recorded with
``error.type`` and re-raised unchanged.

``traceparent``/``tracestate`` go into a copy of the request's headers (the
caller's dict is never modified) unless the caller set a ``traceparent``.
Under requests, requests' span covers the call and urllib3 adds none. The
span ends when ``urlopen`` returns: after the body by default, at the
response headers with ``preload_content=False``.
"""

from __future__ import annotations

import importlib
from typing import Any

from pulsetrace import _diag
from pulsetrace.contrib import _client
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=1.26,<3"


def _describe_response(response: Any) -> tuple[Any, Any]:
    return response.status, _client.protocol(getattr(response, "version", None))


def _injected(call: Any, headers: Any) -> Any:
    """A copy of the headers urllib3 would send, with the trace context: the
    caller's object is never modified."""
    if headers is None:
        headers = {}
    elif isinstance(headers, dict):
        headers = dict(headers)
    else:
        headers = importlib.import_module("urllib3._collections").HTTPHeaderDict(headers)
    call.inject(headers)
    return headers


def _pool_url(pool: Any, url: str) -> str:
    if "://" in url:  # absolute form (through a proxy)
        return url
    host = pool.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = f":{pool.port}" if pool.port else ""
    return f"{pool.scheme}://{host}{port}{url}"


def _arg(args: Any, kwargs: Any, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


def _run(call: Any, wrapped: Any, args: Any, kwargs: Any) -> Any:
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    call.done(response, _describe_response)
    return response


def _manager_urlopen(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    # PoolManager.urlopen(method, url, redirect=True, **kw): headers by name
    # only; missing means the manager's, None the pool's (always empty).
    call = _client.start(
        "urllib3", lambda: (_arg(args, kwargs, 0, "method"), _arg(args, kwargs, 1, "url"))
    )
    if call is None:
        return wrapped(*args, **kwargs)
    try:
        given = kwargs.get("headers", instance.headers)
        kwargs = {**kwargs, "headers": _injected(call, given)}
    except Exception as exc:
        _diag.internal_error("urllib3.headers", exc)
    return _run(call, wrapped, args, kwargs)


def _pool_urlopen(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    # HTTPConnectionPool.urlopen(method, url, body=None, headers=None, ...):
    # None means the pool's headers.
    def describe() -> tuple[Any, Any]:
        url = _pool_url(instance, _arg(args, kwargs, 1, "url"))
        return _arg(args, kwargs, 0, "method"), url

    call = _client.start("urllib3", describe)
    if call is None:
        return wrapped(*args, **kwargs)
    try:
        given = args[3] if len(args) > 3 else kwargs.get("headers")
        headers = _injected(call, instance.headers if given is None else given)
        if len(args) > 3:
            args = (*args[:3], headers, *args[4:])
        else:
            kwargs = {**kwargs, "headers": headers}
    except Exception as exc:
        _diag.internal_error("urllib3.headers", exc)
    return _run(call, wrapped, args, kwargs)


_PATCHER = Patcher(
    "urllib3",
    SUPPORTED,
    (
        Target("urllib3.poolmanager", "PoolManager.urlopen", _manager_urlopen),
        Target("urllib3.connectionpool", "HTTPConnectionPool.urlopen", _pool_urlopen),
    ),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
