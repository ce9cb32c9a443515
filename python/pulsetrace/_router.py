"""Requests, responses and routes of pulsetrace's own HTTP endpoints,
independent of how they are served.

A handler takes a ``Request`` and returns a ``Response`` (or a plain
``(status, headers, body)`` tuple); a ``Router`` maps exact paths to
handlers. ``pulsetrace._server`` serves a router over HTTP/1.1; the same
router can be mounted in a WSGI or ASGI application. Handlers run
pulsetrace's own work: nothing they are given (a ``Request``, not a WSGI
environ or an ASGI scope) is seen by pulsetrace's hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Callable, NamedTuple, Union

from pulsetrace import _diag


class Request(NamedTuple):
    """A parsed request head. ``headers`` has lower-case names (repeated
    headers joined with ``", "``); ``path`` excludes the query string."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


class Response(NamedTuple):
    """What a handler returns: a plain ``(status, headers, body)`` tuple
    works as well. The server adds ``Content-Length`` and ``Connection``."""

    status: int
    headers: Iterable[tuple[str, str]]
    body: bytes


Handler = Callable[[Request], Union[Response, tuple[int, Iterable[tuple[str, str]], bytes]]]


class Router:
    """Exact paths to handlers."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}

    def add(self, path: str, handler: Handler) -> None:
        """Route ``path`` (exact, starting with ``/``) to ``handler``."""
        if not path.startswith("/"):
            raise ValueError(f"a route's path starts with '/', not {path!r}")
        if path in self._routes:
            raise ValueError(f"the path {path!r} is already routed")
        self._routes[path] = handler

    def paths(self) -> list[str]:
        return list(self._routes)

    def handle(self, request: Request) -> Response:
        """The handler's response, 404 for an unknown path, 500 (counted as
        an internal error) if the handler fails or returns something else."""
        handler = self._routes.get(request.path)
        if handler is None:
            return text_response(404, f"no route for {request.path}\n")
        try:
            status, headers, body = handler(request)
            headers = [(str(k), str(v)) for k, v in headers]
            if any(c in k + v for k, v in headers for c in "\r\n"):
                raise ValueError(f"a header with a line break: {headers!r:.100}")
            if not isinstance(body, bytes) or not 100 <= int(status) < 600:
                raise TypeError(
                    "a handler returns (status 100-599, headers, bytes), "
                    f"not ({status!r}, ..., {type(body).__name__})"
                )
            return Response(int(status), headers, body)
        except Exception as exc:
            _diag.internal_error(f"server{request.path}", exc)
            return text_response(500, "internal error\n")


def text_response(status: int, text: str, *headers: tuple[str, str]) -> Response:
    """A plain-text response (an error's explanation)."""
    content_type = ("Content-Type", "text/plain; charset=utf-8")
    return Response(status, [content_type, *headers], text.encode())
