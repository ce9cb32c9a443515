"""pulsetrace's configuration: one frozen object.

Every setting is a field of :class:`Config` (the OTLP exporter's are the
fields of :class:`OtlpConfig`, its ``otlp`` field). A field declares, in one
place, its default, the environment variable it is read from and, for a
number, its documented range; the README's configuration table states the
same (a test compares them).

Where the rules live, and why here: the environment is read by Python
(:mod:`pulsetrace._env`, the one module that reads it, once per process),
and this is where a value is judged: from the environment an unusable value
is replaced with one warning (clamped into its range, or the default), in
code (``Config(...)``, ``pulsetrace.configure(**overrides)``) it raises a
``ValueError`` naming the field. The native core receives a ``Config`` and
has no defaults or ranges of its own: it checks only what its own types need
to be sound (a capacity of at least one, a probability within [0, 1]), and a
value outside them is a bug in its caller, reported as an error naming the
field.

Memory: the ranges bound what the settings can make pulsetrace hold. The
intake queue, the only buffer allocated in full when the agent starts, has at
most 65536 slots (about 16 MB); the open traces, the export queue and the
histograms grow only as spans arrive, up to their settings.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from dataclasses import replace as _replace
from types import MappingProxyType
from typing import Any, NamedTuple, Optional

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"

HEAD_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
COMPRESSIONS = ("gzip", "none")
SCRUB_MODES = ("mask", "redact", "off")

#: The query parameters redacted by default (a parameter is sensitive when
#: its lower-cased name contains one of these words).
DEFAULT_REDACT_QUERY_PARAMS = (
    "token",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "signature",
    "sig",
    "auth",
    "credential",
    "session",
    "code",
)

#: The request paths that get no span by default (regular expressions,
#: searched in the decoded path): ``/health`` and what lies under it, the
#: probe routes.
DEFAULT_EXCLUDED_URLS = ("^/health(/.*)?$",)
#: The frameworks whose OpenTelemetry variable ``OTEL_PYTHON_<NAME>_EXCLUDED_URLS``
#: gives them a list of their own (the native core's, checked by the tests).
EXCLUSION_FRAMEWORKS = ("FLASK", "DJANGO", "FASTAPI", "STARLETTE")


class Setting(NamedTuple):
    """What a field declares: the variables it is read from and, for a
    number, its documented range (inclusive)."""

    env: tuple[str, ...]
    low: Optional[float] = None
    high: Optional[float] = None


def _declare(
    *env: str, low: Optional[float] = None, high: Optional[float] = None
) -> dict[str, Setting]:
    """A field's metadata: the variables it is read from, its range."""
    return {"setting": Setting(env, low, high)}


def setting(cls: type, name: str) -> Setting:
    """The :class:`Setting` of field ``name`` of ``cls``."""
    found: Setting = _FIELDS[cls][name].metadata["setting"]
    return found


def number_repr(v: float) -> str:
    """A number as the README and the warnings write it (``3600000``, ``0.1``)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(v)


def range_problem(value: float, s: Setting) -> Optional[str]:
    """Why ``value`` is outside the range of ``s``, or None."""
    if s.low is not None and value < s.low:
        return f"below the minimum ({number_repr(s.low)})"
    if s.high is not None and value > s.high:
        return f"above the maximum ({number_repr(s.high)})"
    return None


def crossed_bound(value: float, s: Setting) -> float:
    """The bound of ``s`` that ``value`` is beyond (for a value
    :func:`range_problem` rejects)."""
    if s.low is not None and value < s.low:
        return s.low
    return s.high if s.high is not None else value


def addr_problem(addr: str) -> Optional[str]:
    """Why ``addr`` is not a ``host:port`` to listen on, or None."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        return "not host:port"
    if not 0 < int(port) < 65536:
        return f"out of range: the port {port} is not within 1 to 65535"
    return None


