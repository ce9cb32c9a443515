"""requests: every request a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_REQUESTS_ENABLED=false`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=requests``). Supported: requests 2.x.

``Session.send`` is wrapped (``requests.get`` and friends go through it), so
one call is one span named after the method (``GET``), with
``http.request.method``, ``url.full`` (credentials replaced by ``REDACTED``,
sensitive query values redacted), ``server.address``, ``server.port``,
``http.response.status_code`` and ``network.protocol.version``. Redirects
followed by that call belong to its span, which records the final status.
A 4xx or 5xx response is an error; a connection error or timeout is recorded
as an exception with ``error.type`` and re-raised unchanged.

``traceparent``/``tracestate`` are added to the request unless the caller
set a ``traceparent`` (any case), and taken out of the ``PreparedRequest``
again afterwards. urllib3 underneath does not start a second span. The span
ends when ``send`` returns: after the body for ordinary calls, at the
response headers with ``stream=True``.
"""

from __future__ import annotations

from typing import Any

from pulsetrace.contrib import _client
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=2.0,<3"


def _describe_response(response: Any) -> tuple[Any, Any]:
    raw = getattr(response, "raw", None)
    return response.status_code, _client.protocol(getattr(raw, "version", None))


def _send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    request = args[0] if args else kwargs.get("request")
    call = _client.start("requests", lambda: (request.method, request.url))
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


#: ``requests.sessions`` (the trigger) defines Session: complete even while the
#: ``requests`` package itself is still being imported.
_PATCHER = Patcher("requests", SUPPORTED, (Target("requests.sessions", "Session.send", _send),))
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
