"""Custom metrics: counters, gauges and histograms an application creates
(:func:`pulsetrace.metrics.create_custom_counter` and the others), exported
in the Prometheus exposition and in ``/health/metrics``.

Each metric has fixed label names; each distinct set of label values is a
series, at most ``max_series`` per metric: the values of a further series
are dropped and counted (``pulsetrace_custom_series_overflowed_total``).
A histogram's series is a native HDR histogram (2 significant digits):
values are recorded in thousandths (so 0.001 to 3.6e9 keep their 2
digits). The exposition shows it as a Prometheus histogram:
``<name>_bucket{le="..."}`` (cumulative, ``+Inf`` last), ``<name>_sum`` and
``<name>_count``, the buckets' bounds chosen per metric (``buckets=``; by
default those of pulsetrace's own latency families, 5 ms to 10 s, for a
value in seconds). Each bucket is counted from the HDR histogram when the
exposition is rendered: a value within the histogram's precision (1%) of
a bound may count at that bound. The JSON endpoints show its count, sum,
max and p50/p90/p99. A counter's samples are named ``<name>_total`` (the
suffix added when the name lacks it).

Under a pre-fork server each worker's metrics (:func:`state`) merge into
the application's (:func:`merge_states`; :func:`fold_states` for dead
workers), and :func:`families` / :func:`to_json` render a merged state: see
:mod:`pulsetrace.monitoring.metrics_state` for the rules (a gauge's
``aggregate``).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import Any, Optional, Union

from pulsetrace._native import DEFAULT_BUCKETS
from pulsetrace._native import Histogram as _NativeHistogram
from pulsetrace.monitoring import metrics_state

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED = {"quantile", "le", "service_name"}
_SCALE = 1000.0
QUANTILES = (0.5, 0.9, 0.99)
AGGREGATES = ("sum", "max", "min", "last")

Number = Union[int, float]
Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]
_registry_lock = threading.Lock()
_registry: dict[str, _Metric] = {}


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return float(value)


def check_buckets(buckets: Any) -> tuple[float, ...]:
    """A histogram's bucket bounds: finite numbers from 0.001 to 3.6e9,
    sorted and each once (``+Inf`` is always added, and may be given);
    ValueError naming the problem."""
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise ValueError(f"buckets is a list of numbers, not {buckets!r:.60}")
    bounds = set()
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ValueError(f"a bucket bound is a number, not {b!r:.60}")
        if b == math.inf:
            continue
        if not (math.isfinite(b) and 0.001 <= b <= 3.6e9):
            raise ValueError(f"a bucket bound is between 0.001 and 3.6e9, not {b!r}")
        bounds.add(float(b))
    if not bounds:
        raise ValueError("a histogram needs at least one finite bucket bound")
    return tuple(sorted(bounds))


def check_aggregate(aggregate: Any) -> str:
    """How a gauge's values in several processes combine; ValueError naming
    the problem."""
    if aggregate not in AGGREGATES or not isinstance(aggregate, str):
        raise ValueError(
            f"a gauge's aggregate is one of {', '.join(map(repr, AGGREGATES))}, "
            f"not {aggregate!r:.60}"
        )
    return aggregate


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, label_names: tuple[str, ...], max_series: int):
        self.name = name
        self.help = help
        self.label_names = label_names
        self.max_series = max_series
        self.overflowed = 0
        self._lock = threading.RLock()
        self._series: dict[tuple[str, ...], Any] = {}

    def _key(self, labels: dict[str, Any]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            missing = sorted(set(self.label_names) - set(labels))
            extra = sorted(set(labels) - set(self.label_names))
            raise ValueError(
                f"metric {self.name!r} has labels {list(self.label_names)}: "
                + (f"missing {missing}" if missing else f"unknown {extra}")
            )
        key = []
        for n in self.label_names:
            v = labels[n]
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise ValueError(
                    f"label {n!r} of metric {self.name!r} must be a str or int, "
                    f"not {type(v).__name__}"
                )
            key.append(str(v))
        return tuple(key)

    def _slot(self, key: tuple[str, ...], make: Any) -> Any:
        """The series of ``key`` (made if there is room), or None: counted."""
        s = self._series.get(key)
        if s is None:
            if len(self._series) >= self.max_series:
                self.overflowed += 1
                return None
            s = self._series[key] = make()
        return s

    def reset_after_fork(self) -> None:
        """In a forked child: no series (what the parent recorded is the
        parent's), a new lock (the parent's may have been held)."""
        self._lock = threading.RLock()
        self._series.clear()
        self.overflowed = 0

    def series(self) -> list[tuple[dict[str, str], Any]]:
        with self._lock:
            items = list(self._series.items())
        return [(dict(zip(self.label_names, k)), v) for k, v in items]

    def families(self) -> list[Family]:
        return [(self.name, self.help, self.kind, [(lab, float(v)) for lab, v in self.series()])]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "help": self.help,
            "series": [dict(labels=lab, value=v) for lab, v in self.series()],
            "series_overflowed": self.overflowed,
        }


class Counter(_Metric):
    kind = "counter"

    def inc(self, value: Number = 1, **labels: Any) -> None:
        """Add ``value`` (>= 0) to the series of ``labels``."""
        v = _check_number(value, "a counter's increment")
        if v < 0:
            raise ValueError(f"a counter only goes up: cannot add {value!r}")
        key = self._key(labels)
        with self._lock:
            if self._slot(key, float) is not None:
                self._series[key] += v


class Gauge(_Metric):
    """A level. Merged over pre-fork workers by its ``aggregate``: ``sum``
    (the default: each worker's share of one level), ``max``, ``min`` or
    ``last`` (the value set most recently, by wall-clock time, in any
    worker); a dead worker's level is gone with it."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        label_names: tuple[str, ...],
        max_series: int,
        aggregate: str = "sum",
    ):
        super().__init__(name, help, label_names, max_series)
        self.aggregate = check_aggregate(aggregate)
        self._changed: dict[tuple[str, ...], float] = {}  # wall-clock time of each series' value

    def reset_after_fork(self) -> None:
        super().reset_after_fork()
        self._changed.clear()

    def set(self, value: Number, **labels: Any) -> None:
        v = _check_number(value, "a gauge's value")
        key = self._key(labels)
        with self._lock:
            if self._slot(key, float) is not None:
                self._series[key] = v
                self._changed[key] = time.time()

    def inc(self, value: Number = 1, **labels: Any) -> None:
        v = _check_number(value, "a gauge's increment")
        key = self._key(labels)
        with self._lock:
            if self._slot(key, float) is not None:
                self._series[key] += v
                self._changed[key] = time.time()

    def dec(self, value: Number = 1, **labels: Any) -> None:
        self.inc(-_check_number(value, "a gauge's decrement"), **labels)


