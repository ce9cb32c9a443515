"""urllib.request: every ``urlopen`` of an http(s) URL a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_URLLIB_ENABLED=false`` or
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=urllib``). Supported: the standard
library of Python 3.9 and later.

``OpenerDirector.open`` is wrapped (``urlopen`` and custom openers go
through it). The outermost call starts the span and the redirects it follows
pass through, so one ``urlopen`` is one span named after the method
(``GET``), with ``http.request.method``, ``url.full`` (credentials replaced
by ``REDACTED``, sensitive query values redacted), ``server.address``,
``server.port``, ``http.response.status_code`` and
``network.protocol.version``. A 4xx or 5xx (raised by urllib as
``HTTPError``) is an error with ``error.type`` set to the status; a
connection error or timeout (``URLError``, ``TimeoutError``) is recorded
with ``error.type`` and re-raised unchanged. Other schemes (``file:``,
``data:``, ``ftp:``) are not traced.

``traceparent``/``tracestate`` are added to the ``Request`` unless the
caller set a ``traceparent`` (any case), and taken out again when ``open``
returns. The span ends then, at the response headers: urllib reads the body
after ``open`` returns.
"""

from __future__ import annotations

import importlib
from typing import Any

from pulsetrace import _diag
from pulsetrace.contrib import _client
from pulsetrace.contrib._patcher import Patcher, Target

#: The standard library: no version check.
SUPPORTED = None


def _describe_response(response: Any) -> tuple[Any, Any]:
    status = getattr(response, "status", None)
    return status, _client.protocol(getattr(response, "version", None))


def _request(args: Any, kwargs: Any) -> Any:
    """The ``Request`` that ``open`` will send (built from a URL string as
    ``open`` builds it), or None for anything not traced."""
    urllib_request = importlib.import_module("urllib.request")
    fullurl = args[0] if args else kwargs.get("fullurl")
    if isinstance(fullurl, str):
        try:
            request = urllib_request.Request(fullurl)
        except Exception:  # the application's error: ``open`` raises it unchanged
            return None
    elif isinstance(fullurl, urllib_request.Request):
        request = fullurl
    else:
        return None
    return request if request.type in ("http", "https") else None


def _method(request: Any, args: Any, kwargs: Any) -> str:
    data = args[1] if len(args) > 1 else kwargs.get("data")
    if data is not None and request.method is None:
        return "POST"
    return str(request.get_method())


def _open(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _client.ACTIVE.get():  # a redirect inside a traced open, or a nested client
        return wrapped(*args, **kwargs)
    try:
        request = _request(args, kwargs)
    except Exception as exc:
        _diag.internal_error("urllib.request", exc)
        request = None
    if request is None:
        return wrapped(*args, **kwargs)
    call = _client.start("urllib", lambda: (_method(request, args, kwargs), request.full_url))
    if call is None:
        return wrapped(*args, **kwargs)
    try:
        if not _client.has_header(request.unredirected_hdrs, "traceparent"):
            call.inject(request.headers, restore=True)
        if args:
            args = (request, *args[1:])
        else:
            kwargs = {**kwargs, "fullurl": request}
    except Exception as exc:
        _diag.internal_error("urllib.inject", exc)
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        status = getattr(exc, "code", None) if _is_http_error(exc) else None
        call.fail(exc, status if isinstance(status, int) else None)
        raise
    call.done(response, _describe_response)
    return response


def _is_http_error(exc: BaseException) -> bool:
    return isinstance(exc, importlib.import_module("urllib.error").HTTPError)


_PATCHER = Patcher("urllib", SUPPORTED, (Target("urllib.request", "OpenerDirector.open", _open),))
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
