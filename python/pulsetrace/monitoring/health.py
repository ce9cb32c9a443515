"""The registry of health checks and how they run.

A check is a callable (or a coroutine function, run on an event loop of
its own) with a name, a timeout, a TTL and a critical flag. It passes when
it returns ``None``, ``True`` or a dict (details shown with its result),
and fails when it returns ``False`` or raises (the exception's message is
its error). A dict with ``"status": "fail"`` fails too, with its
details shown.

How checks run, so that probes cannot hurt what they probe:

- Off the request thread, on a bounded pool of ``POOL_SIZE`` daemon threads,
  under pulsetrace's suppression context (a check's PostgreSQL query is not
  a span of the application).
- A result is reused for ``ttl`` seconds: a storm of probes costs one run
  per TTL. Concurrent callers of a check that is running wait for that run
  instead of starting another.
- A caller waits at most the check's ``timeout``: a check still running
  then is reported ``timeout``. A check whose earlier run has not returned
  is not started again (it stays ``timeout`` until that run ends), so a
  hanging dependency holds at most one pool thread per check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import os
import queue
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace._suppress import suppressed
from pulsetrace.monitoring.checks import redact_text

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
#: Threads that run checks (started on first use, daemon).
POOL_SIZE = 4
#: Longest error message reported for a failing check.
MAX_ERROR = 500

Check = Callable[[], Any]


@dataclass(frozen=True)
class Result:
    """One run of a check (or the run still cached)."""

    name: str
    status: str
    critical: bool
    latency_ms: float
    checked_at: float
    error: Optional[str] = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == PASS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "critical": self.critical,
            "latency_ms": round(self.latency_ms, 3),
            "checked_at": self.checked_at,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.details:
            out["details"] = self.details
        return out


class _Entry:
    __slots__ = (
        "cached_at",
        "check",
        "critical",
        "future",
        "lock",
        "name",
        "result",
        "started",
        "timeout",
        "ttl",
    )

    def __init__(self, name: str, check: Check, critical: bool, timeout: float, ttl: float):
        self.name, self.check, self.critical = name, check, critical
        self.timeout, self.ttl = timeout, ttl
        self.lock = threading.Lock()
        self.result: Optional[Result] = None
        self.cached_at = float("-inf")  # monotonic time of ``result``
        self.started = 0.0  # monotonic time ``future`` was submitted
        self.future: Optional[concurrent.futures.Future[Result]] = None


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _outcome(entry: _Entry) -> Result:
    """Run the check (on a pool thread) and describe what it did."""
    start = time.monotonic()
    wall = time.time()
    status, error, details = PASS, None, {}
    try:
        with suppressed():
            value = entry.check()
            if inspect.isawaitable(value):  # an async check: run on this thread's own loop
                value = asyncio.run(_awaited(value))
        if value is False:
            status = FAIL
        elif isinstance(value, dict):
            details = {str(k): v for k, v in value.items() if k != "status"}
            if value.get("status") == FAIL:
                status = FAIL
                error = redact_text(str(value.get("error", "failed")))[:MAX_ERROR]
                details.pop("error", None)
    except Exception as exc:
        status = FAIL
        error = redact_text(f"{type(exc).__name__}: {exc}")[:MAX_ERROR]
    latency = (time.monotonic() - start) * 1000
    return Result(entry.name, status, entry.critical, latency, wall, error, details)


class _Pool:
    """At most ``size`` daemon threads, started as work arrives. Not a
    ``ThreadPoolExecutor``: the interpreter joins those at exit, and a check
    hanging on a dead dependency must not keep the application from exiting."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Every job is matched with one thread when submitted: an idle one
        # (``_idle`` counts those not yet promised a job), a new one, or the
        # next to finish (``_backlog`` counts jobs promised to no thread yet).
        # A job never waits behind a running check while a thread is free or
        # can be started: a hanging check cannot hold up another one.
        self._idle = 0
        self._backlog = 0

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn))
        with self._lock:
            start = False
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self._size:
                self._threads += 1
                start = True
            else:
                self._backlog += 1
        if start:
            name = f"pulsetrace-health-{self._threads}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            future, fn = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # _outcome catches the check's own
                    future.set_exception(exc)
            with self._lock:
                if self._backlog > 0:
                    self._backlog -= 1  # a queued job is this thread's next
                else:
                    self._idle += 1


