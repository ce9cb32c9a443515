"""The built-in conditions that compare a window with the operation's own
past or look inside its histograms (:mod:`.builtin` makes them rules):

- :class:`LatencyDegradation`: an operation's percentile over the recent
  window against the same percentile over its baseline (the hour before
  the window), by a factor;
- :class:`SlowQueries`: database client spans slower than a duration over
  the window (counted in their histograms);
- :class:`RateLimited`: 429 responses of each server operation over the
  window;
- :class:`HighMemory`: resident memory above a warning level below the
  memory check's limit;
- :class:`UnusualTraffic`: the server request rate over the window against
  its baseline rate, both ways (a spike, a drop towards zero).

Each is a callable over a :class:`~.rules.Snapshot` returning a
:class:`~.rules.Verdict` (naming the worst operation), unknown (neither
firing nor resolving) while there is too little to judge, and lists its
parameters as a threshold does (``to_json``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from pulsetrace.monitoring.alerts.engine import RSS_GAUGE
from pulsetrace.monitoring.alerts.rules import Snapshot, Threshold, Verdict
from pulsetrace.monitoring.alerts.windowed import MAX_WINDOW_S, QUANTILES, Pair, window_of
from pulsetrace.monitoring.apm_windows import Key

UNKNOWN = Verdict(False, known=False)


def _check(
    name: str, value: float, low: float, high: float = math.inf, open_low: bool = True
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"more than {low:g}" if open_low else f"at least {low:g}"
        if high != math.inf:
            bound += f" and at most {high:g}"
        raise ValueError(f"{name} must be a number {bound}, not {value!r}")


def _params(cond: Any, kind: str) -> dict[str, Any]:
    """A condition's parameters as listed (its state left out)."""
    out = {"kind": kind}
    out.update({f.name: getattr(cond, f.name) for f in fields(cond) if f.init})
    return out


def _is_db(key: Key) -> bool:
    return key[1] == "client" and any(attr == "db.system.name" for attr, _ in key[2])


@dataclass(frozen=True)
class LatencyDegradation:
    """``percentile`` of an operation (of ``span_kind``) over ``window``
    above ``factor`` times the same percentile over ``baseline`` (the
    window before it, as far back as the kept copies reach) and above
    ``min_s``; judged for operations with ``min_count`` samples in the
    window and ``min_baseline`` in the baseline (fewer: no verdict).

    While an operation is degraded its baseline is the one from before the
    degradation (held): a slow hour does not become its own baseline, so
    the alert holds until the operation is fast again."""

    factor: float = 2.0
    window: float = 300.0
    baseline: float = 3600.0
    percentile: str = "p99"
    min_count: int = 20
    min_baseline: int = 100
    min_s: float = 0.1
    span_kind: str = "server"
    #: operation key -> the baseline held while it is degraded (seconds).
    _held: dict[Key, float] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check("latency factor", self.factor, 1.0)
        _check("latency window", self.window, 0.0, MAX_WINDOW_S)
        _check("latency baseline", self.baseline, 0.0, MAX_WINDOW_S)
        _check("latency min_count", self.min_count, 1, open_low=False)
        _check("latency min_baseline", self.min_baseline, 1, open_low=False)
        _check("latency min_s", self.min_s, 0.0, open_low=False)
        if self.percentile not in QUANTILES:
            raise ValueError(f"latency percentile {self.percentile!r} is not p50/p90/p99/p999")

    def __call__(self, snap: Snapshot) -> Verdict:
        view = snap.windows
        recent = view.pair(self.window) if view is not None else None
        base = view.pair(self.baseline, ago=self.window, whole=True) if view is not None else None
        if view is None or recent is None or recent.seconds is None:
            return UNKNOWN
        # (degraded, ratio, now, before, name): the degraded one first.
        worst: Optional[tuple[bool, float, float, float, str]] = None
        judged = False
        min_ns = self.min_s * 1e9
        for key, (_, cumulative) in recent.end.items():
            if key[1] != self.span_kind or recent.count(key) < self.min_count:
                continue
            # Not slower than min_s (ever, or over the window): not degraded,
            # whatever the baseline.
            if cumulative.max <= min_ns:
                judged = True
                self._held.pop(key, None)
                continue
            now = window_of(recent, [key]).quantile_s(self.percentile)
            if now <= self.min_s:
                judged = True
                self._held.pop(key, None)
                continue
            before = self._held.get(key)
            if before is None:
                if base is None or base.count(key) < self.min_baseline:
                    continue
                before = window_of(base, [key]).quantile_s(self.percentile)
            judged = True
            if before <= 0:
                continue
            degraded = now > self.factor * before and now > self.min_s
            if degraded:
                self._held.setdefault(key, before)
            else:
                self._held.pop(key, None)
            this = (degraded, now / before, now, before, key[0])
            if worst is None or this[:2] > worst[:2]:
                worst = this
        if worst is None:
            # No operation with enough samples to judge, or none can be slow.
            return Verdict(False) if judged else UNKNOWN
        active, ratio, now, before, name = worst
        detail = (
            f"{self.percentile} {now * 1000:.4g} ms over the last {self.window:g}s,"
            f" {ratio:.3g}x its baseline of {before * 1000:.4g} ms"
        )
        return Verdict(active, now, self.factor * before, name, detail=detail)

    def to_json(self) -> dict[str, Any]:
        return _params(self, "latency_degradation")


