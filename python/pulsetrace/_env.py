"""Reading the environment: the one place pulsetrace parses its variables.

:func:`read` turns a mapping (``os.environ`` by default) into a
:class:`~pulsetrace.config.Config`. It never raises: a value that cannot be
used gives one warning on the ``pulsetrace`` logger naming the variable, the
value (at most 64 characters of it) and the value used instead. A number
outside its documented range is clamped to it; anything else unusable (not
a number, not one of the choices, longer than 65536 characters, not valid
UTF-8) is replaced by the default. An empty value is the same as an unset
one. The ranges and defaults are the fields' own (:mod:`pulsetrace.config`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from pulsetrace.config import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    EXPORTERS,
    GRPC,
    HEAD_SAMPLERS,
    HTTP_PROTOBUF,
    LOG_LEVELS,
    Config,
    OtlpConfig,
    addr_problem,
    is_text,
    number_repr,
    range_problem,
    setting,
)

log = logging.getLogger("pulsetrace")

#: Longer values are not used (a setting is never this long; a runaway
#: value must not be copied around or logged).
MAX_VALUE_LENGTH = 65_536
#: How much of a bad value a warning shows (of a file's path: more).
SHOWN = 64
PATH_SHOWN = 200

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DEFAULT = Config()
_OTLP_DEFAULT = OtlpConfig()


def shown(raw: str, limit: int = SHOWN) -> str:
    """``raw`` as a warning quotes it: ASCII, at most ``limit`` characters
    (a value that is not UTF-8 as the bytes it holds)."""
    value: object = raw[:limit]
    if not is_text(raw):
        value = raw[:limit].encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return ascii(value)
    return f"{value!a}... ({len(raw)} characters)"


def _used(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, (int, float)):
        return ascii(value)
    return number_repr(value)


def warn(var: str, raw: str, why: str, instead: str) -> None:
    limit = PATH_SHOWN if var.endswith("_CERTIFICATE") else SHOWN
    log.warning("pulsetrace: %s=%s is %s; %s instead", var, shown(raw, limit), why, instead)


def _warn(var: str, raw: str, why: str, used: Any) -> None:
    warn(var, raw, why, _using(used))


def _using(value: Any) -> str:
    return f"using {_used(value)}"


def raw_value(env: Mapping[str, str], var: str, instead: str) -> Optional[str]:
    """The variable's usable text, or None when it is unset, empty, too long
    or not valid UTF-8 (the last two with a warning ending in ``instead``,
    e.g. ``using 10``)."""
    raw = env.get(var)
    if raw is None or raw == "" or raw.isspace():
        return None
    if len(raw) > MAX_VALUE_LENGTH:
        warn(var, raw, f"longer than {MAX_VALUE_LENGTH} characters", instead)
        return None
    if not is_text(raw):
        warn(var, raw, "not valid UTF-8", instead)
        return None
    return raw


# -- values of Config fields ---------------------------------------------------


def number(env: Mapping[str, str], name: str) -> Any:
    """Config field ``name``'s number from its variable: clamped into the
    field's range, or the default when it is not a number."""
    s = setting(Config, name)
    var = s.env[0]
    default = getattr(_DEFAULT, name)
    integer = isinstance(default, int)
    raw = raw_value(env, var, _using(default))
    if raw is None:
        return default
    text = raw.strip()
    value: float
    if len(text) > 64 and text.lstrip("+-").isdigit():
        value = -math.inf if text.startswith("-") else math.inf  # beyond int()'s digit limit
    else:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            _warn(var, raw, "not an integer" if integer else "not a number", default)
            return default
    if value != value:
        _warn(var, raw, "not a number", default)
        return default
    why = range_problem(value, s)
    if why is not None:
        used = s.low if value < s.low else s.high
        used = int(used) if integer else float(used)
        _warn(var, raw, why, used)
        return used
    return value


def boolean(env: Mapping[str, str], var: str, default: bool) -> bool:
    raw = raw_value(env, var, _using(default))
    if raw is None:
        return default
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    _warn(var, raw, "not a boolean (true/false)", default)
    return default


def choice(env: Mapping[str, str], var: str, default: str, choices: tuple[str, ...]) -> str:
    raw = raw_value(env, var, _using(default))
    if raw is None:
        return default
    v = raw.strip().lower()
    if v == "warn":
        v = "warning"
    if v not in choices:
        _warn(var, raw, f"not one of {', '.join(choices)}", default)
        return default
    return v


def _addr(env: Mapping[str, str], var: str, default: str) -> str:
    raw = raw_value(env, var, _using(default))
    if raw is None:
        return default
    why = addr_problem(raw.strip())
    if why is not None:
        _warn(var, raw, why, default)
        return default
    return raw.strip()


