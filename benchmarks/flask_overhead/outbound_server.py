"""The upstream of ``/outbound``: a trivial WSGI app, run uninstrumented by
``run.py`` under its own gunicorn (one sync worker, 127.0.0.1 only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

BODY = b'{"ok": true, "upstream": "bench"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
