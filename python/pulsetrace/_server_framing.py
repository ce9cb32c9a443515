"""Reading one request off a connection of ``pulsetrace._server``: its
head (bounded, up to the blank line), then, for the methods that take one,
its body (bounded, by ``Content-Length``). What arrives is fed in as it
comes; the result is a complete ``Request``, the error response to send
instead (431, 413, 411, 400), or nothing yet. No I/O and no threads: the
server's I/O thread calls it, and it only touches the connection's
buffers."""

from __future__ import annotations

from typing import Union

from pulsetrace._router import Request, Response, json_error, text_response
from pulsetrace._server_io import LINGER, Conn
from pulsetrace._wire import BadRequest, encode, parse_head

#: Requests whose head is larger than this get 431.
MAX_HEAD_BYTES = 8192
#: Requests whose body is larger than this get 413.
MAX_BODY_BYTES = 65536
#: The methods whose body is read (when a route takes the method).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: The most read from a socket at once.
RECV = 65536


class Framer:
    """The request framing of one server: its bounds, and the methods whose
    body is read (others are answered without reading one)."""

    __slots__ = ("body_methods", "max_body_bytes", "max_head_bytes")

    def __init__(self, max_head_bytes: int, max_body_bytes: int, body_methods: frozenset[str]):
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.body_methods = body_methods

    def want(self, conn: Conn) -> int:
        """How much to read next: a head no further than its limit (and its
        blank line), a body no further than its length; anything while
        lingering (it is discarded)."""
        if conn.phase == LINGER:
            return RECV
        if conn.request is not None:
            return max(1, min(RECV, conn.need - len(conn.buf)))
        return self.max_head_bytes + 4 - len(conn.buf)

    def feed(self, conn: Conn, data: bytes) -> Union[None, Request, bytes]:
        """Take ``data``, just read from ``conn``: the complete request (with
        ``conn.complete`` set: nothing more was sent), the encoded error
        response to send, or None when more is needed."""
        if conn.request is not None:
            conn.buf += data
            if len(conn.buf) < conn.need:
                return None
            conn.complete = len(conn.buf) == conn.need
            return conn.request._replace(body=bytes(conn.buf[: conn.need]))
        start = max(0, len(conn.buf) - 3)
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n", start)
        if end < 0:
            end = conn.buf.find(b"\n\n", max(0, start - 1))
        if end < 0:
            return too_large(self.max_head_bytes) if len(conn.buf) > self.max_head_bytes else None
        if end > self.max_head_bytes:
            return too_large(self.max_head_bytes)
        head = bytes(conn.buf[:end])
        rest = conn.buf[end + (4 if conn.buf[end : end + 4] == b"\r\n\r\n" else 2) :]
        conn.buf = bytearray()
        try:
            request = parse_head(head)
        except BadRequest as bad:
            return encode(None, bad.response)
        except Exception:  # undecodable beyond repair
            return encode(None, text_response(400, "bad request\n"))
        if request.method in self.body_methods:
            need = self.body_length(request)
            if isinstance(need, Response):
                return encode(request, need)
            if need > len(rest):
                conn.request, conn.need, conn.buf = request, need, bytearray(rest)
                return None
            conn.complete = len(rest) == need
            return request._replace(body=bytes(rest[:need]))
        # A body (unread) or more bytes: not complete.
        headers = request.headers
        conn.complete = (
            not rest
            and "transfer-encoding" not in headers
            and headers.get("content-length", "0").strip() in ("", "0")
        )
        return request

    def body_length(self, request: Request) -> Union[int, Response]:
        """The declared length of the request's body, or the error response."""
        if "transfer-encoding" in request.headers:
            return json_error(411, "a request body needs Content-Length (chunked is not accepted)")
        raw = request.headers.get("content-length", "0").strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            return json_error(400, f"bad Content-Length: {raw[:30]!r}")
        need = int(raw)
        if need > self.max_body_bytes:
            return json_error(413, f"request body larger than {self.max_body_bytes} bytes")
        return need


def too_large(limit: int) -> bytes:
    return encode(None, text_response(431, f"request head larger than {limit} bytes\n"))
