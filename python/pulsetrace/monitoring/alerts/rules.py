"""Alert rules: what is watched, how bad it is, who hears about it.

A rule's condition is either a Python callable over a :class:`Snapshot`
(code only: never accepted over HTTP) or a declarative :class:`Threshold`
(also loadable from a JSON or YAML file, ``PULSETRACE_ALERT_RULES``). A
condition answers whether the rule is active, with the figure it judged.
A rule whose condition raises is marked broken (its error is reported by
``/monitoring/rules`` and ``/monitoring/status``) and the evaluator goes on.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from pulsetrace.monitoring.alerts.windowed import MAX_WINDOW_S, View

SEVERITIES = ("critical", "high", "medium", "warning", "business")
#: Each severity's response time (seconds): the ladder's later steps start
#: after it (see ``engine``).
RESPONSE_S = {"critical": 0.0, "high": 1800.0, "medium": 7200.0, "warning": 7200.0}
RESPONSE_S["business"] = 14400.0
CHANNEL_TYPES = ("slack", "webhook", "email", "pagerduty", "sms", "phone", "managers")
TEAMS = ("security", "dba")
KINDS = ("error_ratio", "rate", "rate_limited", "percentile", "gauge", "health")
OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


def duration(value: Union[int, float, str], what: str) -> float:
    """Seconds from a number (seconds) or ``"10m"``, ``"30s"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration (seconds or '10m'), not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|min|m|h|d)?\s*", value)
        if m is None:
            raise ValueError(f"{what}={value[:50]!r} is not a duration such as '10m' or '30s'")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{what} must be a duration (seconds or '10m')")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite duration of at least 0")
    return seconds


@dataclass
class Snapshot:
    """What a condition sees: ``operations`` (``pulsetrace.latency()``),
    ``counters`` (``pulsetrace.counters()``), ``gauges`` (name -> value, from
    code), ``health`` (check name -> passed, run only when a rule asks),
    the evaluation's time, per operation ``(time, count, errors, 429
    responses)`` history for windowed rates, and ``windows``: the
    operations' histograms over a window (:mod:`.windowed`; None outside
    an evaluator)."""

    now: float
    operations: list[dict[str, Any]]
    counters: dict[str, int]
    gauges: dict[str, float]
    health_fn: Callable[[], dict[str, bool]]
    history: dict[str, deque[tuple[float, int, int, int]]]
    _health: Optional[dict[str, bool]] = None
    windows: Optional[View] = None
    _by_name: Optional[dict[str, dict[str, Any]]] = field(default=None, repr=False)

    @property
    def health(self) -> dict[str, bool]:
        if self._health is None:
            self._health = self.health_fn()
        return self._health

    def operation(self, name: str) -> Optional[dict[str, Any]]:
        """The first row of ``operations`` named ``name`` (indexed once)."""
        if self._by_name is None:
            by_name: dict[str, dict[str, Any]] = {}
            for op in self.operations:
                by_name.setdefault(op.get("name"), op)  # type: ignore[arg-type]
            self._by_name = by_name
        return self._by_name.get(name)


@dataclass
class Verdict:
    """A condition's answer: active or not, the figure, the threshold."""

    active: bool
    value: Optional[float] = None
    threshold: Optional[float] = None
    operation: Optional[str] = None
    trace_id: Optional[str] = None
    #: False when there is no data to judge (an operation with too few
    #: samples, a gauge never set, a fresh process): the alert's state is
    #: left as it is, neither fired nor resolved.
    known: bool = True
    #: What the figure is, in words, for the alert's message ("traffic
    #: spike: ...").
    detail: Optional[str] = None


