"""The program ``run.py`` runs under callgrind: a warm-up of every case, then
for each case (``span``, ``flask_on``, ``flask_off``) ``--rounds`` pairs of
batches of N and 2N operations, each batch run inside ``functools.reduce``
(callgrind collects only within that C function and writes one profile part
when it returns: ``--toggle-collect`` / ``--dump-after``), in the order
``run.py`` reads them back. Exits without the interpreter's shutdown.

Not meant to be run alone; see ``run.py``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import io
import os
import sys
from pathlib import Path
from typing import Any, Callable

FLASK_APP = Path(__file__).resolve().parent.parent / "flask_overhead"
WARM_UP = 200

ENVIRON = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/json",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "gate",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "5555",
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--span", type=int, default=1000)
    ap.add_argument("--flask-on", type=int, default=50)
    ap.add_argument("--flask-off", type=int, default=50)
    ap.add_argument("--sqlite-on", type=int, default=50)
    ap.add_argument("--sqlite-off", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    gc.disable()  # a collection's timing would depend on everything allocated before

    importlib.import_module("pulsetrace.auto")  # configured from the scrubbed environment
    import pulsetrace
    from pulsetrace.contrib import flask as flask_hook
    from pulsetrace.contrib import sqlite3 as sqlite_hook

    sys.path.insert(0, str(FLASK_APP))
    app = importlib.import_module("app").app

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return lambda data: None

    def requests(n: int, path: str = "/json") -> None:
        for _ in range(n):
            environ = dict(ENVIRON)
            environ["PATH_INFO"] = path
            environ["wsgi.input"] = io.BytesIO()
            body = app(environ, start_response)
            for _chunk in body:
                pass
            body.close()

    def spans(n: int) -> None:
        start_span = pulsetrace.start_span
        for _ in range(n):
            span = start_span("op")
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("http.route", "/users/{id}")
            span.set_attribute("http.response.status_code", 200)
            span.end()

    def flask_on(n: int) -> None:
        flask_hook.patch()
        requests(n)

    def flask_off(n: int) -> None:
        flask_hook.unpatch()
        requests(n)

    def sqlite_on(n: int) -> None:
        flask_hook.patch()
        sqlite_hook.patch()
        requests(n, "/sqlite_connect")

    def sqlite_off(n: int) -> None:
        flask_hook.unpatch()
        sqlite_hook.unpatch()
        requests(n, "/sqlite_connect")

    cases: list[tuple[Callable[[int], None], int]] = [
        (spans, args.span),
        (flask_on, args.flask_on),
        (flask_off, args.flask_off),
        (sqlite_on, args.sqlite_on),
        (sqlite_off, args.sqlite_off),
    ]
    for fn, _n in cases:  # warm-up: caches filled, the hook's fast path installed
        fn(WARM_UP)
    for fn, n in cases:
        for _ in range(args.rounds):
            for size in (n, 2 * n):
                # One profile part per call: collected inside functools_reduce only.
                functools.reduce(lambda _a, _b, fn=fn, size=size: fn(size), (0, 0))
    sys.stdout.flush()
    os._exit(0)  # no shutdown: its work (a final flush) is not the request path's


if __name__ == "__main__":
    sys.exit(main())
