"""Reading the OTLP exporter's variables (``OTEL_EXPORTER_OTLP_*``,
``OTEL_TRACES_EXPORTER``) into an :class:`~pulsetrace.config.OtlpConfig`, by
the rules of :mod:`pulsetrace._env`.

A per-signal ``OTEL_EXPORTER_OTLP_TRACES_*`` variable wins over the generic
one; when it is malformed, the generic one (or the default) is used.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from pulsetrace._env import MAX_VALUE_LENGTH, PATH_SHOWN, _using, raw_value, shown, warn
from pulsetrace.config import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    EXPORTERS,
    GRPC,
    HTTP_PROTOBUF,
    OtlpConfig,
    crossed_bound,
    is_text,
    number_repr,
    range_problem,
    setting,
)

log = logging.getLogger("pulsetrace")
_DEFAULT = OtlpConfig()

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
        value: Any
        why: Optional[str]
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
        return float(crossed_bound(ms, s)), why
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
    d = _DEFAULT
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