class _HistogramSeries:
    __slots__ = ("hist", "sum")

    def __init__(self) -> None:
        self.hist = _NativeHistogram()
        self.sum = 0.0


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        label_names: tuple[str, ...],
        max_series: int,
        buckets: tuple[float, ...] = tuple(DEFAULT_BUCKETS),
    ):
        super().__init__(name, help, label_names, max_series)
        self.buckets = buckets
        self._bounds = [round(b * _SCALE) for b in buckets]
        self._le = [repr(b) for b in buckets]
        # The last state of each series (metrics_state), with its series and count.
        self._encoded: dict[tuple[str, ...], tuple[_HistogramSeries, int, dict[str, Any]]] = {}

    def reset_after_fork(self) -> None:
        super().reset_after_fork()
        self._encoded.clear()

    def observe(self, value: Number, **labels: Any) -> None:
        """Record ``value`` (0 to 3.6e9) in the series of ``labels``."""
        v = _check_number(value, "an observed value")
        if not 0 <= v <= 3.6e9:
            raise ValueError(f"an observed value is between 0 and 3.6e9, not {value!r}")
        key = self._key(labels)
        with self._lock:
            s = self._slot(key, _HistogramSeries)
            if s is not None:
                s.hist.record(int(round(v * _SCALE)))
                s.sum += v

    def _stats(self, s: _HistogramSeries) -> dict[str, float]:
        h = s.hist
        out = {"count": float(h.count), "sum": s.sum, "max": h.max / _SCALE}
        for q in QUANTILES:
            out[f"p{round(q * 100)}"] = h.value_at_quantile(q) / _SCALE if h.count else 0.0
        return out

    def families(self) -> list[Family]:
        """One histogram family: per series, a sample per bucket (its
        ``le`` label, cumulative counts from the HDR histogram, ``+Inf``
        the count) and one without ``le``, the sum (the native renderer
        writes them as ``_bucket``, ``_sum`` and ``_count``)."""
        samples: list[tuple[dict[str, str], float]] = []
        with self._lock:
            rows = [(lab, s, s.sum) for lab, s in self.series()]
        for lab, s, total in rows:
            counts, count = s.hist.cumulative_counts(self._bounds)
            samples.extend((dict(lab, le=le), float(n)) for le, n in zip(self._le, counts))
            samples.append((dict(lab, le="+Inf"), float(count)))
            samples.append((lab, total))
        return [(self.name, self.help, "histogram", samples)]

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            rows = [dict(labels=lab, **self._stats(s)) for lab, s in self.series()]
        return {
            "name": self.name,
            "type": self.kind,
            "help": self.help,
            "series": rows,
            "series_overflowed": self.overflowed,
        }