def is_text(s: str) -> bool:
    """Whether ``s`` can be encoded as UTF-8 (``os.environ`` keeps the bytes of
    a value that is not valid UTF-8 as lone surrogates, which cannot)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(obj: Any) -> None:
    """Validate every declared field of ``obj`` (a Config or OtlpConfig) and
    normalize containers to immutable ones; raise ValueError naming a field."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        s: Optional[Setting] = f.metadata.get("setting")
        if s is not None and s.high is not None:
            integer = isinstance(f.default, int)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"pulsetrace setting {f.name}={value!r} is not {kind}")
            if integer and not isinstance(value, int):
                raise ValueError(f"pulsetrace setting {f.name}={value!r} is not an integer")
            if math.isnan(value):
                raise ValueError(f"pulsetrace setting {f.name} is not a number (NaN)")
            why = range_problem(value, s)
            if why is not None:
                raise ValueError(f"pulsetrace setting {f.name}={value!r} is {why}")
            if not integer:
                object.__setattr__(obj, f.name, float(value))
        _check_text(f.name, value)


def _check_text(name: str, value: Any) -> None:
    if isinstance(value, str):
        if not is_text(value):
            raise ValueError(f"pulsetrace setting {name} is not valid UTF-8 text")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_text(name, k)
            _check_text(name, v)
    elif isinstance(value, (tuple, list, frozenset, set)):
        for v in value:
            _check_text(name, v)


def pattern_problem(pattern: str) -> Optional[str]:
    """Why ``pattern`` is not a usable excluded-URL expression, or None (the
    native core compiles them: its syntax is the one that counts)."""
    from pulsetrace._native import http_excluded_problem

    return http_excluded_problem(pattern)


def _check_patterns(patterns: tuple[str, ...], name: str = "excluded_urls") -> None:
    for p in patterns:
        if not isinstance(p, str):
            raise ValueError(f"pulsetrace setting {name} holds {p!r}, not a str")
        if is_text(p):
            why = pattern_problem(p)
            if why is not None:
                raise ValueError(f"pulsetrace setting {name}: {why}")


