"""The built-in health checks: each function returns a check (a callable
for the registry) configured by its arguments.

Database and Redis checks open a connection of their own for each run
(with a connect timeout), send ``SELECT 1`` / ``PING`` and close it: the
check measures what a new request of the application would meet, and does
not borrow from the application's pool. Their details name the target with
its password removed (:func:`redact_url`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pulsetrace import _runtime

Check = Callable[[], Any]

_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "key")
_DSN_SECRET = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@")


def redact_text(text: str) -> str:
    """``text`` (an error message) with the password of every URL in it removed."""
    return _DSN_SECRET.sub("", _URL_PASSWORD.sub(r"\1@", text))


def redact_url(url: str) -> str:
    """``url`` with its password removed (userinfo ``user@`` kept, password
    query parameters dropped); a ``key=value`` DSN loses its password."""
    if "://" not in url:
        return _DSN_SECRET.sub("", url).strip()
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}@{host}" if user else host
        query = parts.query
        if query:
            kept = [
                (k, v)
                for k, v in parse_qsl(query, keep_blank_values=True)
                if not any(w in k.lower() for w in _SECRET_WORDS)
            ]
            query = urlencode(kept)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "(unparsable URL)"


def postgresql(url: str, connect_timeout: float = 2.0) -> Check:
    """``SELECT 1`` on a new connection to ``url`` (psycopg 3, else psycopg2)."""
    shown = redact_url(url)
    seconds = max(1, round(connect_timeout))  # libpq takes whole seconds

    def check() -> dict[str, Any]:
        try:
            import psycopg

            with psycopg.connect(url, connect_timeout=seconds, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except ImportError:
            import psycopg2  # type: ignore[import-untyped]  # ships no type hints

            conn2 = psycopg2.connect(url, connect_timeout=seconds)
            try:
                with conn2.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
            finally:
                conn2.close()
        return {"target": shown}

    return check


def mysql(url: str, connect_timeout: float = 2.0) -> Check:
    """``SELECT 1`` on a new connection to ``url`` (``mysql://user:pw@host:port/db``, PyMySQL)."""
    shown = redact_url(url)
    parts = urlsplit(url)

    def check() -> dict[str, Any]:
        import pymysql  # type: ignore[import-untyped]  # ships no type hints

        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")) or None,
            connect_timeout=connect_timeout,
            read_timeout=connect_timeout,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()
        return {"target": shown}

    return check


def sqlite(path: str, timeout: float = 2.0) -> Check:
    """``SELECT 1`` on a new read-only connection to the database file
    ``path`` (a missing file fails: it is not created)."""

    def check() -> dict[str, Any]:
        import sqlite3

        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        try:
            conn.execute("SELECT 1").fetchone()
        finally:
            conn.close()
        return {"target": path}

    return check


def database(url: str, connect_timeout: float = 2.0) -> Check:
    """The check of ``url`` by its scheme: PostgreSQL, MySQL or SQLite."""
    scheme = url.partition("://")[0].lower().partition("+")[0]
    if scheme in ("postgres", "postgresql"):
        return postgresql(url, connect_timeout)
    if scheme in ("mysql", "mariadb"):
        return mysql(url, connect_timeout)
    if scheme == "sqlite":
        return sqlite(urlsplit(url).path or ":memory:", connect_timeout)
    raise ValueError(f"no health check for the database URL scheme {scheme[:20]!r}")


def redis(url: str, connect_timeout: float = 2.0) -> Check:
    """``PING`` on a new connection to ``url`` (redis-py)."""
    shown = redact_url(url)

    def check() -> dict[str, Any]:
        import redis as redis_py

        client = redis_py.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout,
            single_connection_client=True,
        )
        try:
            if client.ping() is not True:
                return {"status": "fail", "error": "PING got no PONG", "target": shown}
        finally:
            client.close()
        return {"target": shown}

    return check


