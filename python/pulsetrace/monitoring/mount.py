"""The monitoring endpoints mounted in the application, under a prefix: one
line each, for applications that expose one port (a container behind a
load balancer) rather than pulsetrace's own server.

    # any WSGI app (Flask: werkzeug's DispatcherMiddleware)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_pulsetrace": wsgi_app()})
    # Flask
    mount_flask(app)                  # or app.register_blueprint(flask_blueprint())
    # Django (urls.py)
    urlpatterns += django_urls()
    # FastAPI / Starlette
    app.mount("/_pulsetrace", asgi_app())

Each helper takes ``prefix`` (default ``/_pulsetrace``): where the endpoints
are served (for ``wsgi_app`` and ``asgi_app``, pass the prefix you mount
them at). The routes are the monitoring server's, from the same endpoint
table (``/health``, ``/health/live``, ``/apm/transactions``,
``/openapi.json``, ...), behind the same access rules, with one
difference: a mount is reachable from wherever the application is, so a
request is treated as coming from beyond loopback (every endpoint but
``/health/live`` and ``/health/ready`` needs
``Authorization: Bearer <PULSETRACE_MONITORING_TOKEN>``) unless its remote
address is a loopback address. Mutating endpoints always need the token.

Requests under the prefix are excluded from tracing (no span, no histogram
count, no access-log line: ``pulsetrace._native.http_exclude_prefix``) as
soon as a helper is called; the handlers run under pulsetrace's
suppression context. The first helper called registers the health checks
the configuration names and keeps the recent traces for ``/apm/traces``,
as starting the monitoring server does. A request body is read up to
64 KiB (413 beyond, 411 without ``Content-Length``).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._native import http_exclude_prefix
from pulsetrace._router import Request, Response, Router, json_error
from pulsetrace._server_framing import BODY_METHODS, MAX_BODY_BYTES

DEFAULT_PREFIX = "/_pulsetrace"

_lock = threading.Lock()
# (token, loopback router, beyond-loopback router), built on first use and
# again when the configured token changes.
_routers: Optional[tuple[Optional[str], Router, Router]] = None
_started = False


def _prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/") or "//" in prefix:
        raise ValueError(f"a mount prefix is a path starting with '/', not {prefix!r}")
    return prefix.rstrip("/")


def _start(prefix: str) -> None:
    """Exclude ``prefix`` from tracing; once per process, what the
    monitoring server starts (health checks, the traces' ring)."""
    global _started
    if prefix:
        http_exclude_prefix(prefix)
    with _lock:
        if _started:
            return
        _started = True
    try:
        from pulsetrace import prometheus
        from pulsetrace.monitoring import apm

        prometheus._register_checks()
        apm.install()
    except Exception as exc:
        _diag.internal_error("mount.start", exc)


def _router(remote: Optional[str]) -> Router:
    """The routes for a request from ``remote``: those of a loopback server
    when the address is a loopback one, else those of a server reachable
    from anywhere."""
    global _routers
    from pulsetrace.monitoring import endpoints
    from pulsetrace.monitoring.access import is_loopback

    token = _runtime.config().monitoring_token
    routers = _routers
    if routers is None or routers[0] != token:
        built = []
        for host in ("127.0.0.1", "0.0.0.0"):
            r = Router()
            endpoints.add_routes(r, host, token)
            built.append(r)
        routers = _routers = (token, built[0], built[1])
    return routers[1] if remote and is_loopback(remote) else routers[2]


def _slash(method: str, mount: str) -> Optional[Response]:
    """At the prefix itself (no trailing slash), a GET or HEAD is sent on to
    ``prefix/``: the live page loads its script and data by relative URLs,
    which resolve under the prefix only from there. ``mount``: the path the
    request reached the mount at (its last segment makes the relative
    ``Location``, right behind any proxy or outer prefix)."""
    if method not in ("GET", "HEAD"):
        return None
    name = mount.rstrip("/").rsplit("/", 1)[-1]
    return Response(308, [("Location", f"{name}/" if name else "/")], b"")


def handle(request: Request, remote: Optional[str]) -> Response:
    """One request to the mounted endpoints (``request.path`` relative to
    the prefix) from the client at ``remote``."""
    if not request.path.startswith("/"):
        request = request._replace(path="/" + request.path)
    return _router(remote).handle(request)


def _body_problem(method: str, length: Optional[str]) -> Optional[Response]:
    """The error response for a body that will not be read, or None."""
    if method not in BODY_METHODS:
        return None
    if length is None or not length.strip():
        return json_error(411, "a request body needs Content-Length")
    raw = length.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return json_error(400, f"bad Content-Length: {raw[:30]!r}")
    if int(raw) > MAX_BODY_BYTES:
        return json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    return None


# --- WSGI ---------------------------------------------------------------------


def _wsgi_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = str(environ[key])
    return headers


def _wsgi_request(environ: dict[str, Any], path: str) -> Request:
    """The request, with its body when the method has one (call
    :func:`_body_problem` first)."""
    method = str(environ.get("REQUEST_METHOD") or "GET").upper()
    headers = _wsgi_headers(environ)
    body = b""
    if method in BODY_METHODS:
        body = environ["wsgi.input"].read(int(headers["content-length"]))
    # PEP 3333: the path is latin-1 text of the bytes received.
    path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    query = str(environ.get("QUERY_STRING") or "")
    return Request(method, path or "/", query, headers, body)


def _wsgi_respond(
    start_response: Callable[..., Any], request: Optional[Request], response: Response
) -> list[bytes]:
    status, headers, body = response
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    head = [*headers, ("Content-Length", str(len(body)))]
    start_response(f"{status} {reason}", head)
    return [] if request is not None and request.method == "HEAD" else [body]


def _serve_wsgi(
    environ: dict[str, Any], start_response: Callable[..., Any], path: str
) -> list[bytes]:
    method = str(environ.get("REQUEST_METHOD") or "GET").upper()
    problem = _body_problem(method, environ.get("CONTENT_LENGTH"))
    if problem is not None:
        return _wsgi_respond(start_response, None, problem)
    request = _wsgi_request(environ, path)
    return _wsgi_respond(start_response, request, handle(request, environ.get("REMOTE_ADDR")))


def wsgi_app(prefix: str = DEFAULT_PREFIX) -> Callable[..., Iterable[bytes]]:
    """A WSGI application serving the endpoints at its own root (its
    ``PATH_INFO``), to mount at ``prefix`` (werkzeug's
    ``DispatcherMiddleware``, any WSGI router)."""
    _start(_prefix(prefix))

    def pulsetrace_monitoring(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "")
        if not path:
            method = str(environ.get("REQUEST_METHOD") or "GET").upper()
            moved = _slash(method, str(environ.get("SCRIPT_NAME") or ""))
            if moved is not None:
                return _wsgi_respond(start_response, None, moved)
        return _serve_wsgi(environ, start_response, path or "/")

    return pulsetrace_monitoring


# --- Flask --------------------------------------------------------------------


def flask_blueprint(prefix: str = DEFAULT_PREFIX, name: str = "pulsetrace") -> Any:
    """A Flask blueprint serving the endpoints under ``prefix``
    (``app.register_blueprint(flask_blueprint())``)."""
    import flask

    prefix = _prefix(prefix)
    _start(prefix)
    bp = flask.Blueprint(name, __name__, url_prefix=prefix or None)
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    def view(sub: str = "") -> Any:
        environ = flask.request.environ
        out: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            out["status"], out["headers"] = status, headers

        body = b"".join(_serve_wsgi(environ, start_response, "/" + sub))
        response = flask.Response(body, status=out["status"])
        response.headers.clear()
        for k, v in out["headers"]:
            if k.lower() != "content-length":
                response.headers.add(k, v)
        return response

    bp.add_url_rule("/", "root", view, methods=methods, provide_automatic_options=False)
    bp.add_url_rule("/<path:sub>", "path", view, methods=methods, provide_automatic_options=False)
    return bp


def mount_flask(app: Any, prefix: str = DEFAULT_PREFIX) -> None:
    """Serve the endpoints under ``prefix`` in the Flask application ``app``."""
    app.register_blueprint(flask_blueprint(prefix))


# --- Django -------------------------------------------------------------------


def django_urls(prefix: str = DEFAULT_PREFIX) -> list[Any]:
    """URL patterns serving the endpoints under ``prefix``, to add to the
    root URLconf (``urlpatterns += django_urls()``). The view is exempt
    from CSRF (the mutating endpoints need a bearer token instead)."""
    import re

    from django.http import HttpResponse  # type: ignore[import-untyped]
    from django.urls import re_path  # type: ignore[import-untyped]
    from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

    prefix = _prefix(prefix)
    _start(prefix)

    @csrf_exempt  # type: ignore[untyped-decorator]
    def pulsetrace_monitoring(request: Any, sub: Optional[str] = None) -> Any:
        method = request.method.upper()
        headers = {k.lower(): v for k, v in request.headers.items()}
        problem = _body_problem(method, headers.get("content-length"))
        moved = _slash(method, request.path) if sub is None else None
        if moved is not None:
            response = moved
        elif problem is not None:
            response = problem
        else:
            body = request.body if method in BODY_METHODS else b""
            query = request.META.get("QUERY_STRING", "")
            req = Request(method, "/" + (sub or ""), query, headers, body)
            response = handle(req, request.META.get("REMOTE_ADDR"))
        status, out_headers, body = response
        out = HttpResponse(b"" if method == "HEAD" else body, status=status)
        for k, v in out_headers:
            out[k] = v
        return out

    pattern = "^" + re.escape(prefix.lstrip("/")) + ("/" if prefix else "") + "(?P<sub>.*)$"
    urls = [re_path(pattern, pulsetrace_monitoring, name="pulsetrace-monitoring")]
    if prefix:
        urls.insert(0, re_path("^" + re.escape(prefix.lstrip("/")) + "$", pulsetrace_monitoring))
    return urls


# --- ASGI ---------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _read_body(receive: Receive) -> Optional[bytes]:
    """The request body, or None beyond the limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _scope_path(scope: Scope) -> str:
    """The path below the mount: Starlette keeps the full ``path`` and sets
    ``root_path`` (older versions strip the path themselves)."""
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        return path[len(root) :]  # "" at the mount itself
    return path or "/"


def asgi_app(prefix: str = DEFAULT_PREFIX) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI application serving the endpoints at its own root, to mount
    at ``prefix`` (``app.mount("/_pulsetrace", asgi_app())`` in FastAPI or
    Starlette). Handlers run in a worker thread, off the event loop."""
    import asyncio

    _start(_prefix(prefix))

    async def pulsetrace_monitoring(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            if scope.get("type") == "lifespan":
                message = await receive()
                while message.get("type") != "lifespan.shutdown":
                    await send({"type": message["type"] + ".complete"})
                    message = await receive()
                await send({"type": "lifespan.shutdown.complete"})
            return
        method = str(scope.get("method") or "GET").upper()
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers") or ()
        }
        response = _body_problem(method, headers.get("content-length"))
        if _scope_path(scope) == "" and response is None:
            response = _slash(method, str(scope.get("path") or ""))
        if response is None and method in BODY_METHODS:
            body = await _read_body(receive)
            if body is None:
                response = json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        else:
            body = b""
        if response is None:
            query = bytes(scope.get("query_string") or b"").decode("latin-1")
            request = Request(method, _scope_path(scope) or "/", query, headers, body or b"")
            client = scope.get("client")
            remote = client[0] if client else None
            response = await asyncio.get_running_loop().run_in_executor(
                None, handle, request, remote
            )
        status, out_headers, out_body = response
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers]
        raw.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else out_body})

    return pulsetrace_monitoring