@dataclass(frozen=True)
class Threshold:
    """A declarative condition: ``kind`` over ``operation`` compared with
    ``threshold`` by ``op``.

    - ``error_ratio``: errors / requests over ``window`` (seconds);
    - ``rate``: requests per second over ``window`` (or, with
      ``counter:<name>`` as the operation, a counter's rate);
    - ``rate_limited``: responses with status 429 of the operation's
      server spans over ``window`` (a count);
    - for these, the operation ``*`` is every operation of ``span_kind``
      (``server``, ``consumer``, ...; None: of every kind) together;
    - ``percentile``: ``p50``/``p90``/``p99``/``p999`` (seconds) of what
      the operation's histograms (of ``span_kind``; None: every kind)
      recorded over ``window`` (at most an hour: see :mod:`.windowed`),
      judged once the window holds ``min_count`` samples;
    - ``gauge``: the value of a gauge set with ``set_gauge``;
    - ``health``: active while the health check ``operation`` fails.
    """

    kind: str
    operation: str
    threshold: float = 0.0
    op: str = ">"
    window: float = 300.0
    percentile: str = "p99"
    min_count: int = 1
    span_kind: Optional[str] = None

    def __post_init__(self) -> None:
        if self.operation == "*" and self.kind not in ("error_ratio", "rate", "rate_limited"):
            raise ValueError(
                "condition operation '*' (every operation) is for error_ratio, rate or rate_limited"
            )
        if self.kind not in KINDS:
            raise ValueError(f"condition kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.operation, str) or not self.operation:
            raise ValueError("condition operation must be a non-empty string")
        if self.op not in OPS:
            raise ValueError(f"condition op {self.op!r} is not one of {', '.join(OPS)}")
        if self.percentile not in ("p50", "p90", "p99", "p999"):
            raise ValueError(f"condition percentile {self.percentile!r} is not p50/p90/p99/p999")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError("condition threshold must be a finite number")
        object.__setattr__(self, "window", duration(self.window, "condition window"))
        if self.kind == "percentile" and not 0 < self.window <= MAX_WINDOW_S:
            raise ValueError(
                f"condition window {self.window:g}s: a percentile's window is more than 0"
                f" and at most {MAX_WINDOW_S:g}s (the histogram copies kept)"
            )
        n = self.min_count
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("condition min_count must be an integer of at least 1")

    def __call__(self, snap: Snapshot) -> Verdict:
        value = self.measure(snap)
        if value is None:
            return Verdict(False, None, self.threshold, self.operation, known=False)
        active = OPS[self.op](float(value), float(self.threshold))
        return Verdict(active, value, self.threshold, self.operation)

    def measure(self, snap: Snapshot) -> Optional[float]:
        if self.kind == "health":
            passed = snap.health.get(self.operation)
            return None if passed is None else (0.0 if passed else 1.0)
        if self.kind == "gauge":
            return snap.gauges.get(self.operation)
        if self.kind == "percentile":
            if snap.windows is None:  # no kept copies: since the process started
                op = snap.operation(self.operation)
                if op is None or op.get("count", 0) < self.min_count:
                    return None
                return float(op[self.percentile])
            w = snap.windows.operation(self.operation, self.window, self.span_kind)
            if w is None or w.count < self.min_count:
                return None
            return w.quantile_s(self.percentile)
        key = self.operation
        if key == "*":
            key = "*" + (self.span_kind or "")
        past = snap.history.get(key)
        if not past or len(past) < 2:
            return None
        newest = past[-1]
        oldest = next((p for p in past if p[0] >= newest[0] - self.window), past[0])
        if oldest is newest:
            oldest = past[-2]
        requests, errors = newest[1] - oldest[1], newest[2] - oldest[2]
        if self.kind == "rate_limited":
            return float(newest[3] - oldest[3])
        if self.kind == "rate":
            span = newest[0] - oldest[0]
            return requests / span if span > 0 else None
        return errors / requests if requests >= self.min_count else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "operation": self.operation,
            "op": self.op,
            "threshold": self.threshold,
            "window_s": self.window,
            "percentile": self.percentile,
            "min_count": self.min_count,
            "span_kind": self.span_kind,
        }


Condition = Callable[..., Any]


