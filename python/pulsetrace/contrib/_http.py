"""What inbound HTTP hooks share: span names, method normalisation, query
redaction and status handling. Every rule is the native core's
(``pulsetrace_core::http``), so that each server integration (WSGI, ASGI,
Django, Starlette, Flask) and the HTTP client hooks report a request alike;
the server span itself is built natively (``asgi.start_server_span``,
``wsgi.start_server_span``)."""

from __future__ import annotations

from typing import Any, Optional

from pulsetrace import _runtime
from pulsetrace._native import http_method as _http_method
from pulsetrace._native import http_response_status as _http_response_status
from pulsetrace._native import http_span_name as _http_span_name
from pulsetrace._native import redact_query as _redact_query

REDACTED = "REDACTED"


def method_of(raw: Any) -> str:
    """The request method as ``http.request.method`` reports it: upper-case
    for a known method, ``_OTHER`` for any other (bounded cardinality, as
    the semantic conventions ask)."""
    return _http_method(raw) if isinstance(raw, str) else "_OTHER"


def span_name(method: Any, route: Optional[str]) -> str:
    """``GET /users/{id}`` with a route template, ``GET`` without one
    (``HTTP`` for a method outside the known set)."""
    return _http_span_name(method if isinstance(method, str) else None, route)


def redact_query(query: str) -> str:
    """The query string with the values of sensitive parameters replaced by
    ``REDACTED`` (other parameters are kept byte for byte). The sensitive
    words are the configuration's ``redact_query_params``
    (``PULSETRACE_REDACT_QUERY_PARAMS``), handed to the native side with the
    rest of the configuration."""
    if not query:
        return query
    if _runtime._tracer is None:
        _runtime.tracer()  # the agent starts on first use: the words come with it
    return _redact_query(query)


def set_status(span: Any, code: int) -> None:
    """Record the response status: 5xx marks the span as an error (keeping
    the message of an exception already recorded on it), 4xx does not."""
    _http_response_status(span, code)
