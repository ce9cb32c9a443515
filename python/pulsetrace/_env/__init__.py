"""Reading the environment: the one place pulsetrace parses its variables.

:func:`read` turns a mapping (``os.environ`` by default) into a
:class:`~pulsetrace.config.Config`. It never raises: a value that cannot be
used gives one warning on the ``pulsetrace`` logger naming the variable, the
value (at most 64 characters of it) and the value used instead. A number
outside its documented range is clamped to it; anything else unusable (not
a number, not one of the choices, longer than 65536 characters, not valid
UTF-8) is replaced by the default. An empty value is the same as an unset
one. The ranges and defaults are the fields' own (:mod:`pulsetrace.config`).
The OTLP exporter's variables are read by :mod:`pulsetrace._env.otlp`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Optional, TypeVar, Union
from urllib.parse import unquote

from pulsetrace.config import (
    HEAD_SAMPLERS,
    LOG_LEVELS,
    SCRUB_MODES,
    Config,
    addr_problem,
    crossed_bound,
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
_A = TypeVar("_A", str, None)


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
        used = crossed_bound(value, s)
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


def _addr(env: Mapping[str, str], var: str, default: _A) -> Union[str, _A]:
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


def _secret(env: Mapping[str, str], var: str, url: bool = False) -> Optional[str]:
    """A value that may hold a password (with ``url``: a ``scheme://...``
    URL): a warning about it never quotes it."""
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        return None
    why = None
    if len(raw) > MAX_VALUE_LENGTH:
        why = f"longer than {MAX_VALUE_LENGTH} characters"
    elif not is_text(raw):
        why = "not valid UTF-8"
    elif url and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", raw.strip()):
        why = "not a URL (scheme://...)"
    if why is not None:
        log.warning("pulsetrace: %s is %s (value not shown); unset instead", var, why)
        return None
    return raw.strip()


def _words(env: Mapping[str, str], var: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = raw_value(env, var, "using the default list")
    if raw is None:
        return default
    return tuple(w.strip().lower() for w in raw.split(",") if w.strip())


def _patterns(env: Mapping[str, str], var: str) -> Optional[tuple[str, ...]]:
    """The comma-separated regular expressions of ``var``, or None when it
    is unset. One that does not compile is left out with a warning naming
    the variable and the expression; the others apply."""
    from pulsetrace.config import pattern_problem

    raw = raw_value(env, var, "using the next variable or the default list")
    if raw is None:
        return None
    good = []
    for p in (p.strip() for p in raw.split(",")):
        why = pattern_problem(p) if p else ""
        if why is None:
            good.append(p)
        elif why:
            log.warning("pulsetrace: %s: %s; that expression left out", var, why)
    return tuple(good)


def _excluded_urls(env: Mapping[str, str]) -> dict[str, Any]:
    """The fields ``excluded_urls`` and ``framework_excluded_urls``. Which
    list a framework's requests get, first found: ``PULSETRACE_EXCLUDED_URLS``
    (pulsetrace's own, for every framework), the framework's
    ``OTEL_PYTHON_<NAME>_EXCLUDED_URLS`` (as OpenTelemetry's
    instrumentations read it), ``OTEL_PYTHON_EXCLUDED_URLS``, the default."""
    own_var, otel_var = setting(Config, "excluded_urls").env
    own = _patterns(env, own_var)
    if own is not None:
        return {"excluded_urls": own, "framework_excluded_urls": {}}
    frameworks = {}
    for var in setting(Config, "framework_excluded_urls").env:
        found = _patterns(env, var)
        if found is not None:
            name = var.removeprefix("OTEL_PYTHON_").removesuffix("_EXCLUDED_URLS").lower()
            frameworks[name] = found
    common = _patterns(env, otel_var)
    return {
        "excluded_urls": _DEFAULT.excluded_urls if common is None else common,
        "framework_excluded_urls": frameworks,
    }


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


def _diag_level(env: Mapping[str, str]) -> str:
    """``PULSETRACE_LOG_LEVEL``; while it is unset, ``LOG_LEVEL`` still sets
    pulsetrace's own diagnostics as it used to (with a deprecation warning):
    ``LOG_LEVEL`` is the application's log level now. An unusable
    ``LOG_LEVEL`` was already warned about where it is read."""
    default = _DEFAULT.diag_log_level
    if raw_value(env, "PULSETRACE_LOG_LEVEL", _using(default)) is not None:
        return choice(env, "PULSETRACE_LOG_LEVEL", default, LOG_LEVELS)
    raw = env.get("LOG_LEVEL")
    level = raw.strip().lower() if raw and len(raw) <= MAX_VALUE_LENGTH else ""
    level = "warning" if level == "warn" else level
    if level not in LOG_LEVELS:
        return default
    log.warning(
        "pulsetrace: deprecated: LOG_LEVEL is the application's log level; pulsetrace's own "
        "diagnostics follow it only until the next release: set PULSETRACE_LOG_LEVEL=%s for them",
        level,
    )
    return level


def _secret_or_file(env: Mapping[str, str], var: str, url: bool = False) -> Optional[str]:
    """A secret from ``var``, or from the file ``var``_FILE names (which
    wins; its trailing newline dropped). Its value is never logged."""
    path = raw_value(env, f"{var}_FILE", "unset instead")
    if path is None:
        return _secret(env, var, url)
    if env.get(var, "").strip():
        log.warning("pulsetrace: %s and %s_FILE are both set; using %s_FILE", var, var, var)
    try:
        with open(path.strip(), "rb") as f:
            data = f.read(MAX_VALUE_LENGTH + 1)
    except OSError as exc:
        warn(f"{var}_FILE", path, f"not readable ({exc.strerror})", "unset instead")
        return None
    return _secret({var: data.decode("utf-8", "surrogateescape").rstrip("\r\n")}, var, url)


_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+$")


def _emails(env: Mapping[str, str], var: str) -> tuple[str, ...]:
    """Comma-separated e-mail addresses; one that is not an address is
    left out with a warning."""
    raw = raw_value(env, var, "using none")
    words = [w.strip() for w in (raw or "").split(",") if w.strip()]
    bad = [w for w in words if not _EMAIL.match(w)]
    if bad and raw is not None:
        warn(var, raw, f"not e-mail addresses ({shown(bad[0])})", "those left out")
    return tuple(w for w in words if _EMAIL.match(w))


def _email(env: Mapping[str, str], var: str) -> Optional[str]:
    raw = raw_value(env, var, "unset instead")
    if raw is not None and not _EMAIL.match(raw.strip()):
        warn(var, raw, "not an e-mail address", "unset instead")
        return None
    return raw.strip() if raw else None


def _url(env: Mapping[str, str], var: str, default: str) -> str:
    raw = raw_value(env, var, _using(default))
    if raw is not None and not re.match(r"https?://[^/\s]+", raw.strip()):
        _warn(var, raw, "not an http(s):// URL", default)
        return default
    return raw.strip() if raw else default


def _path(env: Mapping[str, str], var: str, directory: bool) -> Optional[str]:
    """An absolute path (of a readable file, or a directory to create)."""
    raw = raw_value(env, var, "unset instead")
    if raw is None:
        return None
    path = raw.strip()
    if directory and not os.path.isabs(path):
        warn(var, raw, "not an absolute path", "unset instead")
        return None
    if not directory and not os.path.isfile(path):
        warn(var, raw, "not a file", "unset instead")
        return None
    return path


def _certificate(env: Mapping[str, str], var: str) -> Optional[str]:
    """A CA file (PEM), judged as ``OTEL_EXPORTER_OTLP_CERTIFICATE`` is."""
    from pulsetrace._env.otlp import _parse_certificate

    raw = raw_value(env, var, "using the system's trusted CA certificates")
    if raw is None:
        return None
    path, why = _parse_certificate(raw, False)
    if why is not None:
        warn(var, raw, why, "using the system's trusted CA certificates")
    return path


def _alerting(e: Mapping[str, str]) -> dict[str, Any]:
    """The alerting settings (``pulsetrace.monitoring.alerts``)."""
    d = _DEFAULT
    return {
        "alert_rules": _path(e, "PULSETRACE_ALERT_RULES", directory=False),
        "alert_dir": _path(e, "PULSETRACE_ALERT_DIR", directory=True),
        "workers_dir": _path(e, "PULSETRACE_WORKERS_DIR", directory=True),
        "app_id": _text(e, "PULSETRACE_APP_ID", "") or None,
        "slack_webhook_url": _secret_or_file(e, "SLACK_WEBHOOK_URL", url=True),
        "alert_webhook_url": _secret_or_file(e, "ALERT_WEBHOOK_URL", url=True),
        "alert_webhook_secret": _secret_or_file(e, "ALERT_WEBHOOK_SECRET"),
        "smtp_host": _text(e, "SMTP_HOST", "") or None,
        "smtp_username": _text(e, "SMTP_USERNAME", "") or None,
        "smtp_password": _secret_or_file(e, "SMTP_PASSWORD"),
        "smtp_certificate": _certificate(e, "PULSETRACE_SMTP_CERTIFICATE"),
        "alert_from_email": _email(e, "ALERT_FROM_EMAIL"),
        "critical_alert_emails": _emails(e, "CRITICAL_ALERT_EMAILS"),
        "high_alert_emails": _emails(e, "HIGH_ALERT_EMAILS"),
        "business_team_emails": _emails(e, "BUSINESS_TEAM_EMAILS"),
        "security_team_emails": _emails(e, "SECURITY_TEAM_EMAILS"),
        "dba_team_emails": _emails(e, "DBA_TEAM_EMAILS"),
        "manager_emails": _emails(e, "PULSETRACE_MANAGER_EMAILS"),
        "pagerduty_routing_key": _secret_or_file(e, "PAGERDUTY_ROUTING_KEY"),
        "pagerduty_url": _url(e, "PULSETRACE_PAGERDUTY_URL", d.pagerduty_url),
        "sms_webhook_url": _secret_or_file(e, "PULSETRACE_SMS_WEBHOOK_URL", url=True),
        "phone_webhook_url": _secret_or_file(e, "PULSETRACE_PHONE_WEBHOOK_URL", url=True),
    }


def _text(env: Mapping[str, str], var: str, default: str) -> str:
    raw = raw_value(env, var, _using(default))
    return default if raw is None else raw.strip()


def read(env: Optional[Mapping[str, str]] = None) -> Config:
    """The configuration in ``env`` (default: ``os.environ``)."""
    from pulsetrace._env import otlp as _otlp

    e = os.environ if env is None else env
    d = _DEFAULT
    resource = _resource(e)
    service = (raw_value(e, "OTEL_SERVICE_NAME", _using(d.service_name)) or "").strip()
    service = service or resource.get("service.name", d.service_name)
    # Every number is read the same way, from its field's declaration.
    numbers = {
        f.name: number(e, f.name)
        for f in fields(Config)
        if "setting" in f.metadata and f.metadata["setting"].high is not None
    }
    return Config(
        enabled=boolean(e, "APM_ENABLED", True) and not boolean(e, "OTEL_SDK_DISABLED", False),
        service_name=service,
        resource_attributes=resource,
        disabled_integrations=_disabled(e),
        log_level=choice(e, "LOG_LEVEL", d.log_level, LOG_LEVELS),
        diag_log_level=_diag_level(e),
        logs_json=boolean(e, "PULSETRACE_LOGS_JSON", d.logs_json),
        access_log=boolean(e, "PULSETRACE_ACCESS_LOG", d.access_log),
        logs_fluentd_addr=_addr(e, "PULSETRACE_LOGS_FLUENTD_ADDR", None),
        logs_fluentd_tag=_text(e, "PULSETRACE_LOGS_FLUENTD_TAG", d.logs_fluentd_tag),
        head_sampler=choice(e, "OTEL_TRACES_SAMPLER", d.head_sampler, HEAD_SAMPLERS),
        keep_errors=boolean(e, "PULSETRACE_KEEP_ERRORS", d.keep_errors),
        keep_attributes=_rules(e, "PULSETRACE_KEEP_ATTRIBUTES"),
        redact_query_params=_words(e, "PULSETRACE_REDACT_QUERY_PARAMS", d.redact_query_params),
        **_excluded_urls(e),
        scrub_mode=choice(e, "PULSETRACE_SCRUB_MODE", d.scrub_mode, SCRUB_MODES),
        scrub_fields=_words(e, "PULSETRACE_SCRUB_FIELDS", d.scrub_fields),
        redis_obfuscate_keys=boolean(e, "PULSETRACE_REDIS_OBFUSCATE_KEYS", d.redis_obfuscate_keys),
        prometheus_enabled=boolean(e, "PROMETHEUS_ENABLED", d.prometheus_enabled),
        metrics_addr=_addr(e, "PULSETRACE_METRICS_ADDR", d.metrics_addr),
        monitoring_enabled=boolean(e, "MONITORING_ENABLED", d.monitoring_enabled),
        monitoring_token=_secret(e, "PULSETRACE_MONITORING_TOKEN"),
        database_url=_secret(e, "DATABASE_URL", url=True),
        redis_url=_secret(e, "REDIS_URL", url=True),
        rabbitmq_management_url=_secret(e, "RABBITMQ_MANAGEMENT_URL", url=True),
        **_alerting(e),
        otlp=_otlp.otlp(e),
        **numbers,
    )
