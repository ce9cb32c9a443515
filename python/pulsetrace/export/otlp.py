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
    cancel = transport.start(request_bytes, deadline, done)  # not waited for
    transport.counters()  # requests_sent, requests_failed, retries, ...
    transport.stop_retrying()  # at shutdown: one attempt per send from now on
    transport.shutdown()

``send`` waits for the answer; ``start`` makes one attempt and returns at
once, ``done(result)`` being called when the answer comes (gRPC: grpcio's
future API; HTTP: a sender thread, see :mod:`pulsetrace.export.otlp_http`).
Neither raises: every failure is a :class:`SendResult` with ``ok``
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
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace.config import GRPC, OtlpConfig
from pulsetrace.export.otlp_grpc import GrpcChannel
from pulsetrace.export.otlp_http import HttpConnections
from pulsetrace.export.otlp_wire import Attempt, unreachable

__all__ = ["OtlpConfig", "OtlpTransport", "SendResult", "config_from_env"]

log = logging.getLogger("pulsetrace")


def config_from_env(env: Optional[Mapping[str, str]] = None) -> OtlpConfig:
    """The OTLP settings in ``env`` (default ``os.environ``), read by
    pulsetrace's one environment reader. The agent itself uses the
    ``otlp`` field of its configuration, read once per process."""
    from pulsetrace._env import otlp as _otlp_env

    return _otlp_env.otlp(env)


INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
_LOG_INTERVAL_S = 60.0


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
    on an export thread), ``start`` does not. Nothing here raises into the
    caller."""

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
        self._grpc: Optional[GrpcChannel] = None
        self._http: Optional[HttpConnections] = None
        self._timeout_s = max(config.timeout_ms, 1.0) / 1000.0
        try:
            if config.protocol == GRPC:
                self._grpc = GrpcChannel(config, _user_agent(), MAX_BACKOFF_S)
            else:
                self._http = HttpConnections(config, _user_agent())
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
        self._count(result, payload)
        return result

    def start(
        self, payload: bytes, deadline: float, done: Callable[[SendResult], None]
    ) -> Optional[Callable[[], object]]:
        """Send ``payload`` without waiting for the answer: one attempt, as
        ``send(payload, deadline, retry=False)``, whose result is handed to
        ``done`` once known, exactly once, on another thread (gRPC: one of
        grpcio's; HTTP: a sender thread), or on this one if the attempt
        cannot start. Returns a callable that cancels the attempt (its
        result then says so), or None. Never raises; neither does it let
        an exception of ``done`` out."""

        def hand_over(result: SendResult) -> None:
            self._count(result, payload)
            try:
                done(result)
            except Exception as exc:
                _diag.internal_error("export.otlp.done", exc)

        def finished(attempt: Attempt) -> None:
            try:
                result = self._one_attempt_result(attempt)
            except Exception as exc:
                _diag.internal_error("export.otlp.start", exc)
                result = SendResult(ok=False, error=f"internal error: {exc!r}")
            hand_over(result)

        try:
            early = self._before_attempt(payload, deadline)
            if early is not None:
                hand_over(early)
                return None
            payload = bytes(payload)
            timeout = min(self._timeout_s, deadline - time.monotonic())
            if self._grpc is not None:
                return self._grpc.start(payload, timeout, self._closed.is_set, finished)
            assert self._http is not None
            return self._http.start(payload, timeout, self._closed.is_set, finished)
        except Exception as exc:
            _diag.internal_error("export.otlp.start", exc)
            hand_over(SendResult(ok=False, error=f"internal error: {exc!r}"))
            return None

    def _count(self, result: SendResult, payload: Any) -> None:
        with self._lock:
            c = self._counters
            c["retries"] += result.retries
            c["rejected_spans"] += result.rejected_spans
            if result.ok:
                c["requests_sent"] += 1
                c["bytes_sent"] += len(payload)
            else:
                c["requests_failed"] += 1

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
            if self._grpc is not None:
                self._grpc.close()
            if self._http is not None:
                self._http.close()
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
        early = self._before_attempt(payload, None)
        if early is not None:
            return early
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
            if self._grpc is not None:
                attempt = self._grpc.attempt(payload, timeout, self._closed.is_set)
            else:
                assert self._http is not None
                attempt = self._http.attempt(payload, timeout, self._closed.is_set)
            last[:] = [attempt]
            if attempt.ok:
                self._partial(attempt)
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

    def _before_attempt(self, payload: Any, deadline: Optional[float]) -> Optional[SendResult]:
        """The failure of a send that cannot be attempted, or None."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return self._fail(0, "payload is not bytes", "bad payload", False)
        if self._setup_error is not None:
            return self._fail(0, self._setup_error, "setup", False)
        if deadline is not None:
            if self._closed.is_set():
                return self._fail(0, "the transport is shut down", "shutdown", False)
            if deadline <= time.monotonic():
                return self._fail(0, "deadline passed before sending", "deadline", True)
        return None

    def _one_attempt_result(self, attempt: Attempt) -> SendResult:
        """What one attempt of :meth:`start` comes to (as ``send`` with
        ``retry=False``): the failure said at once, rate limited."""
        if attempt.ok:
            self._partial(attempt)
            return SendResult(ok=True, rejected_spans=attempt.rejected_spans)
        error = attempt.error or "failed"
        later = attempt.retryable and not self._no_retry.is_set()
        if attempt.kind != "cancelled":
            self._first_failure(attempt, error, False, later)
        result = self._fail(0, error, attempt.kind, attempt.retryable, said=True)
        return dataclasses.replace(
            result, retry_after=attempt.retry_after, unreachable=unreachable(attempt)
        )

    def _partial(self, attempt: Attempt) -> None:
        if attempt.rejected_spans or attempt.partial_error:
            self._log_rate_limited(
                "partial success",
                "pulsetrace: the OTLP receiver rejected %d spans: %s",
                attempt.rejected_spans,
                attempt.partial_error or "(no message)",
            )

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
