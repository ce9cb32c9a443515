"""The exact state of custom metrics, and its merge over processes.

Under a pre-fork server every worker records its own custom metrics (and
the business metrics built on them); the serving process shows the whole
application from every worker's state, merged. A state is JSON-able::

    {"metrics": [
        {"name": "orders_total", "kind": "counter", "help": "orders placed",
         "labels": ["plan"], "max_series": 1000, "overflowed": 0,
         "series": [[["pro"], 3.0], ...]},
        {"name": "active_users", "kind": "gauge", ..., "aggregate": "sum",
         "series": [[["comp_1"], 150.0, <unix time the value changed>], ...]},
        {"name": "checkout_seconds", "kind": "histogram", ..., "buckets": [0.005, ...],
         "series": [[["pay"], {"v2": <the native Histogram.encode()>,
                               "total": <its exact sum>, "min": <its min>,
                               "max": <its max>, "sum": <the observed values' sum>}]]}]}

The histogram's figures are in thousandths, as recorded; the V2 encoding
carries every slot's count, the other fields what it cannot carry.

Merging: counters add; histograms add exactly (the native core's merge:
counts, min, max, and the buckets and percentiles read from the merged
histogram; sums add); a gauge combines by its ``aggregate``: ``sum``,
``max``, ``min`` or ``last`` (the value that changed last). Folding dead
processes' states (kept for good, counted once) drops the gauges' values: a
dead process's level is gone with it. A metric known to one process only
still appears; one defined differently in two processes (another kind,
labels, buckets or aggregate) keeps the first definition met and skips the
other's series. The merged view keeps at most ``max_series`` series per
metric: each further series adds one to the metric's overflow count. A
malformed state is skipped whole, counted and logged (``_diag``: place
``metrics_custom.merge``), and the others merge.

Rebuilding a state's metrics (decoding every histogram) is most of a
merge's cost, so :func:`parsed` keeps what a versioned state
(``workers_parts.Published``: one process's copy, named by file, part and
generation) rebuilds to: a copy unchanged since the last merge is not
rebuilt again, a changed copy has a new version and is. The kept metrics
are only read (a merge copies what it adds to), and only those of the
states met in the last merge and the last fold are kept. The merged state
is versioned too, with its metrics kept, so rendering it rebuilds nothing;
a merge of the very copies the last merge had (every version the same)
returns that merge's state.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import os
import threading
from collections.abc import Iterable
from typing import Any

from pulsetrace import _diag
from pulsetrace.monitoring import metrics_custom as mc
from pulsetrace.monitoring.workers_parts import Published

_KINDS = ("counter", "gauge", "histogram")
_U64 = 1 << 64


def state_of(metrics: Iterable[mc._Metric]) -> dict[str, Any]:
    """The state of ``metrics`` (see the module doc)."""
    return {"metrics": [_metric_state(m) for m in metrics]}


def _metric_state(m: mc._Metric) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": m.name,
        "kind": m.kind,
        "help": m.help,
        "labels": list(m.label_names),
        "max_series": m.max_series,
    }
    with m._lock:
        items = list(m._series.items())
        out["overflowed"] = m.overflowed
        if isinstance(m, mc.Gauge):
            out["aggregate"] = m.aggregate
            out["series"] = [[list(k), v, m._changed.get(k, 0.0)] for k, v in items]
        elif not isinstance(m, mc.Histogram):
            out["series"] = [[list(k), v] for k, v in items]
    if isinstance(m, mc.Histogram):
        out["buckets"] = list(m.buckets)
        out["series"] = []
        for k, s in items:
            with m._lock:  # one series at a time: its sum agrees with its counts
                h = s.hist
                count, cached = h.count, m._encoded.get(k)
                if cached is not None and cached[0] is s and cached[1] == count:
                    row = cached[2]  # nothing recorded since: not encoded again
                else:
                    row = {"v2": h.encode(), "total": h.sum, "min": h.min, "max": h.max}
                    row["sum"] = s.sum
                    m._encoded[k] = (s, count, row)
            out["series"].append([list(k), dict(row)])
    return out


def parse(state: Any) -> list[mc._Metric]:
    """The metrics of ``state``, rebuilt (histograms decoded); ValueError
    naming the metric, the series and what is wrong."""
    if not isinstance(state, dict) or not isinstance(state.get("metrics"), list):
        raise ValueError(f"a metrics state is a dict with a list 'metrics', not {state!r:.80}")
    out: list[mc._Metric] = []
    seen: set[str] = set()
    for i, d in enumerate(state["metrics"]):
        name = d.get("name") if isinstance(d, dict) else None
        try:
            m = _parse_metric(d)
        except (ValueError, TypeError, OverflowError) as e:
            where = repr(name) if isinstance(name, str) else f"#{i}"
            raise ValueError(f"metrics state: metric {where}: {e}") from None
        if m.name in seen:
            raise ValueError(f"metrics state: metric {m.name!r} twice")
        seen.add(m.name)
        out.append(m)
    return out


def _field(d: dict[str, Any], key: str, kind: type) -> Any:
    if key not in d:
        raise ValueError(f"no {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise ValueError(f"{key!r} is a {kind.__name__}, not {v!r:.60}")
    return v


def _count(d: dict[str, Any], key: str, below: int = _U64) -> int:
    v = _field(d, key, int)
    if not 0 <= v < below:
        raise ValueError(f"{key!r} is a count, not {v!r}")
    return int(v)


def new_like(m: mc._Metric) -> mc._Metric:
    """A metric defined as ``m``, with no series."""
    if isinstance(m, mc.Histogram):
        return mc.Histogram(m.name, m.help, m.label_names, m.max_series, m.buckets)
    if isinstance(m, mc.Gauge):
        return mc.Gauge(m.name, m.help, m.label_names, m.max_series, m.aggregate)
    return mc.Counter(m.name, m.help, m.label_names, m.max_series)


def _parse_metric(d: Any) -> mc._Metric:
    if not isinstance(d, dict):
        raise ValueError(f"a metric is a dict, not {type(d).__name__}")
    name = _field(d, "name", str)
    if not mc._NAME.match(name):
        raise ValueError("its name is not a metric name")
    kind = _field(d, "kind", str)
    if kind not in _KINDS:
        raise ValueError(f"its kind is one of {list(_KINDS)}, not {kind!r:.40}")
    help = _field(d, "help", str)
    labels = tuple(_field(d, "labels", list))
    if not all(isinstance(n, str) for n in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"its labels are distinct str, not {list(labels)!r:.80}")
    max_series = _count(d, "max_series")
    if max_series < 1:
        raise ValueError("'max_series' is at least 1")
    m: mc._Metric
    if kind == "histogram":
        m = mc.Histogram(name, help, labels, max_series, mc.check_buckets(d.get("buckets")))
    elif kind == "gauge":
        m = mc.Gauge(name, help, labels, max_series, mc.check_aggregate(d.get("aggregate")))
    else:
        m = mc.Counter(name, help, labels, max_series)
    m.overflowed = _count(d, "overflowed")
    rows = _field(d, "series", list)
    if len(rows) > max_series:
        raise ValueError(f"{len(rows)} series, more than its max_series {max_series}")
    for j, row in enumerate(rows):
        try:
            _parse_series(m, row)
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"series #{j}: {e}") from None
    return m


def _parse_series(m: mc._Metric, row: Any) -> None:
    width = 3 if isinstance(m, mc.Gauge) else 2
    if not isinstance(row, list) or len(row) != width:
        raise ValueError(f"a {m.kind}'s series is a list of {width}, not {row!r:.80}")
    values = row[0]
    if (
        not isinstance(values, list)
        or len(values) != len(m.label_names)
        or not all(isinstance(v, str) for v in values)
    ):
        raise ValueError(f"its label values are {len(m.label_names)} str, not {values!r:.80}")
    key = tuple(values)
    if key in m._series:
        raise ValueError(f"label values {values!r:.80} twice")
    if isinstance(m, mc.Histogram):
        m._series[key] = _parse_histogram(row[1])
    elif isinstance(m, mc.Gauge):
        m._series[key] = mc._check_number(row[1], "a gauge's value")
        m._changed[key] = mc._check_number(row[2], "the time a gauge changed")
    else:
        v = mc._check_number(row[1], "a counter's value")
        if v < 0:
            raise ValueError(f"a counter's value is at least 0, not {v!r}")
        m._series[key] = v


def _parse_histogram(d: Any) -> mc._HistogramSeries:
    if not isinstance(d, dict):
        raise ValueError(f"a histogram's series is a dict, not {type(d).__name__}")
    encoded = _field(d, "v2", str)
    total, low, high = _count(d, "total", _U64 * _U64), _count(d, "min"), _count(d, "max")
    s = mc._HistogramSeries()
    s.sum = mc._check_number(d.get("sum"), "a histogram's sum")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as e:
        raise ValueError(f"its 'v2' is not base64 ({e})") from None
    try:
        s.hist.add_encoded(raw, total, low, high)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"its 'v2' is not a histogram's encoding: {e}") from None
    return s


class _Kept:
    """The metrics versioned states rebuild to (module doc): those of the
    last merge, of the last fold, and of the last merged state."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_use: dict[str, dict[Any, list[mc._Metric]]] = {"merge": {}, "fold": {}}
        self.merged: tuple[Any, list[mc._Metric]] = ((), [])
        #: The versions the last merge had, and its state.
        self.last: tuple[Any, Any] = (None, None)
        self.serials = itertools.count(1)

    def find(self, version: Any) -> Any:
        with self.lock:
            if self.merged[0] == version:
                return self.merged[1]
            for kept in self.by_use.values():
                got = kept.get(version)
                if got is not None:
                    return got
        return None


