"""The OTLP/HTTP side of :class:`pulsetrace.export.otlp.OtlpTransport`:
``POST`` of the encoded request on kept-alive connections, either waited
for (:meth:`HttpConnections.attempt`) or handed to a sender thread
(:meth:`HttpConnections.start`): one thread per request being sent at once
(the OTLP exporter bounds that number), each with its own connection,
started when first needed and gone after a minute without work. The answer
is read by :mod:`pulsetrace.export.otlp_wire`."""

from __future__ import annotations

import collections
import contextlib
import gzip
import http.client
import os
import socket
import ssl
import threading
import time
from typing import Callable, Optional
from urllib.parse import urlsplit

from pulsetrace import _diag
from pulsetrace.config import OtlpConfig
from pulsetrace.export.otlp_wire import Attempt, http_answer_attempt

# Headers the transport sets itself; configured ones of these names are ignored.
_HTTP_OWN_HEADERS = frozenset(
    "content-type content-encoding content-length transfer-encoding connection host".split()
)
#: A sender thread with nothing to send for this long ends.
SENDER_IDLE_S = 60.0
SENDER_NAME = "pulsetrace-otlp-http"


class _Job:
    """A request handed to a sender thread, and how to cancel it."""

    __slots__ = ("cancelled", "closed", "conn", "deadline", "done", "payload")

    def __init__(
        self,
        payload: bytes,
        deadline: float,
        closed: Callable[[], bool],
        done: Callable[[Attempt], None],
    ) -> None:
        self.payload = payload
        self.deadline = deadline
        self.closed = closed
        self.done = done
        self.cancelled = False
        self.conn: Optional[http.client.HTTPConnection] = None

    def cancel(self) -> None:
        """Stop waiting for the answer: the connection is shut down under
        the sender thread, which then reports the attempt as cancelled."""
        self.cancelled = True
        conn = self.conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HttpConnections:
    """Connections to ``config.endpoint`` (``/v1/traces`` already in it).
    Raises OSError when a CA file cannot be read."""

    def __init__(self, config: OtlpConfig, user_agent: str) -> None:
        self.config = config
        u = urlsplit(config.endpoint)
        self._https = u.scheme.lower() == "https"
        self.host = u.hostname or "localhost"
        self.port = u.port or (443 if self._https else 80)
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._ssl: Optional[ssl.SSLContext] = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=config.certificate or None)
        headers = {"user-agent": user_agent}
        headers.update((k, v) for k, v in config.headers.items() if k not in _HTTP_OWN_HEADERS)
        headers["content-type"] = "application/x-protobuf"
        if config.compression == "gzip":
            headers["content-encoding"] = "gzip"
        self._headers = headers
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._closed = False
        self._jobs_cv = threading.Condition(threading.Lock())
        self._reset_senders()

    def _reset_senders(self) -> None:
        self._pid = os.getpid()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._senders = 0  # sender threads alive
        self._waiting = 0  # of which waiting for a job

    # -- one attempt, waited for --------------------------------------------

    def attempt(
        self,
        payload: bytes,
        timeout: float,
        closed: Callable[[], bool],
        job: Optional[_Job] = None,
        fresh: bool = False,
    ) -> Attempt:
        """One POST, waited for (at most ``timeout`` seconds)."""
        body = payload
        if self.config.compression == "gzip":
            body = gzip.compress(payload, compresslevel=6, mtime=0)
        started = time.monotonic()
        conn, reused = self._connection(timeout, fresh)
        if job is not None:
            job.conn = conn
            if job.cancelled:
                conn.close()
                return _cancelled()

        def within_timeout() -> None:
            # Socket timeouts are per operation: shrink them as time passes,
            # so that the attempt as a whole keeps to ``timeout``.
            left = timeout - (time.monotonic() - started)
            if conn.sock is not None:
                conn.sock.settimeout(max(left, 0.001))

        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            within_timeout()
            response = conn.getresponse()
            within_timeout()
            data = response.read()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            return Attempt(ok=False, error=f"TLS: {exc.verify_message or exc}", kind="tls")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if job is not None and job.cancelled:
                return _cancelled()
            left = timeout - (time.monotonic() - started)
            timed_out = isinstance(exc, (socket.timeout, TimeoutError))
            if reused and left > 0 and not timed_out and not closed():
                # A kept-alive connection the server had closed: once more on
                # a new one, at once (not counted as a retry).
                return self.attempt(payload, left, closed, job, fresh=True)
            return self._connection_error(exc, closed())
        with self._lock:
            keep = not response.will_close and not self._closed and not closed()
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        return http_answer_attempt(response, data)

    def _connection(self, timeout: float, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle and not fresh:
                conn = self._idle.pop()
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return conn, True
        if self._https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self._ssl
            ), False
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout), False

    def _connection_error(self, exc: BaseException, closed: bool) -> Attempt:
        kind = type(exc).__name__
        text = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc) or kind
        return Attempt(
            ok=False,
            error=f"HTTP connection to {self.host}:{self.port} failed: {text}",
            kind=f"connection {kind}",
            retryable=not closed,
        )

    # -- one attempt on a sender thread -------------------------------------

    def start(
        self,
        payload: bytes,
        timeout: float,
        closed: Callable[[], bool],
        done: Callable[[Attempt], None],
    ) -> Optional[Callable[[], None]]:
        """One POST on a sender thread: ``done(attempt)`` is called there
        once it is answered, failed or timed out (on this thread when the
        transport is closed). Returns how to cancel it."""
        job = _Job(payload, time.monotonic() + timeout, closed, done)
        if self._pid != os.getpid():
            # A forked child: the parent's sender threads are not here, and
            # one of them may have held the lock at the fork.
            self._jobs_cv = threading.Condition(threading.Lock())
            self._reset_senders()
        with self._jobs_cv:
            if not self._closed:
                self._jobs.append(job)
                if self._waiting > len(self._jobs) - 1:
                    self._jobs_cv.notify()
                else:
                    self._senders += 1
                    sender = threading.Thread(target=self._serve, name=SENDER_NAME, daemon=True)
                    sender.start()
                return job.cancel
        done(Attempt(ok=False, error="the transport is shut down", kind="shutdown"))
        return None

    def _serve(self) -> None:
        while True:
            with self._jobs_cv:
                while not self._jobs and not self._closed:
                    self._waiting += 1
                    woken = self._jobs_cv.wait(SENDER_IDLE_S)
                    self._waiting -= 1
                    if not woken and not self._jobs:
                        self._senders -= 1
                        return
                if not self._jobs:
                    self._senders -= 1
                    return
                job = self._jobs.popleft()
            try:
                left = job.deadline - time.monotonic()
                if job.cancelled:
                    attempt = _cancelled()
                elif self._closed:
                    attempt = Attempt(ok=False, error="the transport is shut down", kind="shutdown")
                elif left <= 0:
                    attempt = Attempt(
                        ok=False, error="deadline passed before sending", kind="deadline"
                    )
                else:
                    attempt = self.attempt(job.payload, left, job.closed, job)
                job.done(attempt)
            except Exception as exc:
                _diag.internal_error("export.otlp.http_sender", exc)

    def close(self) -> None:
        """Close the kept-alive connections; sender threads end once their
        request is done (a request not started is answered as shut down)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        with self._jobs_cv:
            self._jobs_cv.notify_all()
        for conn in idle:
            conn.close()


def _cancelled() -> Attempt:
    return Attempt(ok=False, error="the request was cancelled", kind="cancelled")
