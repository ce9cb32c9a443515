"""Windowed statistics per operation for ``/apm/transactions``: cumulative
copies of the native histograms taken every ``interval_s`` (10 s by
default, on one daemon thread), so a window's figures are the core's exact
difference of two copies (``HistogramSnapshot.delta``), not averages.

Copies kept: every tick for the last 7 ticks, every 6th tick for the last
36, every 60th for the last 420 (with 10 s ticks: 1 minute at 10 s, 5
minutes at 1 minute, an hour at 10 minutes): about 18 copies of each
operation's histogram, fewer when it is idle, since an operation that did
not change since the previous tick shares that tick's copy. A window's start is the
newest kept copy at least the window old (so ``window_s`` in a response
says what it covers); younger than that, the window starts with the agent's
histograms (everything since they started).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace._native import HistogramSnapshot
from pulsetrace._suppress import suppressed

#: An operation: (name, kind, ((target attribute, value), ...)).
Key = tuple[str, str, tuple[tuple[str, str], ...]]
#: An operation's cumulative figures: (errors, histogram copy).
Figures = tuple[int, HistogramSnapshot]

WINDOWS_S = {"1m": 60.0, "5m": 300.0, "1h": 3600.0}
_KEEP = ((1, 7), (6, 36), (60, 420))  # (every nth tick, for the last k ticks)


def read_all() -> dict[Key, Figures]:
    """Every operation's cumulative figures now, over every worker of the
    application (:mod:`pulsetrace.monitoring.workers`)."""
    from pulsetrace.monitoring import workers

    out: dict[Key, Figures] = {}
    for name, kind, target, errors, snap in workers.snapshots():
        out[(name, kind, tuple(target))] = (errors, snap)
    return out


class Windows:
    """The kept copies, and the thread that takes them."""

    def __init__(
        self,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], dict[Key, Figures]] = read_all,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.read = read
        self._lock = threading.Lock()
        # (tick number, time, figures), oldest first.
        self._ticks: deque[tuple[int, float, dict[Key, Figures]]] = deque()
        self._n = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def tick(self) -> None:
        """Take a copy of every operation's histogram now."""
        now = self.clock()
        figures = self.read()
        with self._lock:
            if self._ticks:
                previous = self._ticks[-1][2]
                for key, (errors, snap) in figures.items():
                    old = previous.get(key)
                    if old is not None and old[1].count == snap.count and old[0] == errors:
                        figures[key] = old  # unchanged: share the copy
            self._n += 1
            self._ticks.append((self._n, now, figures))
            n = self._n
            self._ticks = deque(
                t
                for t in self._ticks
                if any(t[0] % every == 0 and n - t[0] <= last for every, last in _KEEP)
            )

    def clear(self) -> None:
        with self._lock:
            self._ticks.clear()

    def baseline(self, window_s: float) -> tuple[Optional[dict[Key, Figures]], Optional[float]]:
        """The newest kept copies at least ``window_s`` old and their age,
        or (None, None) if none is that old."""
        now = self.clock()
        with self._lock:
            for _, at, figures in reversed(self._ticks):
                if now - at >= window_s - 1e-9:
                    return figures, now - at
        return None, None

    def at_most(self, age_s: float) -> tuple[Optional[dict[Key, Figures]], Optional[float]]:
        """The oldest kept copies at most ``age_s`` old and their age, or
        (None, None) if none is (the start of a window as long as the kept
        copies allow, up to ``age_s``)."""
        now = self.clock()
        with self._lock:
            for _, at, figures in self._ticks:
                if now - at <= age_s + 1e-9:
                    return figures, now - at
        return None, None

    def latest(self) -> tuple[Optional[dict[Key, Figures]], Optional[float]]:
        """The newest kept copies and their age, or (None, None)."""
        now = self.clock()
        with self._lock:
            if not self._ticks:
                return None, None
            _, at, figures = self._ticks[-1]
        return figures, now - at

    def tick_if_due(self) -> bool:
        """Take copies now unless the thread takes them or the newest is
        younger than ``interval_s`` (for a reader that keeps the copies
        going itself, such as the alert evaluator); True if it did."""
        if self.running:
            return False
        with self._lock:
            last = self._ticks[-1][1] if self._ticks else None
        if last is not None and self.clock() - last < self.interval_s - 1e-9:
            return False
        self.tick()
        return True

    # --- the thread -------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether this process's thread is taking copies."""
        t = self._thread
        return t is not None and t.is_alive()

    def start(self) -> None:
        """Start the thread taking copies (idempotent; again after a fork)."""
        t = self._thread
        if t is not None and t.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pulsetrace-apm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        self._thread = None

    def _run(self) -> None:
        with suppressed():
            while True:
                try:
                    self.tick()
                except Exception as exc:
                    _diag.internal_error("apm.windows", exc)
                if self._stop.wait(self.interval_s):
                    return


def stats(
    now: dict[Key, Figures], base: Optional[dict[Key, Figures]], seconds: float
) -> list[dict[str, Any]]:
    """Per operation: what was recorded since ``base`` (everything, without
    one): count, errors, error rate, throughput over ``seconds``,
    p50/p90/p99/max in milliseconds."""
    out = []
    for (name, kind, target), (errors, snap) in now.items():
        old = base.get((name, kind, target)) if base is not None else None
        if old is not None and old[1].count <= snap.count:
            window = snap.delta(old[1])
            errors -= old[0]
        else:
            window = snap  # new since the baseline, or the histograms restarted
        count = window.count
        row: dict[str, Any] = {"name": name, "kind": kind}
        row.update(target)
        ms = 1e6
        row.update(
            count=count,
            errors=errors,
            error_rate=round(errors / count, 6) if count else 0.0,
            throughput_per_s=round(count / seconds, 6) if seconds > 0 else 0.0,
            p50_ms=window.value_at_quantile(0.5) / ms,
            p90_ms=window.value_at_quantile(0.9) / ms,
            p99_ms=window.value_at_quantile(0.99) / ms,
            max_ms=window.max / ms,
        )
        out.append(row)
    return out
