"""pulsetrace's small HTTP server: a ``Router``'s routes
(``pulsetrace._router``) served from a plain socket server that bad clients
cannot wear down (the wire format: ``pulsetrace._wire``; reading a request off a connection:
``pulsetrace._server_framing``).

The Prometheus exposition and the monitoring endpoints are served from here
(``prometheus.start_server``, ``pulsetrace.monitoring.endpoints``).

Its own work is never traced: it is built on plain sockets and
``select.epoll`` (``select.poll`` elsewhere), which no pulsetrace hook wraps, and handlers get a
``Request``, not a WSGI environ, so nothing here becomes a span.

Concurrency design:

- One I/O thread owns every socket. It accepts, reads request heads,
  writes responses and closes, all non-blocking through one ``epoll``: an
  idle or slow client costs a descriptor and a small buffer, never a thread.
  A probe costs this thread little: its request is read as soon as its
  connection is accepted when it has arrived, and deadlines are kept in
  two queues in the order they were set (one per delay), not a heap.
- A fixed pool of ``workers`` threads runs the handlers (rendering the
  exposition happens there, never on the I/O thread); only a route added
  as ``inline`` (O(1), such as the liveness probe) is answered on the I/O
  thread, so that it never waits behind handlers that wait, and so is a
  route's ``quick`` answer (a rendering still fresh: a probe storm costs
  no hand-over to the pool). A complete request
  is handed to the pool through a queue; the response comes back through a
  deque and a wake-up socket, and the I/O thread writes it.
- Deadlines are per connection, not per read: the whole request head must
  arrive within ``read_timeout`` of the accept (a client sending one byte a
  second is cut off at the deadline with 408), and the response must be
  taken within ``read_timeout`` too.
- At most ``max_connections`` connections are open. When a new one
  arrives at the bound, the oldest connection that is only lingering after
  its response, else the oldest still sending its head, is closed to make
  room (slow clients cannot lock scrapers out); when every slot is busy
  with a request being handled or written, the newcomer is answered 503 at
  once and closed. The listen backlog is 1024, so that a burst of
  connections is not dropped by the kernel (a dropped SYN costs the client
  a 1 s retransmission) before the I/O thread accepts it.
- A request head is at most ``max_head_bytes`` (431 beyond). A body is
  read only for POST, PUT and PATCH, when some route takes that method: its
  length is its ``Content-Length`` (none: empty; ``Transfer-Encoding`` is
  refused with 411), at most ``max_body_bytes`` (413 beyond, answered
  before it is read), and it must arrive within the same deadline as the
  head. Other methods are
  answered by the router (405 with ``Allow`` when the path exists). Each
  response closes its connection (``Connection: close``), then the server
  reads and discards what the client still sends for a moment, so that a
  client that sent more than was read gets the response rather than a
  reset.

Bounds: ``1 + workers`` threads, all started with the server; at most
``max_connections + 5`` descriptors (the connections, one more accepted
just before an older one is closed to make room, the listening socket, the
``epoll``, the wake-up pair), plus what the handlers open; a connection
buffers at most ``max_head_bytes`` of request head and ``max_body_bytes``
of body.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections import deque
from typing import Optional

from pulsetrace import _diag
from pulsetrace._router import Request, Response, Router, text_response
from pulsetrace._server_framing import (
    BODY_METHODS,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    RECV,
    Framer,
)
from pulsetrace._server_io import HANDLE, IN, LINGER, OUT, READ, WRITE, Conn, Deadlines, Poller
from pulsetrace._wire import encode

#: How long a closed response lingers to absorb what the client still sends.
LINGER_S = 1.0
#: Lingering connections of complete requests are closed in batches this far
#: apart (seconds).
_LINGER_STEP = 0.25
#: Deadlines (``Deadlines``' queues): the head's and the response's, the
#: linger's, the linger's of a complete request (batched).
_IO, _LINGERING, _DONE = range(3)
#: The kernel caps it at ``net.core.somaxconn`` (4096 on current Linux).
BACKLOG = 1024


_LISTENER = object()
_WAKER = object()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """Serves ``router`` on ``(host, port)``; binds in the constructor
    (OSError if it cannot), serves after ``start()``."""

    def __init__(
        self,
        host: str,
        port: int,
        router: Router,
        *,
        max_connections: int = 256,
        read_timeout: float = 5.0,
        workers: int = 4,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        name: str = "pulsetrace-server",
    ) -> None:
        for what, value, ok in (
            ("max_connections", max_connections, max_connections >= 1),
            ("workers", workers, workers >= 1),
            ("read_timeout", read_timeout, read_timeout > 0),
            ("max_head_bytes", max_head_bytes, max_head_bytes >= 64),
            ("max_body_bytes", max_body_bytes, max_body_bytes >= 0),
        ):
            if not ok:
                raise ValueError(f"the server's {what} cannot be {value!r}")
        self.router = router
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        # The methods whose body is read: those a route takes with a body.
        self._framer = Framer(max_head_bytes, max_body_bytes, BODY_METHODS & router.methods())
        self.name = name
        self._listener = _bind(host, port)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._family = self._listener.family
        try:
            self._poller = Poller()
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._listener.close()
            if hasattr(self, "_poller"):
                self._poller.close()
            raise
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        # fd -> what it is: the listening socket, the wake-up socket or a
        # connection.
        self._fds: dict[int, object] = {
            self._listener.fileno(): _LISTENER,
            self._wake_r.fileno(): _WAKER,
        }
        for fd in self._fds:
            self._poller.register(fd, IN)
        self._conns: set[Conn] = set()
        # Insertion-ordered: the first is the oldest (the next to evict).
        self._reading: dict[Conn, None] = {}
        self._lingering: dict[Conn, None] = {}
        # (deadline, connection) in the order they were set, one queue per
        # delay (the head and response deadline, the linger), so each is
        # sorted; entries of a connection that has moved on (another
        # deadline) or closed are dropped when they reach the front.
        linger = min(LINGER_S, read_timeout)
        self._deadlines = Deadlines((read_timeout, linger, linger), (0.0, 0.0, _LINGER_STEP))
        self._jobs: queue.SimpleQueue[Optional[tuple[Conn, Request]]] = queue.SimpleQueue()
        self._done: deque[tuple[Conn, bytes]] = deque()
        # (path, method, accept-encoding) -> (response, its bytes).
        self._encoded: dict[tuple[str, str, Optional[str]], tuple[Response, bytes]] = {}
        self._stopping = False
        self._threads = [threading.Thread(target=self._serve, name=name, daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; the port is closed when this returns."""
        self._stopping = True
        for _ in self._threads[1:]:
            self._jobs.put(None)
        io = self._threads[0]
        if io.ident is None:  # never started
            self._close_all()
            return
        self._wake()
        for t in self._threads:
            t.join(timeout)

    def abandon(self) -> None:
        """In a forked child, where the threads do not exist: close the
        inherited descriptors. The selector's interest list is shared with
        the parent (an epoll instance survives fork), so nothing is
        unregistered from it: that would stop the parent's server."""
        self._stopping = True
        for conn in self._conns:
            conn.sock.close()
        self._conns.clear()
        for closable in (self._poller, self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                closable.close()

    # --- the I/O thread -------------------------------------------------

    def _serve(self) -> None:
        fds = self._fds
        poll = self._poller.poll
        try:
            while not self._stopping:
                now = time.monotonic()
                nxt = self._expire(now)
                try:
                    ready = poll(-1 if nxt is None else max(0.0, nxt - now))
                except InterruptedError:
                    continue
                for fd, _ in ready:
                    what = fds.get(fd)
                    if what is _LISTENER:
                        self._accept()
                    elif what is _WAKER:
                        self._finish_handled()
                    elif isinstance(what, Conn):
                        try:
                            self._on_ready(what)
                        except Exception as exc:  # a bug costs one connection
                            _diag.internal_error(f"{self.name}.connection", exc)
                            self._close(what)
        except Exception as exc:  # a bug here must not go unnoticed or spin
            _diag.internal_error(f"{self.name}.serve", exc)
        finally:
            self._close_all()

    def _accept(self) -> None:
        """One connection (the listening socket stays ready while more wait:
        a burst is accepted one per turn of the loop, between the others)."""
        try:
            # The descriptor (what socket.accept wraps): no family lookups.
            fd, _ = self._listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: count, back off
            _diag.internal_error(f"{self.name}.accept", exc)
            time.sleep(0.01)
            return
        # The plain socket type: no Python-level wrapper to run per probe.
        sock = socket.SocketType(self._family, socket.SOCK_STREAM, 0, fd)
        sock.setblocking(False)
        if len(self._conns) >= self.max_connections and not self._make_room():
            self._refuse(sock)
            return
        conn = Conn(sock)
        self._conns.add(conn)
        self._reading[conn] = None
        self._deadlines.set(conn, _IO)
        # The request usually follows the connection at once: read it now,
        # and watch the connection only when it has not arrived.
        try:
            self._on_ready(conn)
            if conn.phase == READ and conn in self._conns:
                self._watch(conn, IN)
        except Exception as exc:  # a bug costs one connection
            _diag.internal_error(f"{self.name}.connection", exc)
            self._close(conn)

    def _make_room(self) -> bool:
        """Close the oldest lingering connection, else the oldest one still
        sending its head; False if every connection is busy."""
        if self._lingering:
            self._close(next(iter(self._lingering)))
            return True
        if self._reading:
            oldest = next(iter(self._reading))
            self._send_now(oldest.sock, _BUSY)
            self._close(oldest)
            return True
        return False

    def _refuse(self, sock: socket.SocketType) -> None:
        with contextlib.suppress(OSError):
            sock.recv(RECV)  # what has arrived, so that the close is not a reset
        self._send_now(sock, _BUSY)
        sock.close()

    @staticmethod
    def _send_now(sock: socket.SocketType, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.send(data)

    def _on_ready(self, conn: Conn) -> None:
        if conn.phase == WRITE:
            self._write(conn)
            return
        try:
            data = conn.sock.recv(self._framer.want(conn))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
        elif conn.phase == READ:
            self._read(conn, data)
        # LINGER: discard.

    def _read(self, conn: Conn, data: bytes) -> None:
        got = self._framer.feed(conn, data)
        if isinstance(got, bytes):
            self._respond(conn, got)
        elif got is not None:
            self._handle(conn, got)

    def _handle(self, conn: Conn, request: Request) -> None:
        conn.request, conn.need, conn.buf = None, 0, bytearray()
        # An inline route, or a quick answer (a rendering still fresh): O(1),
        # answered here, never queued.
        try:
            now = self.router.answer_now(request)
            data = None if now is None else self._encode_reused(request, now)
        except Exception as exc:
            _diag.internal_error(f"{self.name}.encode", exc)
            data = encode(None, text_response(500, "internal error\n"))
        if data is not None:
            self._respond(conn, data)
            return
        self._reading.pop(conn, None)
        self._unwatch(conn)
        conn.phase = HANDLE
        conn.deadline = float("inf")
        self._jobs.put((conn, request))

    def _finish_handled(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while self._done:
            conn, data = self._done.popleft()
            if conn in self._conns:
                try:
                    self._respond(conn, data)
                except Exception as exc:  # a bug costs one connection
                    _diag.internal_error(f"{self.name}.connection", exc)
                    self._close(conn)

    def _encode_reused(self, request: Request, response: Response) -> bytes:
        """``encode(request, response)``, once for a rendering reused (the
        same response to the same kind of request: method, accepted
        encodings)."""
        key = (request.path, request.method, request.headers.get("accept-encoding"))
        memo = self._encoded.get(key)
        if memo is not None and memo[0] is response:
            return memo[1]
        data = encode(request, response)
        if len(self._encoded) >= 64:  # bounded whatever clients send
            self._encoded.clear()
        self._encoded[key] = (response, data)
        return data

    def _respond(self, conn: Conn, data: bytes) -> None:
        self._reading.pop(conn, None)
        conn.phase = WRITE
        conn.out = memoryview(data)
        self._write(conn)

    def _write(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[n:]
        if conn.out:
            if conn.events != OUT:  # the client must take it within the deadline
                self._deadlines.set(conn, _IO)
                self._watch(conn, OUT)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.phase = LINGER
        self._lingering[conn] = None
        if conn.complete:
            # Nothing more is coming: no need to read the client's close;
            # the connection is closed with others at the linger's end.
            self._deadlines.set(conn, _DONE)
            self._unwatch(conn)
        else:  # read and discard what the client still sends
            self._deadlines.set(conn, _LINGERING)
            self._watch(conn, IN)

    def _expire(self, now: float) -> Optional[float]:
        """Close the connections past their deadline; returns the next
        deadline (None: none)."""
        expired, nxt = self._deadlines.due(now, self._conns)
        for conn in expired:
            if conn.phase == READ:
                self._send_now(conn.sock, _TIMEOUT)
            self._close(conn)
        return nxt

    def _watch(self, conn: Conn, events: int) -> None:
        if conn.events == 0:
            self._poller.register(conn.fd, events)
            self._fds[conn.fd] = conn
        elif conn.events != events:
            self._poller.modify(conn.fd, events)
        conn.events = events

    def _unwatch(self, conn: Conn) -> None:
        if conn.events:
            conn.events = 0
            self._fds.pop(conn.fd, None)
            self._poller.unregister(conn.fd)

    def _close(self, conn: Conn) -> None:
        self._conns.discard(conn)
        self._reading.pop(conn, None)
        self._lingering.pop(conn, None)
        try:
            self._unwatch(conn)
        except (KeyError, ValueError, OSError):  # already gone from the poller
            conn.events = 0
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        self._deadlines.clear()
        for closable in (self._poller, self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                closable.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the worker threads ---------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping:
                return
            conn, request = job
            self._done.append((conn, self._render(request)))
            self._wake()

    def _render(self, request: Request) -> bytes:
        try:
            return encode(request, self.router.handle(request))
        except Exception as exc:
            _diag.internal_error(f"{self.name}.encode", exc)
            return encode(None, text_response(500, "internal error\n"))


_BUSY = encode(None, text_response(503, "server busy, retry later\n", ("Retry-After", "1")))
_TIMEOUT = encode(None, text_response(408, "request not received in time\n"))
