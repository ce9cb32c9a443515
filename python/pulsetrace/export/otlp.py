"""OTLP trace transport: delivers already-encoded ``ExportTraceServiceRequest``
bytes to an OpenTelemetry collector over gRPC or HTTP/protobuf.

pulsetrace's native core encodes the spans; this module only moves the
bytes (with retries, compression, headers and TLS) and reads the answer.

Environment variables (the OpenTelemetry names; every ``OTEL_EXPORTER_OTLP_X``
also has a per-signal form ``OTEL_EXPORTER_OTLP_TRACES_X`` that wins over it;
an empty value is the same as an unset one):

``OTEL_TRACES_EXPORTER``
    ``otlp`` (default), ``console`` (reported in :attr:`OtlpConfig.exporters`,
    handled by ConsoleSpanExporter), ``none`` (exporting off). A list such as
    ``otlp,console`` is allowed.
``OTEL_EXPORTER_OTLP_PROTOCOL``
    ``grpc`` (default) or ``http/protobuf``. ``http/json`` is not supported:
    a warning, and ``http/protobuf`` is used.
``OTEL_EXPORTER_OTLP_ENDPOINT``
    Default ``http://localhost:4317`` (grpc) or ``http://localhost:4318``
    (http/protobuf). For http/protobuf ``/v1/traces`` is appended to it;
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is. For grpc a
    ``host:port`` without a scheme is accepted (TLS unless insecure).
``OTEL_EXPORTER_OTLP_HEADERS``
    ``name=value,name2=value2`` (percent-decoded; names are lowercased). The
    per-signal form replaces the generic list, it is not merged with it.
``OTEL_EXPORTER_OTLP_TIMEOUT``
    Milliseconds per request attempt (default 10000).
``OTEL_EXPORTER_OTLP_COMPRESSION``
    ``gzip`` or ``none`` (default).
``OTEL_EXPORTER_OTLP_INSECURE``
    gRPC only: ``true`` for plaintext, ``false`` for TLS. Unset: plaintext
    for ``http://`` endpoints, TLS otherwise. ``https://`` is always TLS;
    http/protobuf follows the scheme.
``OTEL_EXPORTER_OTLP_CERTIFICATE``
    A PEM file of CA certificates trusted for TLS (default: the system's).

A value that cannot be used never raises: it gives one warning on the
``pulsetrace`` logger naming the variable, the bad value (header values are
never shown) and what is used instead.

Usage (on pulsetrace's export thread, never on a request thread)::

    transport = OtlpTransport(config_from_env())
    result = transport.send(request_bytes, deadline=time.monotonic() + 10)
    transport.counters()  # requests_sent, requests_failed, retries, ...
    transport.stop_retrying()  # at shutdown: one attempt per send from now on
    transport.shutdown()

``send`` never raises: every failure is a :class:`SendResult` with ``ok``
False. Retryable failures (gRPC UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,
OUT_OF_RANGE, DATA_LOSS, CANCELLED, RESOURCE_EXHAUSTED when the server sent
RetryInfo; HTTP 429, 502, 503, 504 and connection errors) are retried with
exponential backoff and full jitter (0.5 s doubling up to 5 s), or after the
delay the server asked for, never past the deadline; with ``retry=False``
a send makes one attempt and leaves the retry to its caller (the OTLP
exporter keeps the request and sends it again on a later wake of the
export thread, by the same rules).

The first failed attempt of a send is one warning on the ``pulsetrace``
logger naming the endpoint and the error (a refused or unanswered connection
says the collector cannot be reached), at most once a minute per kind of
failure; the send's final outcome is logged at DEBUG.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from pulsetrace import _diag
from pulsetrace.config import GRPC, OtlpConfig
from pulsetrace.export.otlp_wire import (
    Attempt,
    grpc_error_attempt,
    http_answer_attempt,
    partial_success,
    unreachable,
)

__all__ = ["OtlpConfig", "OtlpTransport", "SendResult", "config_from_env"]

log = logging.getLogger("pulsetrace")


def config_from_env(env: Optional[Mapping[str, str]] = None) -> OtlpConfig:
    """The OTLP settings in ``env`` (default ``os.environ``), read by
    pulsetrace's one environment reader. The agent itself uses the
    ``otlp`` field of its configuration, read once per process."""
    from pulsetrace._env import otlp as _otlp_env

    return _otlp_env.otlp(env)


EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
_LOG_INTERVAL_S = 60.0
# Headers the transport sets itself; configured ones of these names are ignored.
_HTTP_OWN_HEADERS = frozenset(
    "content-type content-encoding content-length transfer-encoding connection host".split()
)


@dataclass(frozen=True)
class SendResult:
    """What became of one :meth:`OtlpTransport.send`.

    ``retryable`` is True when the last failure was of a kind worth trying
    again later (the deadline or a shutdown ended the retries);
    ``retry_after`` is the delay the receiver asked for (HTTP
    ``Retry-After``, gRPC RetryInfo), if it did; ``unreachable`` is True when
    the last attempt found no collector (connection refused or failed).
    """

    ok: bool
    retries: int = 0
    rejected_spans: int = 0
    error: Optional[str] = None
    retryable: bool = False
    retry_after: Optional[float] = None
    unreachable: bool = False


def _user_agent() -> str:
    try:
        import pulsetrace

        return f"pulsetrace/{pulsetrace.__version__}"
    except Exception:
        return "pulsetrace"


class OtlpTransport:
    """Sends encoded ``ExportTraceServiceRequest`` bytes over gRPC or
    HTTP/protobuf, as ``config`` says. Thread-safe; ``send`` blocks (run it
    on an export thread). Nothing here raises into the caller."""

    def __init__(self, config: OtlpConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._no_retry = threading.Event()
        # Set by shutdown() and stop_retrying(): ends a retry wait at once.
        self._wake = threading.Event()
        self._counters = dict.fromkeys(
            ("requests_sent", "requests_failed", "retries", "bytes_sent", "rejected_spans"), 0
        )
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._setup_error: Optional[str] = None
        self._grpc: Any = None
        self._channel: Any = None
        self._export: Any = None
        self._http_idle: list[http.client.HTTPConnection] = []
        self._timeout_s = max(config.timeout_ms, 1.0) / 1000.0
        self._user_agent = _user_agent()
        try:
            if config.protocol == GRPC:
                self._setup_grpc()
            else:
                self._setup_http()
        except Exception as exc:
            if isinstance(exc, OSError) and exc.filename:
                why = f"{exc.strerror or exc}: {exc.filename!r}"
            elif isinstance(exc, RuntimeError):
                why = str(exc)
            else:
                why = repr(exc)
            self._setup_error = f"cannot set up the OTLP {config.protocol} transport ({why})"
            log.warning("pulsetrace: %s; traces will not be exported", self._setup_error)

    # -- public -------------------------------------------------------------

    def send(
        self,
        payload: bytes,
        deadline: float,
        wait: Optional[Callable[[float], bool]] = None,
        *,
        retry: bool = True,
    ) -> SendResult:
        """Deliver ``payload`` (a serialized ExportTraceServiceRequest) and
        wait for the answer, retrying retryable failures until ``deadline``
        (a :func:`time.monotonic` value). ``wait(seconds)`` is how a retry
        waits, if the caller has its own (True: end the retries, one more
        attempt at once, as :meth:`stop_retrying`). ``retry=False``: one
        attempt, a retryable failure is returned for the caller to retry
        later (``retryable``, ``retry_after``). Never raises."""
        try:
            result = self._send(payload, deadline, wait, retry)
        except Exception as exc:
            _diag.internal_error("export.otlp.send", exc)
            result = SendResult(ok=False, error=f"internal error: {exc!r}")
        with self._lock:
            c = self._counters
            c["retries"] += result.retries
            c["rejected_spans"] += result.rejected_spans
            if result.ok:
                c["requests_sent"] += 1
                c["bytes_sent"] += len(payload)
            else:
                c["requests_failed"] += 1
        return result

    def counters(self) -> dict[str, int]:
        """requests_sent, requests_failed, retries, bytes_sent (request bytes
        delivered, before compression) and rejected_spans (partial success)."""
        with self._lock:
            return dict(self._counters)

    def stop_retrying(self) -> None:
        """From now on each send makes one attempt (a retry wait in progress
        ends with one more attempt at once): at shutdown, a collector that is
        down costs one quick failed attempt per send, not its whole deadline."""
        self._no_retry.set()
        self._wake.set()

    def shutdown(self) -> None:
        """Stop: a retry wait in progress ends, later sends fail. Idempotent."""
        self._closed.set()
        self._wake.set()
        try:
            with self._lock:
                idle, self._http_idle = self._http_idle, []
                channel, self._channel = self._channel, None
            for conn in idle:
                conn.close()
            if channel is not None:
                channel.close()
        except Exception as exc:
            _diag.internal_error("export.otlp.shutdown", exc)

    # -- the retry loop -----------------------------------------------------

    def _send(
        self,
        payload: bytes,
        deadline: float,
        wait: Optional[Callable[[float], bool]],
        retry: bool,
    ) -> SendResult:
        last: list[Attempt] = []
        result = self._send_attempts(payload, deadline, last, wait, retry)
        if result.ok or not last:
            return result
        attempt = last[-1]
        return dataclasses.replace(
            result, retry_after=attempt.retry_after, unreachable=unreachable(attempt)
        )

    def _send_attempts(
        self,
        payload: bytes,
        deadline: float,
        last: list[Attempt],
        wait: Optional[Callable[[float], bool]],
        retry: bool = True,
    ) -> SendResult:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return self._fail(0, "payload is not bytes", "bad payload", False)
        if self._setup_error is not None:
            return self._fail(0, self._setup_error, "setup", False)
        payload = bytes(payload)
        retries = 0
        error = ""
        last_attempt = False  # the caller's wait asked for no more retries
        while True:
            if self._closed.is_set():
                return self._fail(retries, "the transport is shut down", "shutdown", False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f"{error} (deadline passed)" if error else "deadline passed before sending"
                return self._fail(retries, why, "deadline", True)
            timeout = min(self._timeout_s, remaining)
            if self.config.protocol == GRPC:
                attempt = self._grpc_attempt(payload, timeout)
            else:
                attempt = self._http_attempt(payload, timeout)
            last[:] = [attempt]
            if attempt.ok:
                if attempt.rejected_spans or attempt.partial_error:
                    self._log_rate_limited(
                        "partial success",
                        "pulsetrace: the OTLP receiver rejected %d spans: %s",
                        attempt.rejected_spans,
                        attempt.partial_error or "(no message)",
                    )
                if retries:
                    log.debug("pulsetrace: OTLP export delivered after %d retries", retries)
                return SendResult(ok=True, retries=retries, rejected_spans=attempt.rejected_spans)
            error = attempt.error or "failed"
            later = attempt.retryable and not self._no_retry.is_set()
            will_retry = later and retry and not last_attempt
            if retries == 0:
                self._first_failure(attempt, error, will_retry, later and not retry)
            if not will_retry:
                return self._fail(retries, error, attempt.kind, attempt.retryable, said=True)
            if attempt.retry_after is not None:
                delay = attempt.retry_after
            else:
                cap = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2**retries)
                delay = random.uniform(0.0, cap)
            if time.monotonic() + delay >= deadline:
                why = f"{error} (a retry in {delay:.2f} s would pass the deadline)"
                return self._fail(retries, why, attempt.kind, True, said=True)
            log.debug("pulsetrace: OTLP export failed (%s); retrying in %.2f s", error, delay)
            if wait is not None:
                last_attempt = wait(delay)
            woken = (wait is None or last_attempt) and self._wake.wait(0 if wait else delay)
            if woken and self._closed.is_set():
                why = f"{error} (shut down while waiting to retry)"
                return self._fail(retries, why, "", True, said=True)
            # The wait ran out, or stop_retrying() ended it: one more attempt now.
            retries += 1

    def _first_failure(
        self, attempt: Attempt, error: str, will_retry: bool, caller_retries: bool = False
    ) -> None:
        """Say at once that a send failed (rate limited per kind of failure),
        not only when its retries are over."""
        gone = unreachable(attempt) or attempt.kind == "grpc DEADLINE_EXCEEDED"
        what = "cannot reach the OTLP collector at" if gone else "OTLP export failed at"
        if will_retry:
            then = "retrying"
        elif caller_retries:
            then = (
                "the request is kept and sent again later, while the exporter's pending "
                "requests have room (PULSETRACE_OTLP_MAX_PENDING_SPANS)"
            )
        else:
            then = "its spans are dropped"
        self._log_rate_limited(
            attempt.kind or "failure",
            "pulsetrace: %s %s: %s; %s",
            what,
            self.config.endpoint,
            error,
            then,
        )

    def _fail(
        self, retries: int, error: str, kind: str, retryable: bool, *, said: bool = False
    ) -> SendResult:
        """A send that failed. ``said``: its first failed attempt was already
        reported (then the outcome is logged at DEBUG only)."""
        if said:
            log.debug(
                "pulsetrace: OTLP export to %s failed after %d retries: %s",
                self.config.endpoint,
                retries,
                error,
            )
        else:
            self._log_rate_limited(
                kind or "failure",
                "pulsetrace: OTLP export to %s failed after %d retries: %s",
                self.config.endpoint,
                retries,
                error,
            )
        return SendResult(ok=False, retries=retries, error=error, retryable=retryable)

    def _log_rate_limited(self, kind: str, msg: str, *args: Any) -> None:
        """At most one warning a minute per kind of failure."""
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(kind)
            if last is not None and now - last < _LOG_INTERVAL_S:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last_logged[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg += " (and %d more like this in the last minute)"
            args = (*args, suppressed)
        log.warning(msg, *args)

    # -- gRPC ---------------------------------------------------------------

    def _setup_grpc(self) -> None:
        try:
            import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
        except ImportError as exc:
            raise RuntimeError(
                "grpcio is not installed: pip install grpcio, "
                "or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            ) from exc

        self._grpc = grpc
        endpoint = self.config.endpoint
        if "://" in endpoint:
            u = urlsplit(endpoint)
            port = u.port or (443 if u.scheme.lower() == "https" else 80)
            host = u.hostname or "localhost"
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            target = endpoint
        options = [
            ("grpc.primary_user_agent", self._user_agent),
            # Reconnect soon after a collector comes back (default: up to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_S * 1000)),
            ("grpc.max_send_message_length", -1),
        ]
        if self.config.insecure:
            channel = grpc.insecure_channel(target, options=options)
        else:
            roots = None
            if self.config.certificate:
                with open(self.config.certificate, "rb") as f:
                    roots = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        # Bytes in, bytes out: the request is already encoded, the answer is
        # read with the few lines of wire-format parsing in otlp_wire.
        self._export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        self._metadata = tuple(
            (k, v.encode() if k.endswith("-bin") else v) for k, v in self.config.headers.items()
        )
        self._compression = (
            grpc.Compression.Gzip
            if self.config.compression == "gzip"
            else grpc.Compression.NoCompression
        )

    def _grpc_attempt(self, payload: bytes, timeout: float) -> Attempt:
        grpc = self._grpc
        export = self._export
        if export is None or self._channel is None:
            return Attempt(ok=False, error="the transport is shut down", kind="shutdown")
        try:
            response, _call = export.with_call(
                payload,
                timeout=timeout,
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except grpc.RpcError as exc:
            return grpc_error_attempt(exc, self._closed.is_set())
        except ValueError as exc:  # a closed channel
            return Attempt(ok=False, error=f"gRPC: {exc}", kind="grpc error")
        rejected, message = partial_success(response or b"")
        return Attempt(ok=True, rejected_spans=rejected, partial_error=message)

    # -- HTTP/protobuf ------------------------------------------------------

    def _setup_http(self) -> None:
        u = urlsplit(self.config.endpoint)
        self._https = u.scheme.lower() == "https"
        self._host = u.hostname or "localhost"
        self._port = u.port or (443 if self._https else 80)
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._ssl: Optional[ssl.SSLContext] = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=self.config.certificate or None)
        headers = {"user-agent": self._user_agent}
        headers.update((k, v) for k, v in self.config.headers.items() if k not in _HTTP_OWN_HEADERS)
        headers["content-type"] = "application/x-protobuf"
        if self.config.compression == "gzip":
            headers["content-encoding"] = "gzip"
        self._http_headers = headers

    def _connection(self, timeout: float, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._http_idle and not fresh:
                conn = self._http_idle.pop()
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return conn, True
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            ), False
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout), False

    def _http_attempt(self, payload: bytes, timeout: float, fresh: bool = False) -> Attempt:
        body = payload
        if self.config.compression == "gzip":
            body = gzip.compress(payload, compresslevel=6, mtime=0)
        started = time.monotonic()
        conn, reused = self._connection(timeout, fresh)

        def within_timeout() -> None:
            # Socket timeouts are per operation: shrink them as time passes,
            # so that the attempt as a whole keeps to ``timeout``.
            left = timeout - (time.monotonic() - started)
            if conn.sock is not None:
                conn.sock.settimeout(max(left, 0.001))

        try:
            conn.request("POST", self._path, body=body, headers=self._http_headers)
            within_timeout()
            response = conn.getresponse()
            within_timeout()
            data = response.read()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            return Attempt(ok=False, error=f"TLS: {exc.verify_message or exc}", kind="tls")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            left = timeout - (time.monotonic() - started)
            timed_out = isinstance(exc, (socket.timeout, TimeoutError))
            if reused and left > 0 and not timed_out and not self._closed.is_set():
                # A kept-alive connection the server had closed: once more on
                # a new one, at once (not counted as a retry).
                return self._http_attempt(payload, left, fresh=True)
            return self._connection_error(exc)
        with self._lock:
            keep = not response.will_close and not self._closed.is_set()
            if keep:
                self._http_idle.append(conn)
        if not keep:
            conn.close()
        return http_answer_attempt(response, data)

    def _connection_error(self, exc: BaseException) -> Attempt:
        kind = type(exc).__name__
        text = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc) or kind
        return Attempt(
            ok=False,
            error=f"HTTP connection to {self._host}:{self._port} failed: {text}",
            kind=f"connection {kind}",
            retryable=not self._closed.is_set(),
        )