def _rules(env: Mapping[str, str], var: str) -> tuple[tuple[str, Optional[str]], ...]:
    raw = raw_value(env, var, "using no rules")
    rules: list[tuple[str, Optional[str]]] = []
    bad: list[str] = []
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not key.strip():
            bad.append(shown(part))
            continue
        rules.append((key.strip(), value.strip() if sep else None))
    if bad and raw is not None:
        why = f"malformed (rules with no attribute name: {', '.join(bad[:3])})"
        warn(var, raw, why, "those rules skipped")
    return tuple(rules)


def _words(env: Mapping[str, str], var: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = raw_value(env, var, "using the default list")
    if raw is None:
        return default
    return tuple(w.strip().lower() for w in raw.split(",") if w.strip())


def _resource(env: Mapping[str, str]) -> dict[str, str]:
    var = "OTEL_RESOURCE_ATTRIBUTES"
    raw = raw_value(env, var, "using no resource attributes")
    out: dict[str, str] = {}
    bad: list[str] = []
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            bad.append(shown(part))
            continue
        out[unquote(key.strip())] = unquote(value.strip())
    if bad and raw is not None:
        warn(var, raw, f"malformed at {', '.join(bad[:3])}", "those entries skipped")
    return out


def _disabled(env: Mapping[str, str]) -> frozenset[str]:
    var = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
    raw = raw_value(env, var, "disabling none")
    names = {n.strip().lower() for n in (raw or "").split(",") if n.strip()}
    for var in env:
        if var.startswith("PULSETRACE_") and var.endswith("_ENABLED") and is_text(var):
            name = var[len("PULSETRACE_") : -len("_ENABLED")].lower()
            if name and not boolean(env, var, True):
                names.add(name)
    return frozenset(names)


def read(env: Optional[Mapping[str, str]] = None) -> Config:
    """The configuration in ``env`` (default: ``os.environ``)."""
    e = os.environ if env is None else env
    d = _DEFAULT
    resource = _resource(e)
    service = (raw_value(e, "OTEL_SERVICE_NAME", _using(d.service_name)) or "").strip()
    service = service or resource.get("service.name", d.service_name)
    numbers = {
        f: number(e, f)
        for f in (
            "head_sampler_ratio",
            "sample_rate",
            "slow_threshold_ms",
            "adaptive_percentile",
            "adaptive_min_count",
            "rate_limit",
            "decision_wait_ms",
            "max_open_traces",
            "max_spans_per_trace",
            "export_queue_size",
            "worker_interval_ms",
            "intake_queue_size",
            "intake_interval_ms",
            "histogram_sigfig",
            "max_metric_keys",
            "max_attribute_length",
            "max_attributes",
            "max_events",
            "export_interval_ms",
        )
    }
    return Config(
        enabled=boolean(e, "APM_ENABLED", True) and not boolean(e, "OTEL_SDK_DISABLED", False),
        service_name=service,
        resource_attributes=resource,
        disabled_integrations=_disabled(e),
        log_level=choice(e, "LOG_LEVEL", d.log_level, LOG_LEVELS),
        head_sampler=choice(e, "OTEL_TRACES_SAMPLER", d.head_sampler, HEAD_SAMPLERS),
        keep_errors=boolean(e, "PULSETRACE_KEEP_ERRORS", d.keep_errors),
        keep_attributes=_rules(e, "PULSETRACE_KEEP_ATTRIBUTES"),
        redact_query_params=_words(e, "PULSETRACE_REDACT_QUERY_PARAMS", d.redact_query_params),
        prometheus_enabled=boolean(e, "PROMETHEUS_ENABLED", d.prometheus_enabled),
        metrics_addr=_addr(e, "PULSETRACE_METRICS_ADDR", d.metrics_addr),
        otlp=otlp(e),
        **numbers,
    )


# -- the OTLP exporter's variables ---------------------------------------------
#
# A per-signal OTEL_EXPORTER_OTLP_TRACES_* variable wins over the generic
# one; when it is malformed, the generic one (or the default) is used.

# Header names: lowercase, as gRPC metadata keys must be (HTTP does not care).
_HEADER_NAME = re.compile(r"^[0-9a-z_.-]+$")
# Header values: printable ASCII (and tab), so no header can be injected.
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
_HOST_PORT = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")

Parse = Callable[[str, bool], "tuple[Any, Optional[str]]"]


def _otlp_warn(var: str, raw: str, why: str, instead: str, *, secret: bool = False) -> None:
    if secret:
        log.warning(
            "pulsetrace: %s (value not shown: it may hold credentials) is %s; %s instead",
            var,
            why,
            instead,
        )
    else:
        warn(var, raw, why, instead)


def _resolve(
    env: Mapping[str, str],
    name: str,
    parse: Parse,
    default: Any,
    describe: Callable[[Any], str],
    *,
    secret: bool = False,
    text_only: bool = True,
) -> Any:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``,
    else ``default``.

    ``parse(raw, is_traces)`` returns ``(value, None)`` for a good value,
    ``(None, why)`` for an unusable one (the next source is used) and
    ``(substitute, why)`` for one that is used in a corrected form. Each
    malformed variable gives one warning saying what is used instead.
    """
    parsed = []
    for var, is_traces in (
        (f"OTEL_EXPORTER_OTLP_TRACES_{name}", True),
        (f"OTEL_EXPORTER_OTLP_{name}", False),
    ):
        raw = env.get(var)
        if raw is None or raw == "" or raw.isspace():
            continue
        if len(raw) > MAX_VALUE_LENGTH:
            value, why = None, f"longer than {MAX_VALUE_LENGTH} characters"
        elif text_only and not is_text(raw):
            value, why = None, "not valid UTF-8"
        else:
            try:
                value, why = parse(raw, is_traces)
            except Exception as exc:  # a parser's oversight must not stop the agent
                value, why = None, f"unusable ({type(exc).__name__})"
        parsed.append((var, raw, value, why))
    chosen = next(((var, value) for var, _, value, _ in parsed if value is not None), None)
    effective = default if chosen is None else chosen[1]
    for var, raw, _, why in parsed:
        if why is None:
            continue
        instead = describe(effective)
        if chosen is not None and chosen[0] != var:
            instead += f" (from {chosen[0]})"
        _otlp_warn(var, raw, why, instead, secret=secret)
    return effective


def _parse_protocol(raw: str, _traces: bool) -> tuple[Optional[str], Optional[str]]:
    v = raw.strip().lower()
    if v in (GRPC, HTTP_PROTOBUF):
        return v, None
    if v == "http/json":
        return HTTP_PROTOBUF, "not supported (pulsetrace sends protobuf)"
    return None, "not one of grpc, http/protobuf, http/json"


def _parse_timeout(raw: str, _traces: bool) -> tuple[Optional[float], Optional[str]]:
    s = setting(OtlpConfig, "timeout_ms")
    try:
        ms = float(raw.strip())
    except ValueError:
        return None, "not a number of milliseconds"
    if ms != ms:
        return None, "not a number of milliseconds"
    why = range_problem(ms, s)
    if why is not None:
        return float(s.low if ms < s.low else s.high), why
    return ms, None


def _describe_timeout(ms: float) -> str:
    return f"using {number_repr(ms)} ms"


def _parse_compression(raw: str, _traces: bool) -> tuple[Optional[str], Optional[str]]:
    v = raw.strip().lower()
    if v in ("gzip", "none"):
        return v, None
    return None, "not one of gzip, none"


def _parse_insecure(raw: str, _traces: bool) -> tuple[Optional[bool], Optional[str]]:
    v = raw.strip().lower()
    if v in ("true", "false"):
        return v == "true", None
    return None, "not true or false"


def _parse_certificate(raw: str, _traces: bool) -> tuple[Optional[str], Optional[str]]:
    path = raw.strip()
    try:
        with open(path, "rb") as f:
            pem = f.read(4 * 1024 * 1024)
    except (OSError, ValueError) as exc:
        return None, f"not a readable file ({getattr(exc, 'strerror', None) or exc})"
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return None, "a file with no PEM certificate in it"
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return None, f"a file whose certificates cannot be loaded ({exc})"
    if not is_text(path):
        # A path that is not UTF-8 works here, but not in every transport.
        return None, "a path that is not valid UTF-8"
    return path, None


def _describe_certificate(path: Optional[str]) -> str:
    if path is None:
        return "using the system's trusted CA certificates"
    return f"using the CA file {shown(path, PATH_SHOWN)}"


def _parse_headers(raw: str, _traces: bool) -> tuple[Optional[dict[str, str]], Optional[str]]:
    """W3C-baggage-like ``k=v,k2=v2``, percent-decoded; names lowercased.
    Bad entries are skipped (the others are used); if none is good, the
    variable is not used. The ``why`` never quotes a value: values are often
    credentials."""
    headers: dict[str, str] = {}
    bad: list[str] = []
    for entry in raw.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        if not sep:
            s = entry.strip()
            s = s if len(s) <= 4 else f"{s[:3]}… ({len(s)} characters)"
            bad.append(f"entry {s!r} has no '='")
            continue
        name = unquote(key.strip()).lower()
        if not _HEADER_NAME.match(name):
            bad.append(f"header name {shown(key.strip())} is not letters, digits, '-', '_', '.'")
            continue
        decoded = unquote(value.strip())
        if not _HEADER_VALUE.match(decoded):
            bad.append(f"the value of {name!r} has a control or non-ASCII character")
            continue
        headers[name] = decoded
    if not bad:
        return headers, None
    why = "malformed: " + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
    return (headers or None), why


def _describe_headers(headers: Mapping[str, str]) -> str:
    if not headers:
        return "using no headers"
    return "using the headers " + ", ".join(headers)


def _check_url(s: str) -> Optional[str]:
    """Why ``s`` is not an http(s) URL with a host, or None."""
    if any(c.isspace() for c in s):
        return "not a URL (it has white space)"
    try:
        u = urlsplit(s)
        u.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        return f"not a URL ({exc})"
    if u.scheme.lower() not in ("http", "https"):
        return "not a URL with the scheme http:// or https://"
    if not u.hostname:
        return "not a URL with a host"
    return None


def _append_traces_path(url: str) -> str:
    u = urlsplit(url)
    path = u.path if u.path.endswith("/") else u.path + "/"
    return u._replace(path=path + "v1/traces").geturl()


def _endpoint(env: Mapping[str, str], protocol: str) -> str:
    """For http/protobuf the generic endpoint gets ``/v1/traces`` appended
    and the traces one is used as it is (the spec). For grpc a ``host:port``
    without a scheme is allowed (the spec: OTEL_EXPORTER_OTLP_INSECURE then
    decides on TLS); for http/protobuf it is taken as ``http://host:port``."""
    grpc = protocol == GRPC

    def parse(raw: str, traces: bool) -> tuple[Optional[str], Optional[str]]:
        s = raw.strip()
        if _HOST_PORT.match(s):
            if grpc:
                return s, None
            url = "http://" + s
            return (url if traces else _append_traces_path(url)), "not a URL (no http://)"
        why = _check_url(s)
        if why is not None:
            return None, why
        return (s if traces or grpc else _append_traces_path(s)), None

    default = DEFAULT_GRPC_ENDPOINT if grpc else DEFAULT_HTTP_ENDPOINT
    endpoint: str = _resolve(env, "ENDPOINT", parse, default, _using)
    return endpoint


def _insecure(env: Mapping[str, str], protocol: str, endpoint: str) -> bool:
    """Plaintext (True) or TLS. https:// is always TLS and http/protobuf
    follows the scheme; for grpc otherwise OTEL_EXPORTER_OTLP_INSECURE
    decides, and when it is not set the scheme does (http:// plaintext, no
    scheme: TLS)."""
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""

    def describe(value: Optional[bool]) -> str:
        if value is None:
            return "using the endpoint's scheme (" + ("plaintext)" if scheme == "http" else "TLS)")
        return _using(value)

    explicit: Optional[bool] = _resolve(env, "INSECURE", _parse_insecure, None, describe)
    if scheme == "https":
        return False
    if protocol != GRPC:
        return scheme == "http"
    if explicit is not None:
        return explicit
    return scheme == "http"


def _exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    var = "OTEL_TRACES_EXPORTER"
    raw = raw_value(env, var, _using("otlp"))
    if raw is None:
        return ("otlp",)
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    known = tuple(dict.fromkeys(n for n in names if n in EXPORTERS))
    unknown = [n for n in names if n not in EXPORTERS]
    if not known:
        warn(var, raw, "not one of otlp, console, none", _using("otlp"))
        return ("otlp",)
    chosen = known
    why = []
    if unknown:
        why.append(f"naming exporters pulsetrace does not have ({shown(', '.join(unknown))})")
    if "none" in chosen and len(chosen) > 1:
        chosen = tuple(n for n in chosen if n != "none")
        why.append("'none' together with other exporters")
    if why:
        instead = "exporting off" if chosen == ("none",) else _using(",".join(chosen))
        warn(var, raw, " and ".join(why), instead)
    return chosen


def otlp(env: Optional[Mapping[str, str]] = None) -> OtlpConfig:
    """The OTLP exporter's settings in ``env`` (default ``os.environ``)."""
    e = os.environ if env is None else env
    d = _OTLP_DEFAULT
    protocol: str = _resolve(e, "PROTOCOL", _parse_protocol, d.protocol, _using)
    endpoint = _endpoint(e, protocol)
    return OtlpConfig(
        exporters=_exporters(e),
        protocol=protocol,
        endpoint=endpoint,
        headers=_resolve(e, "HEADERS", _parse_headers, {}, _describe_headers, secret=True),
        timeout_ms=_resolve(e, "TIMEOUT", _parse_timeout, d.timeout_ms, _describe_timeout),
        compression=_resolve(e, "COMPRESSION", _parse_compression, d.compression, _using),
        insecure=_insecure(e, protocol, endpoint),
        certificate=_resolve(
            e,
            "CERTIFICATE",
            _parse_certificate,
            None,
            _describe_certificate,
            text_only=False,
        ),
    )
