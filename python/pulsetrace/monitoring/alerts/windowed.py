"""Windowed figures for alert conditions: what the native histograms
recorded over a window, as the core's exact difference of two cumulative
copies kept by :class:`pulsetrace.monitoring.apm_windows.Windows` (the
copies behind ``/apm/transactions?window=``; the evaluator keeps them going
itself when the monitoring server's thread does not).

A window ends now (the copies the evaluation just took, else the
histograms read for it) and starts at the newest kept copy at least the
window old, so
its real length (``seconds``) is at least the window asked for, by up to
the copies' spacing (a minute for 5 minutes, ten for an hour). Windows are
bounded by the copies kept: at most :data:`MAX_WINDOW_S`. Younger than a
window, it starts with the histograms (everything recorded since the
process started), as ``/apm/transactions`` does.

One :class:`View` serves one evaluation cycle: every rule asking for the
same window of the same operation shares one computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pulsetrace._native import HistogramSnapshot
from pulsetrace.monitoring.apm_windows import Figures, Key, Windows

#: The longest window a rule may name: the kept copies reach about 70
#: minutes back (at 10 s copies), an hour plus the copies' spacing.
MAX_WINDOW_S = 3600.0
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}

Copies = dict[Key, Figures]


@dataclass(frozen=True)
class Pair:
    """A window's two ends: the copies at its end and at its start (None:
    the start of the histograms), and its length (None when it starts with
    the histograms)."""

    end: Copies
    start: Optional[Copies]
    seconds: Optional[float]

    def count(self, key: Key) -> int:
        """Records of ``key`` in the window (no histogram arithmetic)."""
        now = self.end.get(key)
        if now is None:
            return 0
        old = self.start.get(key) if self.start is not None else None
        if old is None or old[1].count > now[1].count:
            return now[1].count
        return now[1].count - old[1].count

    def delta(self, key: Key) -> Optional[tuple[int, HistogramSnapshot]]:
        """(errors, histogram) of what ``key`` recorded in the window."""
        now = self.end.get(key)
        if now is None:
            return None
        old = self.start.get(key) if self.start is not None else None
        if old is None or old[1].count > now[1].count:
            return now  # new since the start, or the histograms restarted
        if old is now:
            return None  # unchanged: nothing recorded
        return now[0] - old[0], now[1].delta(old[1])


@dataclass(frozen=True)
class Window:
    """One operation's figures over a window."""

    count: int
    errors: int
    histogram: Optional[HistogramSnapshot]
    seconds: Optional[float]

    def quantile_s(self, percentile: str) -> float:
        if self.histogram is None:
            return 0.0
        return self.histogram.value_at_quantile(QUANTILES[percentile]) / 1e9


class View:
    """The windows of one evaluation (cached for its rules). ``ticked``:
    the evaluation has just taken the copies (they are "now")."""

    def __init__(self, windows: Windows, ticked: bool = False) -> None:
        self.windows = windows
        self._ticked = ticked
        self._pairs: dict[tuple[float, float, bool], Optional[Pair]] = {}
        self._ops: dict[tuple[str, Optional[str], float, float, bool], Optional[Window]] = {}
        self._names: Optional[dict[str, list[Key]]] = None
        self._end: Optional[tuple[Copies, float]] = None

    def _latest(self) -> tuple[Copies, float]:
        """The copies now: the newest kept ones if just taken, else read."""
        if self._end is None:
            figures, age = self.windows.latest() if self._ticked else (None, None)
            if figures is None or age is None:
                figures, age = self.windows.read(), 0.0
            self._end = (figures, age)
        return self._end

    def pair(self, seconds: float, ago: float = 0.0, whole: bool = False) -> Optional[Pair]:
        """The window of ``seconds`` ending ``ago`` seconds back (now for
        0; at the newest copy at least ``ago`` old otherwise). ``whole``: a
        window that must not start with the histograms: it starts at the
        oldest copy within ``ago + seconds`` (None if there is none older
        than its end)."""
        k = (seconds, ago, whole)
        if k in self._pairs:
            return self._pairs[k]
        out: Optional[Pair] = None
        end_age: Optional[float]
        if ago <= 0:
            end, end_age = self._latest()
        else:
            found, end_age = self.windows.baseline(ago)
            end = found or {}
        if end_age is not None:
            if whole:
                start, age = self.windows.at_most(end_age + seconds)
                if start is not None and age is not None and age > end_age:
                    out = Pair(end, start, age - end_age)
            else:
                start, age = self.windows.baseline(end_age + seconds)
                out = Pair(end, start, None if age is None else age - end_age)
        self._pairs[k] = out
        return out

    def keys(self, name: str) -> list[Key]:
        """The keys (name, kind, target) of an operation name."""
        if self._names is None:
            names: dict[str, list[Key]] = {}
            for key in self._latest()[0]:
                names.setdefault(key[0], []).append(key)
            self._names = names
        return self._names.get(name, [])

    def operation(
        self,
        name: str,
        seconds: float,
        span_kind: Optional[str] = None,
        ago: float = 0.0,
        whole: bool = False,
    ) -> Optional[Window]:
        """Every key of ``name`` (of ``span_kind``; None: every kind)
        together over the window; None when there is no such window."""
        k = (name, span_kind, seconds, ago, whole)
        if k in self._ops:
            return self._ops[k]
        pair = self.pair(seconds, ago, whole)
        out: Optional[Window] = None
        if pair is not None:
            keys = [key for key in self.keys(name) if span_kind in (None, key[1])]
            out = window_of(pair, keys)
        self._ops[k] = out
        return out


def window_of(pair: Pair, keys: list[Key]) -> Window:
    """``keys`` together over ``pair``'s window."""
    count, errors, merged = 0, 0, None
    for key in keys:
        found = pair.delta(key)
        if found is None or found[1].count == 0:
            continue
        count, errors = count + found[1].count, errors + found[0]
        merged = found[1] if merged is None else merged.merge(found[1])
    return Window(count, errors, merged, pair.seconds)
