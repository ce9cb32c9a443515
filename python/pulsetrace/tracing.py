"""The span API on top of the native tracer: the decorator form and the
helpers that read the current context. ``start_span`` itself is the native
tracer's method (see ``pulsetrace.start_span``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar, Union, overload

from pulsetrace import _diag, _runtime
from pulsetrace._native import Span

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["current_span", "traced"]


def current_span() -> Optional[Span]:
    """The span of the current context, or None."""
    value = _runtime.CURRENT.get()
    return value if isinstance(value, Span) else None


def _settings(
    f: Callable[..., Any], name: Optional[str], attributes: Optional[Mapping[str, Any]]
) -> tuple[str, Optional[dict[str, Any]]]:
    """The span name and a copy of the attributes of ``traced(f)``. A name or
    mapping whose own code fails leaves the function's name and no
    attributes (counted and logged): decorating never raises for them."""
    try:
        span_name = name or getattr(f, "__qualname__", None) or repr(f)
        return span_name, (dict(attributes) if attributes else None)
    except Exception as exc:
        _diag.internal_error("traced", exc)
        qualname = getattr(f, "__qualname__", None)
        if isinstance(name, str):
            return name, None
        return (qualname if isinstance(qualname, str) else "traced"), None


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
        span_name, attrs = _settings(f, name, attributes)

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
