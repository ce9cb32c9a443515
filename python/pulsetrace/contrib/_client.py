"""What outbound HTTP hooks share: the CLIENT span of one request, its
semantic-convention attributes (credentials and sensitive query values
removed), W3C trace-context injection, and the flag that keeps clients
built on one another (requests over urllib3) from tracing a request twice.

A hook asks :func:`start` for a :class:`Call`; None means "pass the request
through untouched" (tracing off, another outbound span already running, or
an internal error). Every step of a Call catches its own failures: pulsetrace
never changes what the application sees.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import wrapt

from pulsetrace import _diag, _runtime
from pulsetrace._suppress import is_suppressed
from pulsetrace.contrib import _http

#: True while an outbound HTTP span is current: a client called by another
#: instrumented client (urllib3 under requests, a redirect hop inside
#: ``Session.send``) passes the request through instead of starting a second span.
ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pulsetrace_outbound_http", default=False
)
#: ``ACTIVE.get``, bound once (see :data:`pulsetrace._suppress.is_suppressed`).
is_active = ACTIVE.get

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
USERINFO = f"{_http.REDACTED}:{_http.REDACTED}@"


def url_parts(url: Any) -> tuple[str, Optional[str], Optional[int]]:
    """(``url.full``, ``server.address``, ``server.port``) of ``url``, with the
    userinfo replaced by ``REDACTED:REDACTED`` and sensitive query values redacted."""
    raw = str(url)
    parts = urlsplit(raw)
    netloc = parts.netloc
    query = _http.redact_query(parts.query)
    full = raw
    if "@" in netloc or query != parts.query:
        if "@" in netloc:
            netloc = USERINFO + netloc.rpartition("@")[2]
        full = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # not a number: no port attribute
        port = None
    return full, parts.hostname, port


_cache: dict[tuple[Any, str], dict[str, Any]] = {}
_MAX_CACHED = 1024


def attributes(raw_method: Any, url: Any) -> dict[str, Any]:
    """The attributes a CLIENT span starts with. Cached per (method, URL):
    calls to the same endpoint parse and redact its URL once. The dict
    returned is shared; callers must not change it."""
    key = (raw_method, url if isinstance(url, str) else str(url))
    hit = _cache.get(key)
    if hit is not None:
        return hit
    attrs = _attributes(raw_method, key[1])
    if len(_cache) >= _MAX_CACHED:
        _cache.clear()
    _cache[key] = attrs
    return attrs


def _attributes(raw_method: Any, url: str) -> dict[str, Any]:
    method = _http.method_of(raw_method)
    full, host, port = url_parts(url)
    attrs: dict[str, Any] = {"http.request.method": method, "url.full": full}
    if method == "_OTHER":
        attrs["http.request.method_original"] = str(raw_method)
    if host:
        attrs["server.address"] = host
    if port:
        attrs["server.port"] = port
    return attrs


def has_header(headers: Any, name: str) -> bool:
    """Whether ``headers`` (any mapping, str or bytes keys) holds ``name``, any case."""
    raw = name.encode()
    for key in headers:
        if isinstance(key, str) and key.lower() == name:
            return True
        if isinstance(key, bytes) and key.lower() == raw:
            return True
    return False


def inject(headers: Any, span: Any) -> list[tuple[str, str]]:
    """Write the span's ``traceparent`` (and ``tracestate``) into ``headers``
    unless the caller set a ``traceparent`` already; returns what was added."""
    if has_header(headers, "traceparent"):
        return []
    added = [("traceparent", span.traceparent)]
    state = span.trace_state
    if state and not has_header(headers, "tracestate"):
        added.append(("tracestate", state))
    for name, value in added:
        headers[name] = value
    return added


def error_type(exc: BaseException) -> str:
    """The exception's class as ``exception.type`` names it (``module.Name``)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def on_response(span: Any, status: Optional[int], version: Optional[str]) -> None:
    """Record the response: for a CLIENT span 4xx and 5xx are errors."""
    if version:
        span.set_attribute("network.protocol.version", version)
    if status is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status("error", f"HTTP {status}")


