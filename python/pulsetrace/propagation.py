"""W3C Trace Context in and out of header carriers.

``extract`` reads ``traceparent``/``tracestate`` from a mapping of headers
(any case, or a WSGI environ) and returns a remote :class:`SpanContext`, or
None: a malformed header starts a new trace and is counted, never raised.
``inject`` writes the current span's context into outgoing headers; a
carrier that fails (its iteration or ``__setitem__`` raises) is left as it
is, and the failure counted and logged, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Optional, Union

from pulsetrace import _diag, _runtime
from pulsetrace._native import Span, SpanContext

__all__ = ["extract", "inject", "use_context"]

_ENVIRON_KEYS = {"traceparent": "HTTP_TRACEPARENT", "tracestate": "HTTP_TRACESTATE"}


def _get(headers: Any, name: str) -> Optional[Any]:
    try:
        value = headers.get(name)
        if value is None:
            value = headers.get(_ENVIRON_KEYS[name])
        if value is None and isinstance(headers, Mapping):
            for k, v in headers.items():
                if isinstance(k, (str, bytes)) and (
                    k.lower() == name if isinstance(k, str) else k.lower() == name.encode()
                ):
                    return v
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value) if name == "tracestate" else value[0]
        return value
    except Exception:
        return None


def extract(headers: Any) -> Optional[SpanContext]:
    """The remote context carried by ``headers``, or None."""
    traceparent = _get(headers, "traceparent")
    if traceparent is None:
        return None
    return _runtime.tracer().extract(traceparent, _get(headers, "tracestate"))


def inject(
    headers: MutableMapping[str, str],
    span: Optional[Union[Span, SpanContext]] = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write ``traceparent`` (and ``tracestate``) of ``span`` (default: the
    current span) into ``headers``. A header the caller already set is kept
    unless ``overwrite``."""
    if span is None:
        span = _runtime.tracer().current_span()
        if span is None:
            return
    if span.trace_id == 0:  # tracing is off: nothing to propagate
        return
    try:
        if not overwrite and any(
            isinstance(k, str) and str.lower(k) == "traceparent" for k in headers
        ):
            return
        headers["traceparent"] = span.traceparent
        if span.trace_state:
            headers["tracestate"] = span.trace_state
    except Exception as exc:
        # The carrier's own code failed (iteration, __setitem__): the
        # request goes out without trace context; counted and logged.
        _diag.internal_error("propagation.inject", exc)


@contextmanager
def use_context(context: Optional[Union[Span, SpanContext]]) -> Iterator[None]:
    """Make ``context`` (e.g. what ``extract`` returned) the parent of spans
    started inside the block."""
    token = _runtime.CURRENT.set(context)
    try:
        yield
    finally:
        try:
            _runtime.CURRENT.reset(token)
        except ValueError:
            _runtime.CURRENT.set(None)
