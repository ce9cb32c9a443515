"""The five log types and the helpers that write business, performance and
security lines.

Each type is a standard library logger named ``logs.<type>``; its lines
carry ``"type": "<type>"``:

- ``application``: what the application logs (any other logger's records
  below ERROR are of this type too);
- ``access``: one line per HTTP request (``PULSETRACE_ACCESS_LOG``, see
  :mod:`pulsetrace.logging.access`);
- ``error``: failures with their stack trace (any other logger's records at
  ERROR or above are of this type too);
- ``security``: authentication, authorization and rate-limit events
  (:func:`log_security_event`);
- ``business``: campaign, message and user events, business metrics
  (:func:`log_business_metric`).

``get_logger("security").warning("...", extra={...})`` writes a line of that
type directly.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any, Optional

from pulsetrace.logging.formatter import TYPE_PREFIX

__all__ = [
    "LOG_TYPES",
    "SECURITY_EVENTS",
    "get_logger",
    "log_business_metric",
    "log_performance",
    "log_security_event",
]

LOG_TYPES = ("application", "access", "error", "security", "business")

#: The security events and the outcomes each one has; a failure is written
#: at WARNING, a success at INFO.
SECURITY_EVENTS: Mapping[str, tuple[str, ...]] = {
    "authentication": ("success", "failure"),
    "authorization": ("granted", "denied"),
    "rate_limit": ("hit",),
}
_QUIET_OUTCOMES = ("success", "granted")


def get_logger(log_type: str = "application") -> logging.Logger:
    """The logger whose lines are of type ``log_type`` (one of
    :data:`LOG_TYPES`)."""
    if log_type not in LOG_TYPES:
        raise ValueError(f"pulsetrace: log type {log_type!r} is not one of {', '.join(LOG_TYPES)}")
    return logging.getLogger(TYPE_PREFIX + log_type)


def _metadata(metadata: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"pulsetrace: metadata must be a mapping or None, not {type(metadata).__name__}"
        )
    return dict(metadata)


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"pulsetrace: {what} must be a non-empty str, not {value!r}")
    return value


def _number(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"pulsetrace: {what} must be a number, not {type(value).__name__}")
    return value  # type: ignore[return-value]


def log_business_metric(
    name: str, value: float, unit: str, metadata: Optional[Mapping[str, Any]] = None
) -> None:
    """A ``business`` line for a business metric: ``metadata`` holds
    ``metric``, ``value``, ``unit`` and the given metadata, e.g.
    ``log_business_metric("conversion_rate", 0.15, "percentage",
    {"campaignId": "camp_123"})``."""
    meta = _metadata(metadata)
    meta.update(metric=_name("name", name), value=_number("value", value), unit=str(unit))
    get_logger("business").info(
        "business metric %s: %s %s", name, value, unit, extra={"metadata": meta}
    )


def log_performance(
    operation: str, duration: float, metadata: Optional[Mapping[str, Any]] = None
) -> None:
    """An ``application`` line timing ``operation``: ``metadata`` holds
    ``operation``, ``duration`` (as given, e.g. milliseconds) and the given
    metadata."""
    meta = _metadata(metadata)
    meta.update(operation=_name("operation", operation), duration=_number("duration", duration))
    get_logger("application").info(
        "performance %s: %s", operation, duration, extra={"metadata": meta}
    )


def log_security_event(
    kind: str, outcome: str, metadata: Optional[Mapping[str, Any]] = None
) -> None:
    """A ``security`` line: ``kind`` is ``authentication`` (outcome
    ``success`` or ``failure``), ``authorization`` (``granted`` or
    ``denied``) or ``rate_limit`` (``hit``). Failures, denials and rate-limit
    hits are written at WARNING, the rest at INFO; ``metadata`` holds
    ``event``, ``outcome`` and the given metadata (user ids, the resource,
    the client address...)."""
    outcomes = SECURITY_EVENTS.get(kind) if isinstance(kind, str) else None
    if outcomes is None:
        raise ValueError(
            f"pulsetrace: security event {kind!r} is not one of {', '.join(SECURITY_EVENTS)}"
        )
    if outcome not in outcomes:
        raise ValueError(
            f"pulsetrace: the outcome of a {kind} event is one of {', '.join(outcomes)}, "
            f"not {outcome!r}"
        )
    meta = _metadata(metadata)
    meta.update(event=kind, outcome=outcome)
    level = logging.INFO if outcome in _QUIET_OUTCOMES else logging.WARNING
    get_logger("security").log(level, "security %s %s", kind, outcome, extra={"metadata": meta})
