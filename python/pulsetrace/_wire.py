"""HTTP/1.1 on the wire for pulsetrace's server: a request head parsed
into a ``Request``, a ``Response`` encoded into bytes (gzip when the client
accepts it and the body is large enough)."""

from __future__ import annotations

import zlib
from http import HTTPStatus
from typing import Optional

from pulsetrace._router import Request, Response, text_response

#: Bodies at least this large are gzip-compressed for clients that accept it.
GZIP_MIN_BYTES = 1024
#: Status code -> reason phrase (a dict: no enum lookup per response).
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def encode(request: Optional[Request], response: Response) -> bytes:
    """The bytes of ``response`` on the wire (no body for HEAD), gzip-encoded
    when the client accepts it and the body is large enough."""
    status, headers, body = response
    headers = list(headers)
    if (
        request is not None
        and len(body) >= GZIP_MIN_BYTES
        and all(k.lower() != "content-encoding" for k, _ in headers)
    ):
        headers.append(("Vary", "Accept-Encoding"))
        if _accepts_gzip(request.headers.get("accept-encoding", "")):
            # Level 1: a fraction of the rendering's cost; zlib releases the
            # GIL while it compresses. (wbits 31: a gzip stream.)
            gz = zlib.compressobj(1, zlib.DEFLATED, 31)
            body = gz.compress(body) + gz.flush()
            headers.append(("Content-Encoding", "gzip"))
    reason = _REASONS.get(status, "")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    if request is not None and request.method == "HEAD":
        return head
    return head + body


class BadRequest(Exception):
    def __init__(self, status: int, message: str, *headers: tuple[str, str]) -> None:
        super().__init__(message)
        self.response = text_response(status, message + "\n", *headers)


def parse_head(head: bytes) -> Request:
    """The request in ``head`` (without its blank line), or BadRequest."""
    text = head.decode("latin-1")
    line, *header_lines = text.replace("\r\n", "\n").split("\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line: {line[:100]!r}")
    method, target, _ = parts
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise BadRequest(400, f"bad method: {method[:20]!r}")
    if target.startswith(("http://", "https://")):
        slash = target.find("/", target.index("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    if not target.startswith("/"):
        raise BadRequest(400, f"bad request target: {target[:100]!r}")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for h in header_lines:
        name, sep, value = h.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line: {h[:100]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(method, path, query, headers)