_kept = _Kept()


def _after_fork_in_child() -> None:
    """A forked worker keeps its own rebuilds: its parent's lock may have
    been held at the fork by a thread that does not exist here."""
    global _kept
    _kept = _Kept()


os.register_at_fork(after_in_child=_after_fork_in_child)


def parsed(state: Any) -> list[mc._Metric]:
    """:func:`parse`, kept for a versioned state (module doc): the metrics
    returned are shared, to be read only."""
    version = state.version if isinstance(state, Published) else None
    got = None if version is None else _kept.find(version)
    return parse(state) if got is None else got


def forget() -> None:
    """Drop every kept rebuild (the next merge rebuilds every state)."""
    with _kept.lock:
        _kept.by_use = {"merge": {}, "fold": {}}
        _kept.merged = ((), [])
        _kept.last = (None, None)


def merge(states: list[Any], fold: bool = False) -> dict[str, Any]:
    """``states`` combined (see the module doc); with ``fold``, without the
    gauges' values. The result is versioned (its metrics kept) unless folded."""
    inputs = None
    if not fold and all(isinstance(st, Published) for st in states):
        inputs = tuple(st.version for st in states)
        with _kept.lock:
            if _kept.last[0] == inputs:
                return _kept.last[1]  # type: ignore[no-any-return]
    metrics: list[list[mc._Metric]] = []
    used: dict[Any, list[mc._Metric]] = {}
    for i, st in enumerate(states):
        try:
            got = parsed(st)
        except Exception as e:  # whatever is wrong with it, the others merge
            skipped(i, e)
            continue
        metrics.append(got)
        if isinstance(st, Published):
            used[st.version] = got
    merged = merge_parsed(metrics, fold)
    out = state_of(merged)
    with _kept.lock:
        _kept.by_use["fold" if fold else "merge"] = used
        if fold:
            return out
        version = ("merged", next(_kept.serials))
        _kept.merged = (version, merged)
        out = Published(out, version)
        _kept.last = (inputs, out)
    return out


