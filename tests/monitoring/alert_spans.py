"""Spans of a chosen duration for the alerting tests: recorded through the
native histograms exactly as the application's spans are."""

from __future__ import annotations

from typing import Any, Optional

import pulsetrace

T0 = 1_700_000_000_000_000_000


def timed(
    name: str,
    n: int,
    ms: float,
    kind: str = "server",
    attributes: Optional[dict[str, Any]] = None,
) -> None:
    """``n`` spans of ``name`` lasting ``ms`` milliseconds each."""
    for _ in range(n):
        span = pulsetrace.start_span(name, kind=kind, attributes=attributes, start_time=T0)
        span.end(end_time=T0 + int(ms * 1_000_000))


def answered(name: str, status: int, n: int) -> None:
    """``n`` server spans of ``name`` answered with HTTP ``status``."""
    timed(name, n, 5, attributes={"http.response.status_code": status})
