"""pulsetrace's configuration, read from the environment.

Every variable is documented in the README's configuration table. A value
that cannot be used never raises: it produces one warning on the
``pulsetrace`` logger naming the variable, the bad value and the value used
instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional

log = logging.getLogger("pulsetrace")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass
class Config:
    """Agent settings. Field defaults are the documented defaults."""

    # Switches and identity
    enabled: bool = True
    service_name: str = "unknown_service"
    resource_attributes: dict[str, str] = field(default_factory=dict)
    disabled_integrations: frozenset[str] = frozenset()
    log_level: str = "warning"
    # Head sampling (OpenTelemetry), before the tail sampler
    head_sampler: str = "parentbased_always_on"
    head_sampler_ratio: float = 1.0
    # Tail sampling
    sample_rate: float = 0.1
    keep_errors: bool = True
    slow_threshold_ms: float = 0.0
    adaptive_percentile: float = 99.0
    adaptive_min_count: int = 100
    keep_attributes: list[tuple[str, Optional[str]]] = field(default_factory=list)
    rate_limit: float = 0.0
    decision_wait_ms: float = 10_000.0
    # Buffers
    max_open_traces: int = 10_000
    max_spans_per_trace: int = 1_000
    export_queue_size: int = 20_000
    worker_interval_ms: float = 200.0
    intake_queue_size: int = 4_096
    intake_interval_ms: float = 50.0
    # Histograms
    histogram_sigfig: int = 2
    max_metric_keys: int = 1_000
    # Attribute limits
    max_attribute_length: int = 4_096
    max_attributes: int = 128
    max_events: int = 128
    # Export
    export_interval_ms: float = 1_000.0
    prometheus_enabled: bool = False
    metrics_addr: str = "127.0.0.1:9464"
    metrics_max_connections: int = 256
    metrics_read_timeout_ms: float = 5_000.0

    def __post_init__(self) -> None:
        # The resource always names the service the way service_name does.
        self.resource_attributes = {**self.resource_attributes, "service.name": self.service_name}

    def to_native(self) -> dict[str, Any]:
        """The dict the native ``Tracer`` is built from."""
        d = asdict(self)
        d["disabled_integrations"] = sorted(self.disabled_integrations)
        return d

    def integration_enabled(self, name: str) -> bool:
        """Whether the integration ``name`` may be switched on."""
        return self.enabled and name not in self.disabled_integrations

    def replace(self, **overrides: Any) -> Config:
        """A copy with some fields replaced; unknown names raise TypeError."""
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown pulsetrace settings: {', '.join(sorted(unknown))}")
        data = asdict(self)
        data.update(overrides)
        return Config(**data)


def _warn(var: str, raw: str, why: str, used: Any) -> None:
    log.warning("pulsetrace: %s=%r is %s; using %r instead", var, raw, why, used)


def _number(
    env: Mapping[str, str],
    var: str,
    default: float,
    *,
    kind: Callable[[str], Any] = float,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
) -> Any:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        _warn(var, raw, "not a number" if kind is float else "not an integer", default)
        return default
    if isinstance(value, float) and not math.isfinite(value):
        _warn(var, raw, "not a finite number", default)
        return default
    if low is not None and (value < low or (low_open and value == low)):
        _warn(var, raw, f"below the minimum ({'>' if low_open else '>='} {low:g})", default)
        return default
    if high is not None and value > high:
        _warn(var, raw, f"above the maximum ({high:g})", default)
        return default
    return value


def _bool(env: Mapping[str, str], var: str, default: bool) -> bool:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    _warn(var, raw, "not a boolean (true/false)", default)
    return default


def _addr(env: Mapping[str, str], var: str, default: str) -> str:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        _warn(var, raw, "not host:port", default)
        return default
    return raw.strip()


def _rules(env: Mapping[str, str], var: str) -> list[tuple[str, Optional[str]]]:
    raw = env.get(var, "")
    rules: list[tuple[str, Optional[str]]] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not key:
            _warn(var, raw, f"malformed (rule {part!r} has no attribute name)", "the rule skipped")
            continue
        rules.append((key, value.strip() if sep else None))
    return rules


_HEAD_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _choice(env: Mapping[str, str], var: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v == "warn":
        v = "warning"
    if v not in choices:
        _warn(var, raw, f"not one of {', '.join(choices)}", default)
        return default
    return v


def _resource(env: Mapping[str, str]) -> dict[str, str]:
    from urllib.parse import unquote

    raw = env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    out: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            _warn("OTEL_RESOURCE_ATTRIBUTES", raw, f"malformed at {part!r}", "that entry skipped")
            continue
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _disabled(env: Mapping[str, str]) -> frozenset[str]:
    names = {
        n.strip().lower()
        for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
        if n.strip()
    }
    for var in env:
        if var.startswith("PULSETRACE_") and var.endswith("_ENABLED"):
            name = var[len("PULSETRACE_") : -len("_ENABLED")].lower()
            if name and not _bool(env, var, True):
                names.add(name)
    return frozenset(names)


def from_env(env: Optional[Mapping[str, str]] = None) -> Config:
    """Read the configuration from ``env`` (default: ``os.environ``)."""
    e = os.environ if env is None else env
    d = Config()
    resource = _resource(e)
    service = (e.get("OTEL_SERVICE_NAME") or "").strip() or resource.get(
        "service.name", d.service_name
    )
    resource["service.name"] = service
    return Config(
        enabled=_bool(e, "APM_ENABLED", True) and not _bool(e, "OTEL_SDK_DISABLED", False),
        service_name=service,
        resource_attributes=resource,
        disabled_integrations=_disabled(e),
        log_level=_choice(e, "LOG_LEVEL", d.log_level, _LOG_LEVELS),
        head_sampler=_choice(e, "OTEL_TRACES_SAMPLER", d.head_sampler, _HEAD_SAMPLERS),
        head_sampler_ratio=_number(
            e, "OTEL_TRACES_SAMPLER_ARG", d.head_sampler_ratio, low=0.0, high=1.0
        ),
        sample_rate=_number(e, "PULSETRACE_SAMPLE_RATE", d.sample_rate, low=0.0, high=1.0),
        keep_errors=_bool(e, "PULSETRACE_KEEP_ERRORS", d.keep_errors),
        slow_threshold_ms=_number(e, "PULSETRACE_SLOW_THRESHOLD_MS", d.slow_threshold_ms, low=0.0),
        adaptive_percentile=_number(
            e, "PULSETRACE_ADAPTIVE_PERCENTILE", d.adaptive_percentile, low=0.0, high=99.999
        ),
        adaptive_min_count=_number(
            e, "PULSETRACE_ADAPTIVE_MIN_COUNT", d.adaptive_min_count, kind=int, low=1
        ),
        keep_attributes=_rules(e, "PULSETRACE_KEEP_ATTRIBUTES"),
        rate_limit=_number(e, "PULSETRACE_RATE_LIMIT", d.rate_limit, low=0.0),
        decision_wait_ms=_number(
            e, "PULSETRACE_DECISION_WAIT_MS", d.decision_wait_ms, low=0.0, low_open=True
        ),
        max_open_traces=_number(
            e, "PULSETRACE_MAX_OPEN_TRACES", d.max_open_traces, kind=int, low=1
        ),
        max_spans_per_trace=_number(
            e, "PULSETRACE_MAX_SPANS_PER_TRACE", d.max_spans_per_trace, kind=int, low=1
        ),
        export_queue_size=_number(
            e, "PULSETRACE_EXPORT_QUEUE_SIZE", d.export_queue_size, kind=int, low=1
        ),
        worker_interval_ms=_number(
            e, "PULSETRACE_WORKER_INTERVAL_MS", d.worker_interval_ms, low=1.0
        ),
        intake_queue_size=_number(
            e, "PULSETRACE_INTAKE_QUEUE_SIZE", d.intake_queue_size, kind=int, low=16
        ),
        intake_interval_ms=_number(
            e, "PULSETRACE_INTAKE_INTERVAL_MS", d.intake_interval_ms, low=0.1
        ),
        histogram_sigfig=_number(
            e, "PULSETRACE_HISTOGRAM_DIGITS", d.histogram_sigfig, kind=int, low=1, high=5
        ),
        max_metric_keys=_number(
            e, "PULSETRACE_MAX_METRIC_KEYS", d.max_metric_keys, kind=int, low=1
        ),
        max_attribute_length=_number(
            e, "PULSETRACE_MAX_ATTRIBUTE_LENGTH", d.max_attribute_length, kind=int, low=16
        ),
        max_attributes=_number(e, "PULSETRACE_MAX_ATTRIBUTES", d.max_attributes, kind=int, low=0),
        max_events=_number(e, "PULSETRACE_MAX_EVENTS", d.max_events, kind=int, low=0),
        export_interval_ms=_number(
            e, "PULSETRACE_EXPORT_INTERVAL_MS", d.export_interval_ms, low=10.0
        ),
        prometheus_enabled=_bool(e, "PROMETHEUS_ENABLED", d.prometheus_enabled),
        metrics_addr=_addr(e, "PULSETRACE_METRICS_ADDR", d.metrics_addr),
        metrics_max_connections=_number(
            e, "PULSETRACE_METRICS_MAX_CONNECTIONS", d.metrics_max_connections, kind=int, low=1
        ),
        metrics_read_timeout_ms=_number(
            e, "PULSETRACE_METRICS_READ_TIMEOUT_MS", d.metrics_read_timeout_ms, low=1.0
        ),
    )