def skipped(i: int, e: Exception) -> None:
    """Count and log (rate-limited) a malformed state left out of a merge."""
    _diag.internal_error("metrics_custom.merge", ValueError(f"state #{i} skipped: {e}"))


def merge_parsed(parsed: list[list[mc._Metric]], fold: bool = False) -> list[mc._Metric]:
    """The metrics of several processes (:func:`parse` results, only read:
    what is added is copied) combined."""
    merged: dict[str, mc._Metric] = {}
    for metrics in parsed:
        for m in metrics:
            into = merged.get(m.name)
            if into is None:
                into = merged[m.name] = new_like(m)
            elif _definition(into) != _definition(m):
                _diag.internal_error(
                    "metrics_custom.merge",
                    ValueError(
                        f"metric {m.name!r} is {_definition(m)} in one process and "
                        f"{_definition(into)} in another: the first kept, the other skipped"
                    ),
                )
                continue
            _add(into, m, fold)
    return list(merged.values())


def _definition(m: mc._Metric) -> tuple[Any, ...]:
    return (
        m.kind,
        m.label_names,
        getattr(m, "buckets", None),
        getattr(m, "aggregate", None),
    )


def _add(into: mc._Metric, m: mc._Metric, fold: bool) -> None:
    into.overflowed += m.overflowed
    if fold and isinstance(m, mc.Gauge):
        return
    for key, v in m._series.items():
        cur = into._series.get(key)
        if cur is None:
            if len(into._series) >= into.max_series:
                into.overflowed += 1
                continue
            if isinstance(v, mc._HistogramSeries):  # a copy: ``m`` is only read
                v = _copy(v)
            into._series[key] = v
            if isinstance(into, mc.Gauge) and isinstance(m, mc.Gauge):
                into._changed[key] = m._changed[key]
        elif isinstance(into, mc.Histogram):
            cur.hist.add(v.hist)
            cur.sum += v.sum
        elif isinstance(into, mc.Gauge) and isinstance(m, mc.Gauge):
            into._series[key], into._changed[key] = _gauge(
                into.aggregate, (cur, into._changed[key]), (v, m._changed[key])
            )
        else:
            into._series[key] = cur + v


def _copy(s: mc._HistogramSeries) -> mc._HistogramSeries:
    out = mc._HistogramSeries()
    out.hist.add(s.hist)
    out.sum = s.sum
    return out


def _gauge(aggregate: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Two processes' (value, time it changed) of one gauge series, combined."""
    when = max(a[1], b[1])
    if aggregate == "sum":
        return a[0] + b[0], when
    if aggregate == "max":
        return max(a[0], b[0]), when
    if aggregate == "min":
        return min(a[0], b[0]), when
    return b if b[1] > a[1] else a  # last


def number(d: dict[str, Any], key: str) -> float:
    """A finite number field of a state; ValueError naming it."""
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key!r} is a finite number, not {v!r:.60}")
    return float(v)
