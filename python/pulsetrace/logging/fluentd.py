"""Log lines to Fluentd or Fluent Bit over the Forward protocol.

With ``PULSETRACE_LOGS_FLUENTD_ADDR=host:port`` (or
``configure(fluentd="host:port")``) each log record is sent to that
``forward`` input as a map with the JSON line's fields, tagged
``PULSETRACE_LOGS_FLUENTD_TAG`` (default ``app``), instead of being written
to stdout.

The application never waits for the collector: a record is encoded (on the
thread that logs it) and put on a bounded queue of
``PULSETRACE_LOGS_QUEUE_SIZE`` records; one sender thread connects, sends
the queued records in Forward mode (``[tag, [[time, record], ...]]``, time
as the protocol's EventTime) and reconnects after an error. A record that
finds the queue full, or that was being sent when the connection failed, is
dropped and counted (``logs_dropped`` in :func:`pulsetrace.counters`); the
first drop is said once on stderr. Delivery is at most once: no
acknowledgements are requested.

The encoder is a small MessagePack writer of the types a log record holds
(no dependency).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
import weakref
from typing import Any, Optional

from pulsetrace import _diag

__all__ = ["ForwardSender", "pack"]


def _pack_into(out: bytearray, v: Any, depth: int = 0) -> None:
    """Append MessagePack of ``v``; what MessagePack cannot hold becomes its
    ``repr`` (and anything nested more than 32 deep, a placeholder)."""
    if depth > 32:
        v = "<too deep>"
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        if 0 <= v < 0x80:
            out.append(v)
        elif -32 <= v < 0:
            out.append(v & 0xFF)
        elif 0 <= v <= 0xFFFF_FFFF_FFFF_FFFF:
            out += b"\xcf" + v.to_bytes(8, "big")
        elif -(2**63) <= v < 0:
            out += b"\xd3" + v.to_bytes(8, "big", signed=True)
        else:
            _pack_into(out, str(v), depth)
    elif isinstance(v, float):
        out += b"\xcb" + struct.pack(">d", v)
    elif isinstance(v, str):
        data = v.encode("utf-8", "replace")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += b"\xd9" + bytes((n,))
        elif n < 0x10000:
            out += b"\xda" + n.to_bytes(2, "big")
        else:
            out += b"\xdb" + n.to_bytes(4, "big")
        out += data
    elif isinstance(v, (bytes, bytearray)):
        n = len(v)
        out += b"\xc6" + n.to_bytes(4, "big") + bytes(v)
    elif isinstance(v, dict):
        n = len(v)
        out += bytes((0x80 | n,)) if n < 16 else b"\xdf" + n.to_bytes(4, "big")
        for k, item in v.items():
            _pack_into(out, k if isinstance(k, str) else repr(k), depth + 1)
            _pack_into(out, item, depth + 1)
    elif isinstance(v, (list, tuple)):
        n = len(v)
        out += bytes((0x90 | n,)) if n < 16 else b"\xdd" + n.to_bytes(4, "big")
        for item in v:
            _pack_into(out, item, depth + 1)
    else:
        try:
            text = repr(v)
        except Exception:
            text = f"<unrepresentable {type(v).__name__}>"
        _pack_into(out, text, depth)


def pack(v: Any) -> bytes:
    """MessagePack of ``v`` (see :func:`_pack_into`)."""
    out = bytearray()
    _pack_into(out, v)
    return bytes(out)


def event_time(t: float) -> bytes:
    """The Forward protocol's EventTime: ext type 0, seconds and nanoseconds."""
    sec = int(t)
    return b"\xd7\x00" + struct.pack(">II", sec & 0xFFFF_FFFF, int((t - sec) * 1e9))


def _array_header(n: int) -> bytes:
    return bytes((0x90 | n,)) if n < 16 else b"\xdd" + n.to_bytes(4, "big")


class ForwardSender:
    """The bounded queue and the sender thread (see the module docstring)."""

    def __init__(
        self,
        addr: str,
        tag: str,
        queue_size: int = 10_000,
        *,
        timeout: float = 2.0,
        batch: int = 256,
    ) -> None:
        host, _, port = addr.rpartition(":")
        self.address = (host.strip("[]"), int(port))
        self.tag = pack(tag)
        self.timeout = timeout
        self.batch = batch
        self.queue_size = queue_size
        self._start()
        _senders.add(self)

    def _start(self) -> None:
        """A new queue, counters and sender thread (also in a forked child,
        where the parent's thread does not exist)."""
        inherited = getattr(self, "_sock", None)
        if inherited is not None:  # the parent's connection: its copy here
            inherited.close()
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(maxsize=self.queue_size)
        self._dropped = 0
        self._sent = 0
        self._said = False
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pulsetrace-fluentd", daemon=True)
        self._thread.start()

    def submit(self, created: float, line: str) -> None:
        """Queue one record (its JSON line's fields); never blocks."""
        try:
            entry = b"\x92" + event_time(created) + pack(json.loads(line))
        except Exception as exc:
            _diag.internal_error("logging.fluentd.encode", exc)
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop(1)

    def _drop(self, n: int) -> None:
        with self._lock:
            self._dropped += n
            first = not self._said
            self._said = True
        if first:
            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f"pulsetrace: log records to Fluentd at {self.address[0]}:{self.address[1]} "
                    "are being dropped (collector unreachable or too slow); further drops are "
                    "only counted (logs_dropped)\n"
                )

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"logs_dropped": self._dropped, "logs_sent": self._sent}

    def _connect(self) -> Optional[socket.socket]:
        try:
            sock = socket.create_connection(self.address, timeout=self.timeout)
            sock.settimeout(self.timeout)
            return sock
        except OSError:
            return None

    def _run(self) -> None:
        backoff = 0.1
        while True:
            first = self._queue.get()
            if first is None:
                return
            entries = [first]
            stop = False
            while len(entries) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                entries.append(item)
            if self._send(entries):
                backoff = 0.1
            else:
                self._drop(len(entries))
                if not stop and not self._stopping:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            if stop:
                return

    def _send(self, entries: list[bytes]) -> bool:
        message = b"\x92" + self.tag + _array_header(len(entries)) + b"".join(entries)
        for _ in (0, 1):  # a connection the collector closed: one retry on a new one
            if self._sock is None:
                self._sock = self._connect()
                if self._sock is None:
                    return False
            try:
                self._sock.sendall(message)
                with self._lock:
                    self._sent += len(entries)
                return True
            except OSError:
                self._sock.close()
                self._sock = None
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        _senders.discard(self)
        self._stopping = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_senders: weakref.WeakSet[ForwardSender] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Each pre-fork worker (gunicorn) sends its own records: a fresh queue
    and thread per sender (what the parent had queued is the parent's)."""
    for sender in list(_senders):
        try:
            sender._start()
        except Exception as exc:
            _diag.internal_error("logging.fluentd.fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
