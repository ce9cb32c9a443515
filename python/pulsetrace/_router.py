"""Requests, responses and routes of pulsetrace's own HTTP endpoints,
independent of how they are served.

A handler takes a ``Request`` and returns a ``Response`` (or a plain
``(status, headers, body)`` tuple); a ``Router`` maps a method and a path
(exact, or a pattern with ``{name}`` segments: ``/apm/traces/{id}``) to a
handler. ``pulsetrace._server`` serves a router over HTTP/1.1; the same
router can be mounted in a WSGI or ASGI application. Handlers run
pulsetrace's own work: nothing they are given (a ``Request``, not a WSGI
environ or an ASGI scope) is seen by pulsetrace's hooks.

A handler rejects bad input by raising :class:`HttpError`: the router
answers it with a JSON error (``{"error": "...", "status": 400}``), as it
answers an unknown path (404), a method the path does not serve (405, with
``Allow``) and a failing handler (500, counted as an internal error).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Optional, Union
from urllib.parse import parse_qs, unquote

from pulsetrace import _diag

_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class HttpError(Exception):
    """Raised by a handler: the client gets ``status`` and a JSON error
    naming the problem."""

    def __init__(self, status: int, message: str, *headers: tuple[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Request(NamedTuple):
    """A parsed request. ``headers`` has lower-case names (repeated headers
    joined with ``", "``); ``path`` excludes the query string; ``body`` is
    the request body (bounded by the server); ``params`` holds the values
    of a route pattern's ``{name}`` segments."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""
    params: Mapping[str, str] = _NO_PARAMS

    def query_params(self) -> dict[str, str]:
        """The query string's parameters (the last value of a repeated one);
        400 if it is malformed."""
        try:
            parsed = parse_qs(self.query, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise HttpError(400, f"malformed query string: {exc}") from None
        return {k: v[-1] for k, v in parsed.items()}

    def json(self) -> Any:
        """The body as JSON (an empty body is ``None``); 400 naming the
        problem when it is not JSON, 415 when it is declared as another type."""
        if not self.body:
            return None
        ctype = self.headers.get("content-type", "application/json").split(";")[0].strip()
        if ctype.lower() not in ("application/json", ""):
            raise HttpError(415, f"the body must be application/json, not {ctype[:60]!r}")
        try:
            return json.loads(self.body.decode("utf-8"))
        except UnicodeDecodeError:
            raise HttpError(400, "the body is not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise HttpError(
                400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise HttpError(400, "malformed JSON body: nested too deeply") from None


class Response(NamedTuple):
    """What a handler returns: a plain ``(status, headers, body)`` tuple
    works as well. The server adds ``Content-Length`` and ``Connection``."""

    status: int
    headers: Iterable[tuple[str, str]]
    body: bytes


Handler = Callable[[Request], Union[Response, tuple[int, Iterable[tuple[str, str]], bytes]]]
#: Answers a request from what is already computed (O(1), never waiting),
#: or returns None when the handler has to run.
Quick = Callable[[Request], Optional[Response]]


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


class Router:
    """Methods and paths to handlers. A GET route serves HEAD too."""

    def __init__(self) -> None:
        # path -> method -> handler (exact paths, then patterns in order).
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[str, tuple[str, ...], dict[str, Handler]]] = []
        self._inline: set[tuple[str, str]] = set()
        # (method, exact path) -> the route's quick answer.
        self._quick: dict[tuple[str, str], Quick] = {}

    def add(
        self,
        path: str,
        handler: Handler,
        method: str = "GET",
        inline: bool = False,
        quick: Optional[Quick] = None,
    ) -> None:
        """Route ``method`` on ``path`` (starting with ``/``; a segment
        ``{name}`` matches any one segment) to ``handler``. An ``inline``
        handler (an exact path; O(1), never waiting on anything) is run
        by the server as soon as the request is read, not queued behind
        the handlers that may wait (a liveness probe behind readiness
        probes waiting for a hung database). ``quick`` (an exact path):
        answers from what is already computed, O(1) and never waiting
        (a rendering still fresh), or returns None; the server asks it
        as soon as the request is read and queues the request for
        ``handler`` only when it has no answer."""
        if not path.startswith("/"):
            raise ValueError(f"a route's path starts with '/', not {path!r}")
        if (inline or quick is not None) and "{" in path:
            raise ValueError(f"an inline or quick route has an exact path, not {path!r}")
        method = method.upper()
        if "{" in path:
            found = [ms for pattern, _, ms in self._patterns if pattern == path]
            methods = found[0] if found else {}
            if not found:
                self._patterns.append((path, _split(path), methods))
        else:
            methods = self._exact.setdefault(path, {})
        if method in methods:
            raise ValueError(f"the path {path!r} is already routed for {method}")
        methods[method] = handler
        if inline:
            self._inline.add((method, path))
        if quick is not None:
            self._quick[(method, path)] = quick

    def answer_now(self, request: Request) -> Optional[Response]:
        """The response the server sends without queueing the request: an
        inline route's, or a quick answer; None when the request goes to
        the handlers. A quick answer that fails counts as an internal
        error and the handler answers instead."""
        method = "GET" if request.method == "HEAD" else request.method
        key = (method, request.path)
        quick = self._quick.get(key)
        found = None
        if quick is not None:
            try:
                found = quick(request)
            except HttpError as err:
                return json_error(err.status, err.message, *err.headers)
            except Exception as exc:
                _diag.internal_error(f"server.quick{request.path[:100]}", exc)
        if found is None and key in self._inline:
            return self.handle(request)
        return found

    def paths(self) -> list[str]:
        return list(self._exact) + [p for p, _, _ in self._patterns]

    def methods(self) -> set[str]:
        """Every method some route serves (HEAD with GET)."""
        out = {m for ms in self._exact.values() for m in ms}
        out |= {m for _, _, ms in self._patterns for m in ms}
        if "GET" in out:
            out.add("HEAD")
        return out

    def match(self, path: str) -> Optional[tuple[dict[str, Handler], Mapping[str, str]]]:
        """The handlers by method of ``path`` and its pattern's values
        (percent-decoded)."""
        methods = self._exact.get(path)
        if methods is not None:
            return methods, _NO_PARAMS
        parts = _split(path)
        for _, segments, methods in self._patterns:
            if len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for seg, part in zip(segments, parts):
                if seg.startswith("{") and seg.endswith("}"):
                    if not part:
                        break
                    params[seg[1:-1]] = unquote(part)
                elif seg != part:
                    break
            else:
                return methods, MappingProxyType(params)
        return None

    def handle(self, request: Request) -> Response:
        """The handler's response; a JSON error for an unknown path (404), a
        method the path does not serve (405), an :class:`HttpError`, and
        (500, counted as an internal error) a failing handler or one that
        returns something else."""
        found = self.match(request.path)
        if found is None:
            return json_error(404, f"no route for {request.path[:200]}")
        methods, params = found
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allow = sorted(methods) + (["HEAD"] if "GET" in methods else [])
            allowed = ", ".join(allow)
            return json_error(405, f"method {request.method} not allowed", ("Allow", allowed))
        if params:
            request = request._replace(params=params)
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
        except HttpError as err:
            return json_error(err.status, err.message, *err.headers)
        except Exception as exc:
            _diag.internal_error(f"server{request.path[:100]}", exc)
            return json_error(500, "internal error")


def text_response(status: int, text: str, *headers: tuple[str, str]) -> Response:
    """A plain-text response (an error's explanation)."""
    content_type = ("Content-Type", "text/plain; charset=utf-8")
    return Response(status, [content_type, *headers], text.encode())


def json_response(status: int, value: Any, *headers: tuple[str, str]) -> Response:
    """A JSON response (non-finite numbers become ``null``; every string
    scrubbed: operation names and messages can carry personal data)."""
    from pulsetrace.scrub import scrub_json

    body = json.dumps(scrub_json(_finite(value)), separators=(",", ":"), default=str).encode()
    return Response(status, [("Content-Type", "application/json"), *headers], body)


def json_error(status: int, message: str, *headers: tuple[str, str]) -> Response:
    """``{"error": message, "status": status}``."""
    return json_response(status, {"error": message, "status": status}, *headers)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