@dataclass
class Rule:
    """A rule as ``add_alert_rule`` takes it (the description's fields)."""

    id: str
    name: str
    condition: Union[Threshold, Condition]
    severity: str = "high"
    description: str = ""
    cooldown: float = 600.0
    channels: tuple[str, ...] = ()  # channel types; empty: every configured one
    enabled: bool = True
    team: Optional[str] = None
    for_s: float = 0.0
    # Evaluation state (the elected process's memory; alerts live in SQLite)
    broken: Optional[str] = None
    active_since: Optional[float] = None
    last_verdict: Optional[Verdict] = field(default=None, repr=False)

    def evaluate(self, snap: Snapshot) -> Verdict:
        """The condition's verdict; raises what the condition raised."""
        cond = self.condition
        if isinstance(cond, Threshold):
            return cond(snap)
        two = _arity(cond) >= 2  # the description's (metrics, health)
        out = cond(snap.operations, snap.health) if two else cond(snap)
        if isinstance(out, Verdict):
            return out
        if isinstance(out, (bool, int)) or out is None:
            return Verdict(bool(out))
        raise TypeError(f"the condition returned {type(out).__name__}, not a bool or Verdict")

    def to_json(self) -> dict[str, Any]:
        """The rule as listed: never a channel's URL, key or password."""
        cond: Any = self.condition
        # A built-in condition lists its parameters as a threshold does.
        to_json = getattr(cond, "to_json", None)
        shown = to_json() if callable(to_json) else {"kind": "code"}
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "severity": self.severity,
            "cooldown_s": self.cooldown,
            "for_s": self.for_s,
            "team": self.team,
            "channels": [{"type": c, "enabled": True} for c in self.channels],
            "enabled": self.enabled,
            "condition": shown,
            "broken": self.broken,
            "last": None
            if (v := self.last_verdict) is None
            else {"active": v.active, "known": v.known, "value": v.value},
        }


@functools.lru_cache(maxsize=4096)
def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # Required positional parameters: ``lambda snap, op=op: ...`` takes one.
    return sum(1 for p in params if p.kind in positional and p.default is p.empty)


def make_rule(
    id: str,
    name: str,
    condition: Union[Threshold, Condition, dict[str, Any]],
    severity: str = "high",
    description: str = "",
    cooldown: Union[int, float, str] = "10m",
    channels: Any = (),
    enabled: bool = True,
    team: Optional[str] = None,
    for_: Union[int, float, str] = 0,
) -> Rule:
    """A validated :class:`Rule`; ValueError naming the bad field."""
    if not isinstance(id, str) or not _ID.match(id):
        raise ValueError(f"rule id {str(id)[:100]!r} must be 1-100 of A-Z a-z 0-9 _ . : -")
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule {id}: name must be a non-empty string")
    if severity not in SEVERITIES:
        raise ValueError(f"rule {id}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    if team is not None and team not in TEAMS:
        raise ValueError(f"rule {id}: team {team!r} is not one of {', '.join(TEAMS)}")
    if isinstance(condition, dict):
        try:
            condition = Threshold(**condition)
        except TypeError as exc:
            raise ValueError(f"rule {id}: condition: {exc}") from None
    if not isinstance(condition, Threshold) and not callable(condition):
        raise ValueError(f"rule {id}: condition must be a callable or a threshold")
    kinds: list[str] = []
    for ch in channels or ():
        # The description's shape {type, config, enabled}: config is not kept
        # (channels are configured once, by name; rules never hold secrets).
        kind, on = (ch.get("type"), ch.get("enabled", True)) if isinstance(ch, dict) else (ch, True)
        if kind not in CHANNEL_TYPES:
            raise ValueError(f"rule {id}: channel type {kind!r} is not one of {CHANNEL_TYPES}")
        if on:
            kinds.append(kind)
    return Rule(
        id=id,
        name=name,
        condition=condition,
        severity=severity,
        description=str(description),
        cooldown=duration(cooldown, f"rule {id}: cooldown"),
        channels=tuple(kinds),
        enabled=bool(enabled),
        team=team,
        for_s=duration(for_, f"rule {id}: for"),
    )


def load(path: str) -> list[Rule]:
    """Declarative rules from a JSON file, or YAML (``.yaml``/``.yml``, with
    PyYAML installed): ``{"rules": [{id, name, severity, condition: {kind,
    operation, threshold, ...}, for, cooldown, channels, team}]}``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise ValueError(f"{path}: YAML rules need PyYAML installed (or use JSON)") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of rules (or {{'rules': [...]}})")
    return [from_dict(item, f"{path}: rule {i}") for i, item in enumerate(items)]


_FIELDS = {"id", "name", "description", "severity", "cooldown", "channels", "enabled", "team"}


def from_dict(item: Any, where: str) -> Rule:
    """A declarative rule (a dict whose condition is a threshold)."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a rule must be an object")
    unknown = set(item) - _FIELDS - {"condition", "for"}
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    cond = item.get("condition")
    if not isinstance(cond, dict):
        raise ValueError(f"{where}: condition must be an object (kind, operation, threshold)")
    kw = {k: v for k, v in item.items() if k in _FIELDS}
    try:
        return make_rule(condition=dict(cond), for_=item.get("for", 0), **kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