def _framework_lists(cfg: Config) -> Mapping[str, tuple[str, ...]]:
    from pulsetrace._native import http_exclusion_frameworks

    known = http_exclusion_frameworks()
    out = {}
    for name, patterns in dict(cfg.framework_excluded_urls).items():
        what = f"framework_excluded_urls[{name!r}]"
        if name not in known:
            raise ValueError(f"pulsetrace setting {what}: not one of {', '.join(known)}")
        if isinstance(patterns, (str, bytes)):
            raise ValueError(
                f"pulsetrace setting {what} is a list of regular expressions, "
                f"not the text {patterns!r:.60}"
            )
        out[name] = tuple(patterns)
        _check_patterns(out[name], what)
    return MappingProxyType(out)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"pulsetrace setting {name}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class OtlpConfig:
    """Where and how the OTLP exporter sends traces.

    ``endpoint`` is the URL requests go to: for ``http/protobuf`` the full
    URL of the traces path (``.../v1/traces``), for ``grpc`` the collector's
    address (a path is ignored). ``insecure`` means plaintext (no TLS).
    ``certificate`` is a CA file (PEM) trusted for TLS instead of the
    system's roots. Each field also reads the ``OTEL_EXPORTER_OTLP_TRACES_``
    form of its variable, which wins.
    """

    exporters: tuple[str, ...] = field(default=("otlp",), metadata=_declare("OTEL_TRACES_EXPORTER"))
    protocol: str = field(default=GRPC, metadata=_declare("OTEL_EXPORTER_OTLP_PROTOCOL"))
    endpoint: str = field(
        default=DEFAULT_GRPC_ENDPOINT, metadata=_declare("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    headers: Mapping[str, str] = field(
        default_factory=dict, metadata=_declare("OTEL_EXPORTER_OTLP_HEADERS")
    )
    timeout_ms: float = field(
        default=10_000.0, metadata=_declare("OTEL_EXPORTER_OTLP_TIMEOUT", low=1, high=600_000)
    )
    compression: str = field(default="none", metadata=_declare("OTEL_EXPORTER_OTLP_COMPRESSION"))
    insecure: bool = field(default=True, metadata=_declare("OTEL_EXPORTER_OTLP_INSECURE"))
    certificate: Optional[str] = field(
        default=None, metadata=_declare("OTEL_EXPORTER_OTLP_CERTIFICATE")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "exporters", tuple(self.exporters))
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
        for name in self.exporters:
            _choice("exporters", name, EXPORTERS)
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("compression", self.compression, COMPRESSIONS)
        _check(self)

    @property
    def enabled(self) -> bool:
        """Whether traces are to be exported over OTLP at all."""
        return "otlp" in self.exporters

    @property
    def console(self) -> bool:
        """Whether ``OTEL_TRACES_EXPORTER`` asks for the console exporter."""
        return "console" in self.exporters


@dataclass(frozen=True)
class Config:
    """Agent settings. Field defaults are the documented defaults; numbers
    outside their documented range raise ValueError (in code) or are clamped
    with a warning (from the environment)."""

    # Switches and identity
    enabled: bool = field(default=True, metadata=_declare("APM_ENABLED", "OTEL_SDK_DISABLED"))
    service_name: str = field(default="unknown_service", metadata=_declare("OTEL_SERVICE_NAME"))
    resource_attributes: Mapping[str, str] = field(
        default_factory=dict, metadata=_declare("OTEL_RESOURCE_ATTRIBUTES")
    )
    disabled_integrations: frozenset[str] = field(
        default=frozenset(),
        metadata=_declare("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "PULSETRACE_<NAME>_ENABLED"),
    )
    log_level: str = field(default="info", metadata=_declare("LOG_LEVEL"))
    diag_log_level: str = field(default="warning", metadata=_declare("PULSETRACE_LOG_LEVEL"))
    # Logs (pulsetrace.logging)
    logs_json: bool = field(default=False, metadata=_declare("PULSETRACE_LOGS_JSON"))
    access_log: bool = field(default=False, metadata=_declare("PULSETRACE_ACCESS_LOG"))
    logs_fluentd_addr: Optional[str] = field(
        default=None, metadata=_declare("PULSETRACE_LOGS_FLUENTD_ADDR")
    )
    logs_fluentd_tag: str = field(default="app", metadata=_declare("PULSETRACE_LOGS_FLUENTD_TAG"))
    logs_queue_size: int = field(
        default=10_000, metadata=_declare("PULSETRACE_LOGS_QUEUE_SIZE", low=1, high=1_000_000)
    )
    # Head sampling (OpenTelemetry), before the tail sampler
    head_sampler: str = field(
        default="parentbased_always_on", metadata=_declare("OTEL_TRACES_SAMPLER")
    )
    head_sampler_ratio: float = field(
        default=1.0, metadata=_declare("OTEL_TRACES_SAMPLER_ARG", low=0, high=1)
    )
    # Tail sampling
    sample_rate: float = field(
        default=0.1, metadata=_declare("PULSETRACE_SAMPLE_RATE", low=0, high=1)
    )
    keep_errors: bool = field(default=True, metadata=_declare("PULSETRACE_KEEP_ERRORS"))
    slow_threshold_ms: float = field(
        default=0.0, metadata=_declare("PULSETRACE_SLOW_THRESHOLD_MS", low=0, high=86_400_000)
    )
    adaptive_percentile: float = field(
        default=99.0, metadata=_declare("PULSETRACE_ADAPTIVE_PERCENTILE", low=0, high=99.999)
    )
    adaptive_min_count: int = field(
        default=100, metadata=_declare("PULSETRACE_ADAPTIVE_MIN_COUNT", low=1, high=1_000_000_000)
    )
    keep_attributes: tuple[tuple[str, Optional[str]], ...] = field(
        default=(), metadata=_declare("PULSETRACE_KEEP_ATTRIBUTES")
    )
    rate_limit: float = field(
        default=0.0, metadata=_declare("PULSETRACE_RATE_LIMIT", low=0, high=1_000_000)
    )
    decision_wait_ms: float = field(
        default=10_000.0, metadata=_declare("PULSETRACE_DECISION_WAIT_MS", low=1, high=3_600_000)
    )
    # Buffers
    max_open_traces: int = field(
        default=10_000, metadata=_declare("PULSETRACE_MAX_OPEN_TRACES", low=1, high=1_000_000)
    )
    max_spans_per_trace: int = field(
        default=1_000, metadata=_declare("PULSETRACE_MAX_SPANS_PER_TRACE", low=1, high=100_000)
    )
    export_queue_size: int = field(
        default=20_000, metadata=_declare("PULSETRACE_EXPORT_QUEUE_SIZE", low=1, high=1_000_000)
    )
    worker_interval_ms: float = field(
        default=200.0, metadata=_declare("PULSETRACE_WORKER_INTERVAL_MS", low=1, high=60_000)
    )
    intake_queue_size: int = field(
        default=4_096, metadata=_declare("PULSETRACE_INTAKE_QUEUE_SIZE", low=16, high=65_536)
    )
    intake_interval_ms: float = field(
        default=50.0, metadata=_declare("PULSETRACE_INTAKE_INTERVAL_MS", low=0.1, high=60_000)
    )
    # Histograms
    histogram_sigfig: int = field(
        default=2, metadata=_declare("PULSETRACE_HISTOGRAM_DIGITS", low=1, high=5)
    )
    max_metric_keys: int = field(
        default=1_000, metadata=_declare("PULSETRACE_MAX_METRIC_KEYS", low=1, high=100_000)
    )
    # Attribute limits
    max_attribute_length: int = field(
        default=4_096, metadata=_declare("PULSETRACE_MAX_ATTRIBUTE_LENGTH", low=16, high=1_048_576)
    )
    max_attributes: int = field(
        default=128, metadata=_declare("PULSETRACE_MAX_ATTRIBUTES", low=0, high=10_000)
    )
    max_events: int = field(
        default=128, metadata=_declare("PULSETRACE_MAX_EVENTS", low=0, high=10_000)
    )
    max_attribute_list_length: int = field(
        default=128,
        metadata=_declare("PULSETRACE_MAX_ATTRIBUTE_LIST_LENGTH", low=1, high=100_000),
    )
    redact_query_params: tuple[str, ...] = field(
        default=DEFAULT_REDACT_QUERY_PARAMS, metadata=_declare("PULSETRACE_REDACT_QUERY_PARAMS")
    )
    excluded_urls: tuple[str, ...] = field(
        default=DEFAULT_EXCLUDED_URLS,
        metadata=_declare("PULSETRACE_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"),
    )
    #: A framework's own list, in place of ``excluded_urls`` for its requests
    #: (keys: ``http_exclusion_frameworks()``, the variable's ``<NAME>``).
    framework_excluded_urls: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict,
        metadata=_declare(*(f"OTEL_PYTHON_{n}_EXCLUDED_URLS" for n in EXCLUSION_FRAMEWORKS)),
    )
    scrub_mode: str = field(default="mask", metadata=_declare("PULSETRACE_SCRUB_MODE"))
    scrub_fields: tuple[str, ...] = field(default=(), metadata=_declare("PULSETRACE_SCRUB_FIELDS"))
    redis_obfuscate_keys: bool = field(
        default=False, metadata=_declare("PULSETRACE_REDIS_OBFUSCATE_KEYS")
    )
    rabbitmq_management_url: Optional[str] = field(
        default=None, repr=False, metadata=_declare("RABBITMQ_MANAGEMENT_URL")
    )
    # Export
    export_interval_ms: float = field(
        default=1_000.0, metadata=_declare("PULSETRACE_EXPORT_INTERVAL_MS", low=10, high=3_600_000)
    )
    shutdown_timeout_ms: float = field(
        default=5_000.0, metadata=_declare("PULSETRACE_SHUTDOWN_TIMEOUT_MS", low=0, high=600_000)
    )
    export_max_request_bytes: int = field(
        default=4_128_768,
        metadata=_declare("PULSETRACE_EXPORT_MAX_REQUEST_BYTES", low=1_024, high=67_108_864),
    )
    export_max_retry_delay_ms: float = field(
        default=60_000.0,
        metadata=_declare("PULSETRACE_EXPORT_MAX_RETRY_DELAY_MS", low=0, high=3_600_000),
    )
    otlp_max_pending_spans: int = field(
        default=20_000,
        metadata=_declare("PULSETRACE_OTLP_MAX_PENDING_SPANS", low=1, high=1_000_000),
    )
    otlp_max_in_flight: int = field(
        default=2, metadata=_declare("PULSETRACE_OTLP_MAX_IN_FLIGHT", low=1, high=64)
    )
    prometheus_enabled: bool = field(default=False, metadata=_declare("PROMETHEUS_ENABLED"))
    metrics_addr: str = field(
        default="127.0.0.1:9464", metadata=_declare("PULSETRACE_METRICS_ADDR")
    )
    metrics_max_connections: int = field(
        default=256, metadata=_declare("PULSETRACE_METRICS_MAX_CONNECTIONS", low=1, high=10_000)
    )
    metrics_read_timeout_ms: float = field(
        default=5_000.0,
        metadata=_declare("PULSETRACE_METRICS_READ_TIMEOUT_MS", low=1, high=600_000),
    )
    # The monitoring server (python/pulsetrace/monitoring)
    monitoring_enabled: bool = field(default=False, metadata=_declare("MONITORING_ENABLED"))
    monitoring_token: Optional[str] = field(
        default=None, repr=False, metadata=_declare("PULSETRACE_MONITORING_TOKEN")
    )
    # The health checks the environment asks for (passwords never shown)
    database_url: Optional[str] = field(default=None, repr=False, metadata=_declare("DATABASE_URL"))
    redis_url: Optional[str] = field(default=None, repr=False, metadata=_declare("REDIS_URL"))
    # Alerting (python/pulsetrace/monitoring/alerts); secrets never shown,
    # each also read from a file named by its ``*_FILE`` variable
    alert_rules: Optional[str] = field(default=None, metadata=_declare("PULSETRACE_ALERT_RULES"))
    alert_dir: Optional[str] = field(default=None, metadata=_declare("PULSETRACE_ALERT_DIR"))
    workers_dir: Optional[str] = field(default=None, metadata=_declare("PULSETRACE_WORKERS_DIR"))
    app_id: Optional[str] = field(default=None, metadata=_declare("PULSETRACE_APP_ID"))
    alert_interval_ms: float = field(
        default=10_000.0, metadata=_declare("PULSETRACE_ALERT_INTERVAL_MS", low=100, high=3_600_000)
    )
    slack_webhook_url: Optional[str] = field(
        default=None, repr=False, metadata=_declare("SLACK_WEBHOOK_URL", "SLACK_WEBHOOK_URL_FILE")
    )
    alert_webhook_url: Optional[str] = field(
        default=None, repr=False, metadata=_declare("ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_URL_FILE")
    )
    alert_webhook_secret: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_declare("ALERT_WEBHOOK_SECRET", "ALERT_WEBHOOK_SECRET_FILE"),
    )
    smtp_host: Optional[str] = field(default=None, metadata=_declare("SMTP_HOST"))
    smtp_port: int = field(default=587, metadata=_declare("SMTP_PORT", low=1, high=65_535))
    smtp_username: Optional[str] = field(default=None, metadata=_declare("SMTP_USERNAME"))
    smtp_password: Optional[str] = field(
        default=None, repr=False, metadata=_declare("SMTP_PASSWORD", "SMTP_PASSWORD_FILE")
    )
    smtp_certificate: Optional[str] = field(
        default=None, metadata=_declare("PULSETRACE_SMTP_CERTIFICATE")
    )
    alert_from_email: Optional[str] = field(default=None, metadata=_declare("ALERT_FROM_EMAIL"))
    critical_alert_emails: tuple[str, ...] = field(
        default=(), metadata=_declare("CRITICAL_ALERT_EMAILS")
    )
    high_alert_emails: tuple[str, ...] = field(default=(), metadata=_declare("HIGH_ALERT_EMAILS"))
    business_team_emails: tuple[str, ...] = field(
        default=(), metadata=_declare("BUSINESS_TEAM_EMAILS")
    )
    security_team_emails: tuple[str, ...] = field(
        default=(), metadata=_declare("SECURITY_TEAM_EMAILS")
    )
    dba_team_emails: tuple[str, ...] = field(default=(), metadata=_declare("DBA_TEAM_EMAILS"))
    manager_emails: tuple[str, ...] = field(
        default=(), metadata=_declare("PULSETRACE_MANAGER_EMAILS")
    )
    pagerduty_routing_key: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_declare("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_ROUTING_KEY_FILE"),
    )
    pagerduty_url: str = field(
        default="https://events.pagerduty.com/v2/enqueue",
        metadata=_declare("PULSETRACE_PAGERDUTY_URL"),
    )
    sms_webhook_url: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_declare("PULSETRACE_SMS_WEBHOOK_URL", "PULSETRACE_SMS_WEBHOOK_URL_FILE"),
    )
    phone_webhook_url: Optional[str] = field(
        default=None,
        repr=False,
        metadata=_declare("PULSETRACE_PHONE_WEBHOOK_URL", "PULSETRACE_PHONE_WEBHOOK_URL_FILE"),
    )
    otlp: OtlpConfig = field(default_factory=OtlpConfig)

    def __post_init__(self) -> None:
        # The resource always names the service the way service_name does.
        resource = {**self.resource_attributes, "service.name": self.service_name}
        object.__setattr__(self, "resource_attributes", MappingProxyType(resource))
        object.__setattr__(self, "disabled_integrations", frozenset(self.disabled_integrations))
        rules = tuple((k, v) for k, v in self.keep_attributes)
        object.__setattr__(self, "keep_attributes", rules)
        object.__setattr__(self, "redact_query_params", tuple(self.redact_query_params))
        object.__setattr__(self, "scrub_fields", tuple(self.scrub_fields))
        if isinstance(self.excluded_urls, (str, bytes)):
            raise ValueError(
                "pulsetrace setting excluded_urls is a list of regular expressions, "
                f"not the text {self.excluded_urls!r:.60}"
            )
        object.__setattr__(self, "excluded_urls", tuple(self.excluded_urls))
        _check_patterns(self.excluded_urls)
        object.__setattr__(self, "framework_excluded_urls", _framework_lists(self))
        for name in _EMAIL_LISTS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _choice("log_level", self.log_level, LOG_LEVELS)
        _choice("diag_log_level", self.diag_log_level, LOG_LEVELS)
        if self.logs_fluentd_addr is not None:
            why = addr_problem(self.logs_fluentd_addr)
            if why is not None:
                addr = self.logs_fluentd_addr
                raise ValueError(f"pulsetrace setting logs_fluentd_addr={addr!r} is {why}")
        _choice("head_sampler", self.head_sampler, HEAD_SAMPLERS)
        _choice("scrub_mode", self.scrub_mode, SCRUB_MODES)
        why = addr_problem(self.metrics_addr)
        if why is not None:
            raise ValueError(f"pulsetrace setting metrics_addr={self.metrics_addr!r} is {why}")
        if not isinstance(self.otlp, OtlpConfig):
            raise ValueError("pulsetrace setting otlp is not an OtlpConfig")
        _check(self)

    def integration_enabled(self, name: str) -> bool:
        """Whether the integration ``name`` may be switched on (``logging``
        is asked for: ``PULSETRACE_LOGS_JSON`` or ``PULSETRACE_ACCESS_LOG``)."""
        if name == "logging" and not (self.logs_json or self.access_log):
            return False
        return self.enabled and name not in self.disabled_integrations

    def replace(self, **overrides: Any) -> Config:
        """A copy with some fields replaced, validated like a new Config
        (a bad value raises ValueError naming the field); unknown names
        raise TypeError."""
        unknown = set(overrides) - set(_FIELDS[Config])
        if unknown:
            raise TypeError(f"unknown pulsetrace settings: {', '.join(sorted(unknown))}")
        return _replace(self, **overrides)


#: The recipient lists of alert e-mails (by team).
_EMAIL_LISTS = (
    "critical_alert_emails",
    "high_alert_emails",
    "business_team_emails",
    "security_team_emails",
    "dba_team_emails",
    "manager_emails",
)

_FIELDS: dict[type, dict[str, Any]] = {
    cls: {f.name: f for f in fields(cls)} for cls in (Config, OtlpConfig)
}


def from_env(env: Optional[Mapping[str, str]] = None) -> Config:
    """Read the configuration from ``env`` (default: ``os.environ``). Never
    raises: each unusable value gives one warning on the ``pulsetrace``
    logger naming the variable, the value and the value used instead."""
    from pulsetrace import _env

    return _env.read(env)


_environment: Optional[Config] = None
_environment_lock = threading.Lock()


def environment() -> Config:
    """The configuration of this process's environment, read (and warned
    about) once, the first time it is asked for."""
    global _environment
    cfg = _environment
    if cfg is None:
        with _environment_lock:
            if _environment is None:
                _environment = from_env()
            cfg = _environment
    return cfg