@dataclass(frozen=True)
class SlowQueries:
    """At least ``count`` database client spans (spans with
    ``db.system.name``) slower than ``slower_than_s`` over ``window``,
    counted in their histograms (within the histograms' precision)."""

    slower_than_s: float = 1.0
    count: int = 10
    window: float = 300.0

    def __post_init__(self) -> None:
        _check("slow query duration", self.slower_than_s, 0.0)
        _check("slow query count", self.count, 1, open_low=False)
        _check("slow query window", self.window, 0.0, MAX_WINDOW_S)

    def __call__(self, snap: Snapshot) -> Verdict:
        view = snap.windows
        recent = view.pair(self.window) if view is not None else None
        if recent is None:
            return UNKNOWN
        limit_ns = int(self.slower_than_s * 1e9)
        total, worst, worst_n = 0, None, 0
        for key in recent.end:
            if not _is_db(key) or recent.count(key) == 0:
                continue
            found = recent.delta(key)
            if found is None:
                continue
            hist = found[1]
            slow = hist.count - hist.count_le(limit_ns) if hist.max > limit_ns else 0
            total += slow
            if slow > worst_n:
                worst, worst_n = key, slow
        detail = f"queries slower than {self.slower_than_s * 1000:g} ms over {self.window:g}s"
        if worst is not None:
            system = dict(worst[2]).get("db.system.name")
            detail += f", the most {worst[0]} ({system}): {worst_n}"
        op = None if worst is None else worst[0]  # the span name: its example trace links
        return Verdict(total >= self.count, float(total), float(self.count), op, detail=detail)

    def to_json(self) -> dict[str, Any]:
        return _params(self, "slow_queries")


@dataclass(frozen=True)
class RateLimited:
    """At least ``count`` responses with status 429 from one server
    operation over ``window``: the operation with the most is named."""

    count: int = 10
    window: float = 300.0

    def __post_init__(self) -> None:
        _check("rate-limited count", self.count, 1, open_low=False)
        _check("rate-limited window", self.window, 0.0)

    def __call__(self, snap: Snapshot) -> Verdict:
        every = Threshold("rate_limited", "*", window=self.window, span_kind="server")
        if every.measure(snap) is None:
            return UNKNOWN
        worst, worst_n = None, 0.0
        names = {
            op["name"]
            for op in snap.operations
            if op.get("kind") == "server" and op.get("rate_limited", 0) > 0
        }
        for name in sorted(names):
            n = Threshold("rate_limited", name, window=self.window).measure(snap) or 0.0
            if n > worst_n:
                worst, worst_n = name, n
        detail = f"responses 429 (too many requests) over {self.window:g}s"
        return Verdict(worst_n >= self.count, worst_n, float(self.count), worst, detail=detail)

    def to_json(self) -> dict[str, Any]:
        return _params(self, "rate_limited")


