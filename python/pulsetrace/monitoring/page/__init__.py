"""The live page of the monitoring server: ``GET /`` serves one page
(``index.html``) whose script (``/page/app.js``) and style sheet
(``/page/app.css``) are routes of their own, all package data shipped in
the wheel: no build step, nothing fetched from elsewhere. The page polls the
JSON endpoints (``/apm/*``, ``/health``, ``/monitoring/*``) and builds its
elements from their answers as text, never as HTML.

Every answer carries a strict Content-Security-Policy (scripts, styles and
requests to this server only; no inline script or style, no plugin, no
framing; Trusted Types enforced, so no HTML sink can be fed a string) and
``X-Content-Type-Options: nosniff``. The routes follow the read endpoints'
token rule (:mod:`pulsetrace.monitoring.endpoints`).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from pulsetrace._router import Request, Response

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

#: path -> (file in this package, content type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/app.css": ("app.css", "text/css; charset=utf-8"),
    "/page/icon.svg": ("icon.svg", "image/svg+xml"),
}

_cache: dict[str, bytes] = {}


def _body(name: str) -> bytes:
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = resources.files(__name__).joinpath(name).read_bytes()
    return body


def handler(name: str, content_type: str) -> Callable[[Request], Response]:
    """The handler serving the package file ``name``."""
    headers = (
        ("Content-Type", content_type),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-cache"),
    )

    def serve(request: Request) -> Response:
        return Response(200, headers, _body(name))

    return serve


_SUMMARIES = {
    "/": "The live page: rates, latency, traces, errors, health checks, alerts",
    "/page/app.js": "The live page's script",
    "/page/app.css": "The live page's style sheet",
    "/page/icon.svg": "The live page's icon",
}


def endpoints(endpoint: Any) -> list[Any]:
    """The page's rows of the endpoint table, made with its ``Endpoint``."""
    rows = []
    for path, (name, content_type) in FILES.items():
        media = content_type.split(";")[0]
        ok = {"description": _SUMMARIES[path], "content": {media: {"schema": {"type": "string"}}}}
        rows.append(endpoint("GET", path, handler(name, content_type), _SUMMARIES[path], {200: ok}))
    return rows