def on_exception(span: Any, exc: BaseException) -> None:
    span.record_exception(exc, escaped=True)
    span.set_attribute("error.type", error_type(exc))
    span.set_status("error", f"{type(exc).__qualname__}: {exc}")


class Call:
    """One traced outbound request. Its span is the current span (and
    :data:`ACTIVE` is set) from :func:`start` until :meth:`end`."""

    __slots__ = ("_active", "_added", "_current", "_headers", "span", "where")

    def __init__(self, where: str, span: Any) -> None:
        self.where, self.span = where, span
        self._headers: Any = None
        self._added: list[tuple[str, str]] = []
        self._current = _runtime.CURRENT.set(span)
        self._active = ACTIVE.set(True)

    def inject(self, headers: Any, restore: bool = False) -> None:
        """Inject into ``headers``; with ``restore`` (a header object the caller
        owns), :meth:`end` takes the added headers out again, so a request sent
        twice is not mistaken for one whose caller set ``traceparent``."""
        try:
            added = inject(headers, self.span)
            if restore:
                self._headers, self._added = headers, added
        except Exception as exc:
            _diag.internal_error(f"{self.where}.inject", exc)

    def done(self, response: Any, describe: Callable[[Any], tuple[Any, Any]]) -> None:
        """The response arrived: ``describe(response)`` → (status, protocol version)."""
        try:
            status, version = describe(response)
            on_response(self.span, status, version)
        except Exception as exc:
            _diag.internal_error(f"{self.where}.response", exc)
        self.end()

    def fail(self, exc: BaseException, status: Optional[int] = None) -> None:
        """The request raised ``exc`` (with a response ``status``, if it had one)."""
        try:
            if status is None:
                on_exception(self.span, exc)
            else:  # an error response raised as an exception: error.type is the status
                on_response(self.span, status, None)
                self.span.record_exception(exc, escaped=True)
        except Exception as inner:
            _diag.internal_error(f"{self.where}.exception", inner)
        self.end()

    def end(self) -> None:
        for var, token in ((ACTIVE, self._active), (_runtime.CURRENT, self._current)):
            with contextlib.suppress(ValueError):  # reset from another context
                var.reset(token)
        try:
            for name, value in self._added:
                if self._headers.get(name) == value:
                    del self._headers[name]
            self.span.end()
        except Exception as exc:
            _diag.internal_error(f"{self.where}.end", exc)


def start(where: str, describe: Callable[[], tuple[Any, Any]]) -> Optional[Call]:
    """Start the CLIENT span of one request, ``describe()`` → (method, url).
    None: pass the request through (tracing off, already inside an outbound
    span, pulsetrace's own work, or an internal error)."""
    if is_active() or is_suppressed():
        return None
    try:
        tracer = _runtime.tracer()
        if not tracer.enabled:
            return None
        method, url = describe()
        attrs = attributes(method, url)
        name = _http.span_name(attrs["http.request.method"], None)
        span = tracer.start_span(name, kind="client", attributes=attrs)
        if span.trace_id == 0:  # tracing is off: the shared no-op span
            return None
        return Call(where, span)
    except Exception as exc:
        _diag.internal_error(f"{where}.start", exc)
        return None


def protocol(raw: Any) -> Optional[str]:
    """``network.protocol.version`` from 11, ``"HTTP/1.1"`` or ``b"HTTP/2"``."""
    if isinstance(raw, int):
        return {9: "0.9", 10: "1.0", 11: "1.1", 20: "2"}.get(raw)
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str):
        return raw.rpartition("/")[2] or None
    return None


wrap = wrapt.wrap_function_wrapper


def unwrap(owner: Any, name: str) -> None:
    attr = owner.__dict__.get(name)
    if attr is not None and hasattr(attr, "__wrapped__"):
        setattr(owner, name, attr.__wrapped__)
