"""What an OTLP collector's answer says: the few lines of protobuf wire
format the answers need (partial success, google.rpc.Status, RetryInfo),
HTTP ``Retry-After``, and which failures are worth retrying. No I/O here:
the transports (``pulsetrace.export.otlp``) send and hand the answer over."""

from __future__ import annotations

import email.utils
import http.client
import time
from dataclasses import dataclass
from typing import Any, Optional

_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_RETRYABLE_GRPC = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "DATA_LOSS", "CANCELLED"}
)
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass
class Attempt:
    ok: bool
    error: Optional[str] = None
    kind: str = ""
    retryable: bool = False
    retry_after: Optional[float] = None
    rejected_spans: int = 0
    partial_error: str = ""


def unreachable(attempt: Attempt) -> bool:
    """No collector answered: a refused or failed connection (a timeout is
    a slow collector, not a missing one)."""
    if attempt.kind == "grpc UNAVAILABLE":
        return True
    return attempt.kind.startswith("connection ") and "timed out" not in (attempt.error or "")


# -- protobuf wire format (just what the answers need) -------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs of a message: ints for varints, bytes for
    the rest. Raises ValueError on malformed input."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        out.append((number, value))
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def partial_success(response: bytes) -> tuple[int, str]:
    """``(rejected_spans, error_message)`` of an ExportTraceServiceResponse."""
    rejected, message = 0, ""
    try:
        for number, value in _fields(response):
            if number == 1 and isinstance(value, bytes):
                for n, v in _fields(value):
                    if n == 1 and isinstance(v, int):
                        rejected = max(_int64(v), 0)
                    elif n == 2 and isinstance(v, bytes):
                        message = v.decode("utf-8", "replace")
    except ValueError:
        return 0, ""
    return rejected, message


def _duration(buf: bytes) -> float:
    seconds = nanos = 0
    for n, v in _fields(buf):
        if n == 1 and isinstance(v, int):
            seconds = _int64(v)
        elif n == 2 and isinstance(v, int):
            nanos = _int64(v)
    return max(seconds + nanos / 1e9, 0.0)


def retry_info_delay(retry_info: bytes) -> Optional[float]:
    for n, v in _fields(retry_info):
        if n == 1 and isinstance(v, bytes):
            return _duration(v)
    return None


def rpc_status(buf: bytes) -> tuple[str, Optional[float]]:
    """``(message, RetryInfo delay or None)`` of a google.rpc.Status."""
    message, delay = "", None
    try:
        for n, v in _fields(buf):
            if n == 2 and isinstance(v, bytes):
                message = v.decode("utf-8", "replace")
            elif n == 3 and isinstance(v, bytes):
                any_fields = dict(_fields(v))
                if any_fields.get(1) == _RETRY_INFO_TYPE.encode():
                    delay = retry_info_delay(any_fields.get(2, b""))
    except ValueError:
        return "", None
    return message, delay


def retry_after(header: Optional[str]) -> Optional[float]:
    """HTTP ``Retry-After``: seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def grpc_error_attempt(exc: Any, closed: bool) -> Attempt:
    """The attempt a gRPC error (``grpc.RpcError``) makes: retryable or not,
    and the delay the server asked for (RetryInfo). ``closed``: the
    transport is shut down (nothing is retried)."""
    try:
        code = exc.code()
        details = exc.details() or ""
        trailing = exc.trailing_metadata() or ()
    except Exception:
        return Attempt(ok=False, error=f"gRPC error: {exc!r}", kind="grpc error")
    name = getattr(code, "name", str(code))
    delay: Optional[float] = None
    for key, value in trailing:
        if not isinstance(value, bytes):
            continue
        try:
            if key == "grpc-status-details-bin":
                message, found = rpc_status(value)
                details = details or message
            elif key == "google.rpc.retryinfo-bin":
                found = retry_info_delay(value)
            else:
                continue
        except ValueError:
            continue
        if found is not None:
            delay = found
    retryable = name in _RETRYABLE_GRPC or (name == "RESOURCE_EXHAUSTED" and delay is not None)
    kind = f"grpc {name}"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        # A certificate that does not verify will not verify on a retry.
        retryable, kind = False, "tls"
    if closed:
        retryable = False
    return Attempt(
        ok=False,
        error=f"gRPC {name}: {details}" if details else f"gRPC {name}",
        kind=kind,
        retryable=retryable,
        retry_after=delay,
    )


def http_answer_attempt(response: http.client.HTTPResponse, data: bytes) -> Attempt:
    """The attempt an HTTP answer makes: delivered (with any partial success),
    or failed, retryable or not (``Retry-After``)."""
    status = response.status
    if 200 <= status < 300:
        rejected, message = partial_success(data)
        return Attempt(ok=True, rejected_spans=rejected, partial_error=message)
    message = ""
    ctype = (response.getheader("content-type") or "").lower()
    if "protobuf" in ctype:
        message, _ = rpc_status(data)
    elif data:
        message = data[:200].decode("utf-8", "replace").strip()
    error = f"HTTP {status} {response.reason}" + (f": {message}" if message else "")
    retryable = status in _RETRYABLE_HTTP
    return Attempt(
        ok=False,
        error=error,
        kind=f"http {status}",
        retryable=retryable,
        retry_after=retry_after(response.getheader("retry-after")) if retryable else None,
    )
