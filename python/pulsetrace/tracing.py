"""The span API on top of the native tracer: the decorator form and the
helpers that read the current context."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar, Union, overload

from pulsetrace import _runtime
from pulsetrace._native import Span, SpanContext

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["current_span", "start_span", "traced"]


def start_span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Optional[Mapping[str, Any]] = None,
    parent: Optional[Union[Span, SpanContext]] = None,
    links: Optional[list[Union[Span, SpanContext]]] = None,
    start_time: Optional[int] = None,
) -> Span:
    """Start a span; use it as a context manager or call ``end()``.

    Its parent is ``parent`` if given, else the current span (or remote
    context), else it starts a new trace. ``kind`` is one of ``internal``,
    ``server``, ``client``, ``producer``, ``consumer``. ``start_time`` is in
    Unix nanoseconds.
    """
    return _runtime.tracer().start_span(
        name, kind=kind, attributes=attributes, parent=parent, links=links, start_time=start_time
    )


def current_span() -> Optional[Span]:
    """The span of the current context, or None."""
    value = _runtime.CURRENT.get()
    return value if isinstance(value, Span) else None


@overload
def traced(fn: F) -> F: ...


@overload
def traced(
    fn: None = None,
    *,
    name: Optional[str] = None,
    kind: str = "internal",
    attributes: Optional[Mapping[str, Any]] = None,
) -> Callable[[F], F]: ...


def traced(
    fn: Optional[F] = None,
    *,
    name: Optional[str] = None,
    kind: str = "internal",
    attributes: Optional[Mapping[str, Any]] = None,
) -> Union[F, Callable[[F], F]]:
    """Decorator: run the function inside a span named after it (or ``name``).

    Works on plain and ``async`` functions; exceptions are recorded on the
    span and re-raised unchanged.
    """

    def decorate(f: F) -> F:
        span_name = name or getattr(f, "__qualname__", None) or repr(f)
        attrs = dict(attributes) if attributes else None

        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _runtime.tracer().start_span(span_name, kind=kind, attributes=attrs):
                    return await f(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _runtime.tracer().start_span(span_name, kind=kind, attributes=attrs):
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate
