"""Health checks: what ``/health`` and ``/health/ready`` report.

Register a check with :func:`register` (any callable: it passes when it
returns ``None``, ``True`` or a dict of details, fails when it returns
``False`` or raises), or a built-in one with a ``check_*`` helper. Each has
a timeout (a check still running then is reported ``timeout``), a TTL (its
result is reused that long: a probe storm runs it once) and a critical flag
(a critical check that fails turns ``/health/ready`` to 503). Checks run on
a small pool of pulsetrace's threads, never traced by pulsetrace's hooks.

    import pulsetrace.health

    pulsetrace.health.check_postgresql("postgresql://app@db/app")
    pulsetrace.health.register("queue", lambda: queue.depth() < 10_000, critical=False)
    pulsetrace.health.run()  # {"status": "pass", "checks": [...]}

With ``MONITORING_ENABLED=true``, ``DATABASE_URL`` and ``REDIS_URL`` are
checked (critical), and disk, memory, CPU and the trace exporter (not
critical). Passwords in URLs are never logged or reported.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

from pulsetrace._suppress import suppressed
from pulsetrace.monitoring import checks as _checks
from pulsetrace.monitoring.checks import redact_url
from pulsetrace.monitoring.health import REGISTRY, Result, summary

__all__ = [
    "Result",
    "check_cpu",
    "check_database",
    "check_disk",
    "check_event_loop",
    "check_exporter",
    "check_memory",
    "check_mysql",
    "check_postgresql",
    "check_redis",
    "check_sqlite",
    "redact_url",
    "register",
    "results",
    "run",
    "suppressed",
    "unregister",
]


def register(
    name: str,
    check: Callable[[], Any],
    *,
    critical: bool = True,
    timeout: float = 2.0,
    ttl: float = 5.0,
) -> None:
    """Add (or replace) the health check ``name``: ``check()`` runs at most
    once per ``ttl`` seconds, callers wait at most ``timeout`` seconds for
    it. A bad argument raises ValueError naming it."""
    REGISTRY.register(name, check, critical=critical, timeout=timeout, ttl=ttl)


def unregister(name: str) -> bool:
    """Remove the check ``name``; False if there was none."""
    return REGISTRY.unregister(name)


def results(names: Optional[list[str]] = None, fresh: bool = False) -> list[Result]:
    """Each check's result (cached within its TTL unless ``fresh``)."""
    return REGISTRY.run(names, fresh)


def run(fresh: bool = False) -> dict[str, Any]:
    """The overall report: ``{"status": "pass" | "degraded" | "fail",
    "checks": [...]}`` (``fail`` when a critical check does not pass)."""
    return summary(REGISTRY.run(None, fresh))


def _add(name: str, check: Callable[[], Any], critical: bool, timeout: float, ttl: float) -> str:
    REGISTRY.register(name, check, critical=critical, timeout=timeout, ttl=ttl)
    return name


def check_postgresql(
    url: str,
    *,
    name: str = "postgresql",
    critical: bool = True,
    timeout: float = 3.0,
    ttl: float = 5.0,
) -> str:
    """``SELECT 1`` on a new connection to the PostgreSQL ``url``; returns the check's name."""
    return _add(name, _checks.postgresql(url, timeout), critical, timeout, ttl)


def check_mysql(
    url: str, *, name: str = "mysql", critical: bool = True, timeout: float = 3.0, ttl: float = 5.0
) -> str:
    """``SELECT 1`` on a new connection to the MySQL/MariaDB ``url`` (``mysql://user:pw@host/db``)."""
    return _add(name, _checks.mysql(url, timeout), critical, timeout, ttl)


def check_sqlite(
    path: str,
    *,
    name: str = "sqlite",
    critical: bool = True,
    timeout: float = 3.0,
    ttl: float = 5.0,
) -> str:
    """``SELECT 1`` on a read-only connection to the SQLite file ``path``."""
    return _add(name, _checks.sqlite(path, timeout), critical, timeout, ttl)


def check_database(
    url: str,
    *,
    name: str = "database",
    critical: bool = True,
    timeout: float = 3.0,
    ttl: float = 5.0,
) -> str:
    """The check of ``url`` by its scheme (``postgresql://``, ``mysql://``,
    ``sqlite:///path``); ValueError for another scheme."""
    return _add(name, _checks.database(url, timeout), critical, timeout, ttl)


def check_redis(
    url: str, *, name: str = "redis", critical: bool = True, timeout: float = 3.0, ttl: float = 5.0
) -> str:
    """``PING`` on a new connection to the Redis ``url``."""
    return _add(name, _checks.redis(url, timeout), critical, timeout, ttl)


def check_disk(
    path: str = "/",
    *,
    min_free_bytes: int = 0,
    min_free_ratio: float = 0.05,
    name: str = "disk",
    critical: bool = False,
    ttl: float = 30.0,
) -> str:
    """Free space on the file system of ``path``, below either bound fails."""
    return _add(name, _checks.disk(path, min_free_bytes, min_free_ratio), critical, 2.0, ttl)


def check_memory(
    max_rss_bytes: Optional[int] = None,
    *,
    name: str = "memory",
    critical: bool = False,
    ttl: float = 5.0,
) -> str:
    """The process's resident memory, above ``max_rss_bytes`` fails."""
    return _add(name, _checks.memory(max_rss_bytes), critical, 2.0, ttl)


def check_cpu(
    max_percent: Optional[float] = None,
    *,
    name: str = "cpu",
    critical: bool = False,
    ttl: float = 5.0,
) -> str:
    """The process's CPU use since the previous run, above ``max_percent`` fails."""
    return _add(name, _checks.cpu(max_percent), critical, 2.0, ttl)


def check_event_loop(
    loop: Optional[asyncio.AbstractEventLoop] = None,
    *,
    max_lag_s: float = 0.5,
    name: str = "event_loop",
    critical: bool = False,
    ttl: float = 5.0,
) -> str:
    """The lag of ``loop`` (default: the running loop; call it from a
    coroutine), above ``max_lag_s`` fails."""
    target = loop if loop is not None else asyncio.get_running_loop()
    timeout = max(max_lag_s * 4, 1.0) + 1.0
    return _add(name, _checks.event_loop(target, max_lag_s), critical, timeout, ttl)


def check_exporter(*, name: str = "exporter", ttl: float = 10.0) -> str:
    """The trace exporters' last outcome. Never critical: a collector
    outage must not take the application out of its load balancer."""
    return _add(name, _checks.exporter(), False, 2.0, ttl)