def disk(path: str = "/", min_free_bytes: int = 0, min_free_ratio: float = 0.05) -> Check:
    """Free space on the file system of ``path``: fails below either bound."""

    def check() -> dict[str, Any]:
        usage = shutil.disk_usage(path)
        ratio = usage.free / usage.total if usage.total else 0.0
        details: dict[str, Any] = {
            "path": path,
            "free_bytes": usage.free,
            "total_bytes": usage.total,
            "free_ratio": round(ratio, 4),
        }
        if usage.free < min_free_bytes or ratio < min_free_ratio:
            details["status"] = "fail"
            details["error"] = (
                f"{usage.free} bytes free ({ratio:.1%}), below the threshold "
                f"({min_free_bytes} bytes, {min_free_ratio:.1%})"
            )
        return details

    return check


def rss_bytes() -> Optional[int]:
    """This process's resident memory in bytes (its peak where /proc is
    missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB


def memory(max_rss_bytes: Optional[int] = None) -> Check:
    """The process's resident memory; fails above ``max_rss_bytes``."""

    def check() -> dict[str, Any]:
        rss = rss_bytes()
        details: dict[str, Any] = {"rss_bytes": rss}
        if max_rss_bytes is not None:
            details["max_rss_bytes"] = max_rss_bytes  # the high-memory alert's reference
        if max_rss_bytes is not None and rss is not None and rss > max_rss_bytes:
            details["status"] = "fail"
            details["error"] = f"resident memory {rss} bytes above {max_rss_bytes}"
        return details

    return check


def cpu(max_percent: Optional[float] = None) -> Check:
    """The process's CPU use (percent of one core) since the previous run
    of this check; fails above ``max_percent``."""
    last = [time.monotonic(), sum(os.times()[:2])]
    lock = threading.Lock()

    def check() -> dict[str, Any]:
        now, used = time.monotonic(), sum(os.times()[:2])
        with lock:
            elapsed, spent = now - last[0], used - last[1]
            last[:] = [now, used]
        percent = 100.0 * spent / elapsed if elapsed > 0 else 0.0
        details: dict[str, Any] = {"cpu_percent": round(percent, 1), "cpu_seconds": used}
        if max_percent is not None and percent > max_percent:
            details["status"] = "fail"
            details["error"] = f"CPU {percent:.0f}% above {max_percent:g}%"
        return details

    return check


def event_loop(loop: asyncio.AbstractEventLoop, max_lag_s: float = 0.5) -> Check:
    """How long a callback waits for ``loop`` (its lag): fails above
    ``max_lag_s`` or when the loop is closed or does not run it at all
    within the check's timeout."""

    def check() -> dict[str, Any]:
        if loop.is_closed():
            return {"status": "fail", "error": "the event loop is closed"}
        ran = threading.Event()
        start = time.monotonic()
        loop.call_soon_threadsafe(ran.set)
        if not ran.wait(max(max_lag_s * 4, 1.0)):
            return {"status": "fail", "error": "the event loop did not run a callback"}
        lag = time.monotonic() - start
        details: dict[str, Any] = {"lag_ms": round(lag * 1000, 3)}
        if lag > max_lag_s:
            details["status"] = "fail"
            details["error"] = f"event-loop lag {lag * 1000:.0f} ms above {max_lag_s * 1000:g} ms"
        return details

    return check


def exporter() -> Check:
    """The trace exporters' last outcome: fails while the latest change in
    the delivery counters was spans failing (none delivered since), passes
    again once spans are delivered. Registered as a non-critical check: a
    collector outage never fails readiness."""
    last = dict(_runtime.deliveries())
    state: dict[str, Any] = {"failing": 0}
    lock = threading.Lock()

    def check() -> dict[str, Any]:
        now = _runtime.deliveries()
        with lock:
            delivered = now["spans_delivered"] - last.get("spans_delivered", 0)
            failed = now["spans_delivery_failed"] - last.get("spans_delivery_failed", 0)
            last.update(now)
            if delivered > 0:
                state["failing"] = 0
            elif failed > 0:
                state["failing"] += failed
            failing = state["failing"]
        details: dict[str, Any] = {
            "exporters": [type(e).__name__ for e in _runtime.exporters()],
            "delivered_total": now["spans_delivered"],
            "failed_total": now["spans_delivery_failed"],
            "failed_since_last_delivery": failing,
        }
        if failing:
            details["status"] = "fail"
            details["error"] = f"{failing} spans could not be delivered since the last delivery"
        return details

    return check
