"""Who a log line is about: ``userId``, ``companyId`` and ``requestId``.

``pulsetrace.set_user("user_789")``, ``pulsetrace.set_company("comp_456")``
or ``pulsetrace.context(user_id=..., company_id=..., request_id=...)`` set
them for the current context (a thread, an asyncio task); every log line
written there carries them. ``context(...)`` is also a context manager that
puts back what was set before when the block ends.

Values set while a request is being served belong to that request: they are
bound to its trace, so the next request served by the same thread (whose
trace differs) starts with none, without any work per request. Outside a
span they hold until changed.

``requestId`` is, in order: the one set here; the request's ``X-Request-ID``
header (read from Flask's request context); the id of the request's SERVER
span (16 hex digits), when the line is written inside that span or inside a
span below it after a line was written in the request span itself.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any, Optional

from pulsetrace import _runtime
from pulsetrace._native import Span

__all__ = ["EndedSpan", "context", "current", "set_company", "set_user"]

_UNSET: Any = object()
_NOTHING: tuple[None, None, None] = (None, None, None)


class EndedSpan:
    """The identity of a span that has ended, for a line written about it
    off the request thread (the access log): the formatter reads it as the
    line's span instead of the current one."""

    __slots__ = ("kind", "span_id", "trace_id")

    def __init__(self, trace_id: int, span_id: int, kind: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.kind = kind


#: What a line's span can be (a SpanContext, a remote parent, is not one).
_SPANS = (Span, EndedSpan)


class _Values:
    """What is set for one context, and the trace it belongs to (0: none)."""

    __slots__ = ("company_id", "request_auto", "request_id", "trace_id", "user_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id
        self.user_id: Optional[str] = None
        self.company_id: Optional[str] = None
        self.request_id: Optional[str] = None
        #: The request id found for this trace (header, request span's id).
        self.request_auto: Optional[str] = None


_VALUES: contextvars.ContextVar[Optional[_Values]] = contextvars.ContextVar(
    "pulsetrace_log_context", default=None
)


def _trace_of(span: Any) -> int:
    trace_id = getattr(span, "trace_id", 0)
    return trace_id if isinstance(trace_id, int) else 0


def _values(span: Any) -> _Values:
    """The values of this context for the trace of ``span``, made anew (and
    set) when the ones there belong to another trace."""
    trace_id = _trace_of(span)
    v = _VALUES.get()
    if v is None or v.trace_id != trace_id:
        v = _Values(trace_id)
        _VALUES.set(v)
    return v


def _text(name: str, value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"pulsetrace: {name} must be a str, an int or None, not {type(value).__name__}")


def set_user(user_id: Optional[str]) -> None:
    """The ``userId`` of the log lines written from here on in this context
    (for the current request only, inside one); None removes it."""
    text = _text("user_id", user_id)
    _values(_runtime.CURRENT.get()).user_id = text


def set_company(company_id: Optional[str]) -> None:
    """The ``companyId`` of the log lines written from here on in this
    context (for the current request only, inside one); None removes it."""
    text = _text("company_id", company_id)
    _values(_runtime.CURRENT.get()).company_id = text


class context:
    """Set ``userId``/``companyId``/``requestId`` of the log lines written
    in this context; as a context manager, what was set before comes back
    when the block ends. An argument left out keeps its current value."""

    __slots__ = ("_previous", "_token")

    def __init__(
        self,
        user_id: Optional[str] = _UNSET,
        company_id: Optional[str] = _UNSET,
        request_id: Optional[str] = _UNSET,
    ) -> None:
        given = {"user_id": user_id, "company_id": company_id, "request_id": request_id}
        checked = {k: _text(k, v) for k, v in given.items() if v is not _UNSET}
        span = _runtime.CURRENT.get()
        old = _VALUES.get()
        fresh = _Values(_trace_of(span))
        if old is not None and old.trace_id == fresh.trace_id:
            fresh.user_id, fresh.company_id = old.user_id, old.company_id
            fresh.request_id, fresh.request_auto = old.request_id, old.request_auto
        for k, v in checked.items():
            setattr(fresh, k, v)
        self._previous = old
        self._token = _VALUES.set(fresh)

    def __enter__(self) -> context:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            _VALUES.reset(self._token)
        except ValueError:  # left in another context: put the values back there
            _VALUES.set(self._previous)


def _header_request_id(trace_id: int) -> Optional[str]:
    """The ``X-Request-ID`` header of the request of trace ``trace_id``
    being served, if any: as the Python server hooks (ASGI, Starlette,
    Django, the WSGI middleware) recorded it, else Flask's request (its
    native request path records nothing)."""
    recorded = _runtime.REQUEST_ID.get()
    if recorded is not None and recorded[0] in (trace_id, 0):
        return recorded[1]
    flask_globals = sys.modules.get("flask.globals")
    if flask_globals is None:
        return None
    cv = getattr(flask_globals, "_cv_request", None)
    ctx = cv.get(None) if cv is not None else None
    if ctx is None:
        return None
    value = ctx.request.environ.get("HTTP_X_REQUEST_ID")
    return value if isinstance(value, str) and value else None


def current(span: Any) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """``(requestId, userId, companyId)`` for a line written now, ``span``
    being the current span (or None)."""
    v = _VALUES.get()
    if span is None:
        if v is None or v.trace_id:
            return _NOTHING
        return v.request_id, v.user_id, v.company_id
    if v is None or v.trace_id != span.trace_id:
        # The first line of this trace in this context: the values of an
        # earlier request are not this one's.
        v = _Values(_trace_of(span))
        _VALUES.set(v)
    if v.request_id is None and v.request_auto is None:
        # Resolved once per trace (the header), or once the request span
        # itself is the current one.
        v.request_auto = _header_request_id(v.trace_id)
        if v.request_auto is None and type(span) in _SPANS and span.kind == "server":
            v.request_auto = format(span.span_id, "016x")
    return v.request_id or v.request_auto, v.user_id, v.company_id