def create(
    cls: type[_Metric],
    name: Any,
    help: Any,
    label_names: Any,
    max_series: Any,
    buckets: Any = None,
    aggregate: Any = None,
) -> Any:
    """The metric ``name`` (the same one again for the same type, labels and,
    for a histogram, buckets, for a gauge, aggregate)."""
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("pulsetrace_"):
        raise ValueError(
            f"a metric name matches [a-zA-Z_:][a-zA-Z0-9_:]* and does not start with "
            f"'pulsetrace_', not {name!r}"
        )
    if not isinstance(help, str):
        raise ValueError(f"a metric's help is a str, not {type(help).__name__}")
    if isinstance(label_names, str) or not all(isinstance(n, str) for n in label_names):
        raise ValueError(f"label_names is a list of str, not {label_names!r}")
    labels = tuple(label_names)
    for n in labels:
        if not _LABEL.match(n) or n.startswith("__") or n in _RESERVED:
            raise ValueError(f"{n!r} cannot be a label name of metric {name!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"metric {name!r} names a label twice: {list(labels)}")
    if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
        raise ValueError(f"max_series must be a positive integer, not {max_series!r}")
    extra: dict[str, Any] = {}
    if cls is Histogram:
        extra["buckets"] = check_buckets(DEFAULT_BUCKETS if buckets is None else buckets)
    elif buckets is not None:
        raise ValueError(f"only a histogram has buckets, not a {cls.kind}")
    if cls is Gauge:
        extra["aggregate"] = check_aggregate("sum" if aggregate is None else aggregate)
    elif aggregate is not None:
        raise ValueError(f"only a gauge has an aggregate, not a {cls.kind}")
    with _registry_lock:
        found = _registry.get(name)
        if found is not None:
            if (
                type(found) is not cls
                or found.label_names != labels
                or getattr(found, "buckets", None) != extra.get("buckets")
                or getattr(found, "aggregate", None) != extra.get("aggregate")
            ):
                raise ValueError(
                    f"metric {name!r} exists as a {found.kind} with labels "
                    f"{list(found.label_names)}"
                    + (
                        f" and buckets {list(found.buckets)}"
                        if isinstance(found, Histogram)
                        else ""
                    )
                    + (f" and aggregate {found.aggregate!r}" if isinstance(found, Gauge) else "")
                )
            return found
        metric = _registry[name] = cls(name, help, labels, max_series, **extra)
        return metric


def families(state: Optional[dict[str, Any]] = None) -> list[Family]:
    """Every custom metric's exposition families, and the overflow counter:
    this process's, or those of ``state`` (:func:`state`, or several
    processes' merged by :func:`merge_states`; ValueError if malformed)."""
    return families_of(_metrics() if state is None else metrics_state.parsed(state))


def families_of(metrics: list[_Metric]) -> list[Family]:
    out = [f for m in metrics for f in m.families()]
    out.append(
        (
            "pulsetrace_custom_series_overflowed_total",
            "values of custom metrics dropped: their metric already had max_series series",
            "counter",
            [({"metric": m.name}, float(m.overflowed)) for m in metrics],
        )
    )
    return out


def to_json(state: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Every custom metric as JSON (``/health/metrics``): this process's,
    or those of ``state`` as for :func:`families`."""
    metrics = _metrics() if state is None else metrics_state.parsed(state)
    return [m.to_json() for m in metrics]


def state() -> dict[str, Any]:
    """This process's custom metrics, exactly, as a JSON-able value (the
    format is :mod:`pulsetrace.monitoring.metrics_state`'s)."""
    return metrics_state.state_of(_metrics())


def merge_states(states: list[Any]) -> dict[str, Any]:
    """The live processes' states (:func:`state`) combined into one: a
    malformed state is skipped, counted and logged."""
    return metrics_state.merge(states)


def fold_states(states: list[Any]) -> dict[str, Any]:
    """Dead processes' states combined into one kept for good: as
    :func:`merge_states`, without the gauges' values."""
    return metrics_state.merge(states, fold=True)


def _metrics() -> list[_Metric]:
    with _registry_lock:
        return list(_registry.values())


def clear() -> None:
    """Forget every custom metric (for tests)."""
    with _registry_lock:
        _registry.clear()


def _after_fork_in_child() -> None:
    """A forked worker's metrics start at zero, as its native histograms
    do: what its parent recorded before the fork is the parent's (which
    reports it itself), so a merged view counts it once. The metrics stay
    defined."""
    global _registry_lock
    _registry_lock = threading.Lock()
    for m in _registry.values():
        m.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def merged() -> Optional[dict[str, Any]]:
    """The whole application's custom metrics (every worker's, merged), or
    None when this process is alone or the merge failed: callers then
    render this process's own (``families()``, ``to_json()``)."""
    from pulsetrace.monitoring import workers

    return workers.merged_part(PART)


#: The name of the custom metrics' part in the workers' files
#: (:mod:`pulsetrace.monitoring.workers`: each process publishes its state,
#: the serving process merges them).
PART = "custom"


def _register() -> None:
    from pulsetrace.monitoring import workers

    workers.register_part(PART, state, merge_states, fold_states)


_register()
