"""A real HTTP server on 127.0.0.1 for the outbound-HTTP tests.

It answers every method on:

- ``/status/<code>``: that status, with a JSON body echoing the received
  ``traceparent``/``tracestate`` and all headers (lower-cased names);
- ``/slow``: the same, after waiting up to 5 s (for client timeouts; the
  wait ends early when the server stops);
- ``/redirect``: 302 to ``/status/200``.

Every request received is also recorded in ``EchoServer.received``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        seen = {
            "method": self.command,
            "path": self.path,
            "traceparent": headers.get("traceparent"),
            "tracestate": headers.get("tracestate"),
            "traceparent_count": len(self.headers.get_all("traceparent") or []),
            "headers": headers,
        }
        with self.server.lock:
            self.server.received.append(seen)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/status/200")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow"):
            self.server.stopping.wait(5.0)
            code = 200
        else:
            try:
                code = int(self.path.split("/")[2].split("?")[0])
            except (IndexError, ValueError):
                code = 400
        body = json.dumps(seen).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_PURGE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left: nothing to report

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)