def memory_limit_bytes() -> Optional[int]:
    """The memory this process may use: its cgroup's limit (v2, then v1)
    when one is set, else the machine's physical memory; None if unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge v1 value: no limit
            return int(text)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _memory_check_limit() -> Optional[int]:
    """The ``memory`` health check's limit (``check_memory(max_rss_bytes=)``),
    if one is registered with a limit (its cached result is read)."""
    from pulsetrace.monitoring.health import REGISTRY

    if "memory" not in REGISTRY.names():
        return None
    try:
        (result,) = REGISTRY.run(["memory"])
    except KeyError:  # unregistered meanwhile
        return None
    limit = result.details.get("max_rss_bytes")
    return limit if isinstance(limit, int) and limit > 0 else None


@dataclass(frozen=True)
class HighMemory:
    """Resident memory (the gauge ``process.rss_bytes``) above ``level``
    bytes; without one, above ``share`` of the critical level: the
    ``memory`` health check's limit when it has one, else the memory the
    process may use (:func:`memory_limit_bytes`)."""

    level: Optional[int] = None
    share: float = 0.8

    def __post_init__(self) -> None:
        n = self.level
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ValueError(f"memory_warning_bytes must be a positive integer, not {n!r}")
        _check("memory_warning_share", self.share, 0.0, 1.0)

    def level_bytes(self) -> Optional[int]:
        if self.level is not None:
            return self.level
        limit = _memory_check_limit() or memory_limit_bytes()
        return int(limit * self.share) if limit else None

    def __call__(self, snap: Snapshot) -> Verdict:
        rss, level = snap.gauges.get(RSS_GAUGE), self.level_bytes()
        if rss is None or level is None:
            return UNKNOWN
        return Verdict(rss > level, rss, float(level), detail="resident memory in bytes")

    def to_json(self) -> dict[str, Any]:
        return _params(self, "high_memory")


@dataclass(frozen=True)
class UnusualTraffic:
    """The server request rate over ``window`` against its rate over
    ``baseline`` (before the window): above ``spike`` times it, or below
    ``drop`` times it (towards zero); judged once the baseline holds
    ``min_baseline`` requests. While traffic is unusual the baseline rate
    from before is held (a spike or a silence does not become normal)."""

    spike: float = 3.0
    drop: float = 0.1
    window: float = 300.0
    baseline: float = 3600.0
    min_baseline: int = 100
    #: The baseline rate held while traffic is unusual (requests/s).
    _held: list[float] = field(default_factory=list, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check("traffic spike factor", self.spike, 1.0)
        _check("traffic drop ratio", self.drop, 0.0, 1.0)
        _check("traffic window", self.window, 0.0, MAX_WINDOW_S)
        _check("traffic baseline", self.baseline, 0.0, MAX_WINDOW_S)
        _check("traffic min_baseline", self.min_baseline, 1, open_low=False)

    def __call__(self, snap: Snapshot) -> Verdict:
        view = snap.windows
        if view is None:
            return UNKNOWN
        recent = view.pair(self.window)
        if recent is None or not recent.seconds:
            return UNKNOWN
        if self._held:
            before = self._held[0]
        else:
            base = view.pair(self.baseline, ago=self.window, whole=True)
            if base is None or not base.seconds or _server_count(base) < self.min_baseline:
                return UNKNOWN
            before = _server_count(base) / base.seconds
        now = _server_count(recent) / recent.seconds
        if now > self.spike * before:
            limit, what = self.spike * before, "spike"
        elif now < self.drop * before:
            limit, what = self.drop * before, "drop"
        else:
            self._held.clear()
            return Verdict(False, now, self.spike * before)
        self._held[:] = [before]
        detail = (
            f"traffic {what}: {now:.4g} requests/s over the last {self.window:g}s"
            f" against {before:.4g}/s before"
        )
        return Verdict(True, now, limit, detail=detail)

    def to_json(self) -> dict[str, Any]:
        return _params(self, "unusual_traffic")


def _server_count(pair: Pair) -> int:
    return sum(pair.count(key) for key in pair.end if key[1] == "server")
