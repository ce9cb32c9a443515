"""Renderings reused between probes: what the monitoring server answers
from at once, on its I/O thread (``Router.add``'s ``quick``), while it is
fresh. /apm/status, /apm/transactions and /health/metrics keep theirs in
their own modules; /health and /health/ready are rendered here from the
health checks' cached results."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from pulsetrace import _runtime
from pulsetrace._router import Request, Response
from pulsetrace.monitoring import health as _health

#: How long a rendering of /health or /health/ready is reused while the
#: checks' cached results are the same ones (only ``timestamp`` ages).
HEALTH_RENDER_TTL_S = 1.0
#: path -> (reused until (monotonic), configuration, registry version, response).
_health_renders: dict[str, tuple[float, Any, int, Response]] = {}


def from_cached_checks(
    path: str, render: Callable[[list[_health.Result]], Response]
) -> Callable[[Request], Optional[Response]]:
    """The quick answer of /health or /health/ready: rendered from the
    checks' cached results while each is younger than its TTL (a rendering
    reused for ``HEALTH_RENDER_TTL_S`` while they are the same results);
    None when a check is due, which the handler then runs."""

    def quick(request: Request) -> Optional[Response]:
        registry = _health.REGISTRY
        cfg = _runtime.config()
        now = time.monotonic()
        memo = _health_renders.get(path)
        if memo is not None and now < memo[0] and memo[1] is cfg and memo[2] == registry.version:
            return memo[3]
        cached = registry.cached()
        if cached is None:
            return None
        version, until, results = cached
        response = render(results)
        _health_renders[path] = (min(until, now + HEALTH_RENDER_TTL_S), cfg, version, response)
        return response

    return quick