class Registry:
    """Health checks by name."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._pool_size = pool_size
        self._pool: Optional[_Pool] = None
        # A new number whenever a check is added or removed or a result
        # is stored (``next`` on a count is atomic).
        self._changes = itertools.count(1)
        self.version = 0

    def register(
        self,
        name: str,
        check: Check,
        *,
        critical: bool = True,
        timeout: float = 2.0,
        ttl: float = 5.0,
    ) -> None:
        """Add (or replace) the check ``name``. ValueError names a bad argument."""
        if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
            raise ValueError(f"a health check's name is 1 to 100 printable characters: {name!r}")
        if "/" in name:
            raise ValueError(f"a health check's name has no '/': {name!r}")
        if not callable(check):
            raise ValueError(f"health check {name!r}: check must be callable, not {check!r:.60}")
        for what, value, low in (("timeout", timeout, 0.001), ("ttl", ttl, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"health check {name!r}: {what}={value!r} is not a number")
            if not low <= value <= 3600:
                raise ValueError(
                    f"health check {name!r}: {what}={value!r} is not within {low} to 3600 seconds"
                )
        entry = _Entry(name, check, bool(critical), float(timeout), float(ttl))
        with self._lock:
            self._entries[name] = entry
            self.version = next(self._changes)

    def unregister(self, name: str) -> bool:
        """Remove the check ``name``; False if there was none."""
        with self._lock:
            self.version = next(self._changes)
            return self._entries.pop(name, None) is not None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.version = next(self._changes)

    def _executor(self) -> _Pool:
        with self._lock:
            if self._pool is None:
                self._pool = _Pool(self._pool_size)
            return self._pool

    def reset_after_fork(self) -> None:
        """In a forked child: the pool's threads are not there."""
        self._lock = threading.Lock()
        self._pool = None
        for entry in self._entries.values():
            entry.lock = threading.Lock()
            entry.future = None

    def run(self, names: Optional[list[str]] = None, fresh: bool = False) -> list[Result]:
        """Results of the checks ``names`` (default: all), from the cache
        when younger than their TTL (unless ``fresh``). KeyError names an
        unknown check. Returns when every check is done or timed out."""
        with self._lock:
            if names is None:
                entries = list(self._entries.values())
            else:
                missing = [n for n in names if n not in self._entries]
                if missing:
                    raise KeyError(missing[0])
                entries = [self._entries[n] for n in names]
        now = time.monotonic()
        waits: list[tuple[_Entry, Any, float]] = []
        for entry in entries:
            waits.append((entry, *self._start(entry, now, fresh)))
        out = []
        for entry, pending, started in waits:
            if isinstance(pending, Result):
                out.append(pending)
                continue
            remaining = started + entry.timeout - time.monotonic()
            try:
                out.append(pending.result(timeout=max(0.0, remaining)))
            except concurrent.futures.TimeoutError:
                out.append(self._timed_out(entry, started))
            except Exception as exc:  # not the check's failure: _outcome catches those
                _diag.internal_error("health.run", exc)
                out.append(self._timed_out(entry, started, f"internal error: {exc!r}"[:200]))
        return out

    def cached(self) -> Optional[tuple[int, float, list[Result]]]:
        """``(version, until, results)``: every check's result, as ``run()``
        would return them, while each is cached and younger than its TTL
        (nothing to run, nothing to wait for), and until when (monotonic)
        they all are; None otherwise. Never blocks on a check. The same
        ``version`` later means the same results."""
        version = self.version  # before the results: a change meanwhile makes it older
        with self._lock:
            entries = list(self._entries.values())
        now = time.monotonic()
        until = float("inf")
        out = []
        for entry in entries:
            at = entry.cached_at  # before the result: a run ending meanwhile looks older
            result = entry.result
            if result is None or now - at >= entry.ttl:
                return None
            until = min(until, at + entry.ttl)
            out.append(result)
        return version, until, out

    def _start(self, entry: _Entry, now: float, fresh: bool) -> tuple[Any, float]:
        """The cached result, or the future of a run (started now, or the
        one in flight) and when that run started."""
        with entry.lock:
            cached = entry.result
            if cached is not None and not fresh and now - entry.cached_at < entry.ttl:
                return cached, now
            future = entry.future
            if future is not None and not future.done():
                return future, entry.started
            future = self._executor().submit(lambda: self._run_one(entry))
            entry.future, entry.started = future, now
            return future, now

    def _run_one(self, entry: _Entry) -> Result:
        result = _outcome(entry)
        with entry.lock:
            entry.result = result
            entry.cached_at = time.monotonic()
            self.version = next(self._changes)
        return result

    @staticmethod
    def _timed_out(entry: _Entry, started: float, why: Optional[str] = None) -> Result:
        waited = (time.monotonic() - started) * 1000
        error = why or f"no answer within {entry.timeout:g} s"
        return Result(entry.name, TIMEOUT, entry.critical, waited, time.time(), error)


def summary(results: list[Result]) -> dict[str, Any]:
    """The overall status of ``results``: ``fail`` when a critical check did
    not pass, ``degraded`` when another did not, else ``pass``."""
    if any(r.critical and not r.ok for r in results):
        status = FAIL
    elif any(not r.ok for r in results):
        status = "degraded"
    else:
        status = PASS
    return {"status": status, "checks": [r.to_json() for r in results]}


#: The process's registry (``pulsetrace.health`` registers into it).
REGISTRY = Registry()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=REGISTRY.reset_after_fork)
