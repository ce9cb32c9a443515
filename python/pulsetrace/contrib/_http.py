"""What inbound HTTP hooks share: span names, semantic-convention
attributes, query redaction, and status handling."""

from __future__ import annotations

from typing import Any, Optional

from pulsetrace import _runtime
from pulsetrace._native import redact_query as _redact_query

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)

REDACTED = "REDACTED"


def method_of(raw: Any) -> str:
    """The request method, or ``_OTHER`` for methods outside the known set
    (bounded cardinality, as the semantic conventions ask)."""
    m = raw.upper() if isinstance(raw, str) else "_OTHER"
    return m if m in KNOWN_METHODS else "_OTHER"


def span_name(method: str, route: Optional[str]) -> str:
    """``GET /users/{id}`` with a route template, ``GET`` without one."""
    if method == "_OTHER":
        method = "HTTP"
    return f"{method} {route}" if route else method


def redact_query(query: str) -> str:
    """The query string with the values of sensitive parameters replaced by
    ``REDACTED`` (native; other parameters are kept byte for byte). The
    sensitive words are the configuration's ``redact_query_params``
    (``PULSETRACE_REDACT_QUERY_PARAMS``), handed to the native side with
    the rest of the configuration."""
    if not query:
        return query
    if _runtime._tracer is None:
        _runtime.tracer()  # the agent starts on first use: the words come with it
    return _redact_query(query)


def set_status(span: Any, code: int) -> None:
    """Record the response status: 5xx marks the span as an error, 4xx does not."""
    span.set_attribute("http.response.status_code", code)
    if code >= 500:
        span.set_status("error", f"HTTP {code}")


def server_attributes(
    method: str,
    raw_method: str,
    path: str,
    query: str,
    scheme: str,
    host: Optional[str],
    port: Optional[int],
    client: Optional[str],
    user_agent: Optional[str],
    protocol: Optional[str],
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
    }
    if method == "_OTHER":
        attrs["http.request.method_original"] = raw_method
    if query:
        attrs["url.query"] = redact_query(query)
    if host:
        attrs["server.address"] = host
    if port:
        attrs["server.port"] = port
    if client:
        attrs["client.address"] = client
    if user_agent:
        attrs["user_agent.original"] = user_agent
    if protocol:
        attrs["network.protocol.version"] = protocol
    return attrs


def split_host(
    host_header: Optional[str], default_port: Optional[int]
) -> tuple[Optional[str], Optional[int]]:
    """``example.com:8080`` → (``example.com``, 8080); IPv6 literals kept whole."""
    if not host_header:
        return None, default_port
    if host_header.startswith("["):
        end = host_header.find("]")
        host, rest = host_header[: end + 1], host_header[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = host_header.partition(":")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        return host, default_port
