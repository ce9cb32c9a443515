"""The I/O thread's bookkeeping in ``pulsetrace._server``: its
connections, the poller that watches their descriptors, and their
deadlines."""

from __future__ import annotations

import math
import select
import socket
import time
from collections import deque
from collections.abc import Container
from typing import Any, Callable, Optional

from pulsetrace._router import Request

#: Poll events (the same bits for ``epoll`` and ``poll``).
IN, OUT = select.POLLIN, select.POLLOUT


class Poller:
    """The descriptors watched: ``epoll`` where the system has it,
    ``poll`` elsewhere (plain calls: no selector objects per event)."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._p: Any = select.epoll() if self._epoll else select.poll()
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister
        #: ``(fd, events)`` ready within a timeout in seconds (-1: no limit).
        self.poll: Callable[[float], list[tuple[int, int]]] = (
            self._p.poll if self._epoll else self._poll_ms
        )

    def _poll_ms(self, timeout: float) -> list[tuple[int, int]]:
        return self._p.poll(None if timeout < 0 else timeout * 1000)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._epoll:
            self._p.close()


class Deadlines:
    """Connections' deadlines (a connection has a ``deadline`` attribute),
    one queue per kind of deadline (``delays[which]`` seconds from when it
    is set, rounded up to a multiple of ``steps[which]`` when not 0, so
    that those come due together). Each queue holds its deadlines in the
    order they were set, hence sorted: no heap. An entry whose connection
    has moved on (another deadline) or is gone is dropped when it reaches
    the front, so it never causes a wake-up."""

    def __init__(self, delays: tuple[float, ...], steps: tuple[float, ...]) -> None:
        self._delays = delays
        self._steps = steps
        self._queues: tuple[deque[tuple[float, Any]], ...] = tuple(deque() for _ in delays)

    def set(self, conn: Any, which: int) -> None:
        deadline = time.monotonic() + self._delays[which]
        step = self._steps[which]
        if step:
            deadline = math.ceil(deadline / step) * step
        conn.deadline = deadline
        self._queues[which].append((deadline, conn))

    def due(self, now: float, alive: Container[Any]) -> tuple[list[Any], Optional[float]]:
        """The connections in ``alive`` past their deadline (taken off), and
        the next deadline (None: none)."""
        expired: list[Any] = []
        nxt: Optional[float] = None
        for queue in self._queues:
            while queue:
                deadline, conn = queue[0]
                if conn not in alive or conn.deadline != deadline:
                    queue.popleft()  # gone, or moved on to a later deadline
                elif deadline <= now:
                    queue.popleft()
                    expired.append(conn)
                else:
                    if nxt is None or deadline < nxt:
                        nxt = deadline
                    break
        return expired, nxt

    def clear(self) -> None:
        for queue in self._queues:
            queue.clear()


# Connection phases.
READ, HANDLE, WRITE, LINGER = range(4)


class Conn:
    """One client connection of the server."""

    __slots__ = (
        "buf",
        "complete",
        "deadline",
        "events",
        "fd",
        "need",
        "out",
        "phase",
        "request",
        "sock",
    )

    def __init__(self, sock: socket.SocketType) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.phase = READ
        self.deadline = _NEVER
        self.events = 0
        self.out = _NOTHING
        # While a body is read: the request (its head) and the body's length.
        self.request: Optional[Request] = None
        self.need = 0
        # The request was read to its end and the client sent nothing more.
        self.complete = False


_NEVER = float("inf")
_NOTHING = memoryview(b"")
