"""What the monitoring tests share: the monitoring server of this process on
a free port, a small HTTP client that shows status, headers and JSON, and
a Redis server of the test's own (to stop and start again mid-test)."""

from __future__ import annotations

import http.client
import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import pulsetrace
from pulsetrace import prometheus
from pulsetrace.monitoring import endpoints
from pulsetrace.monitoring import health as _health
from servers import free_port, require, stop, wait_for_port

from conftest import fresh


class Client:
    def __init__(self, host: str, port: int, token: Optional[str] = None) -> None:
        self.host, self.port, self.token = host, port, token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[dict[str, str]] = None,
        token: Optional[str] = None,
        raw: Optional[bytes] = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, lower-case headers, JSON body or bytes)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if token or self.token:
                hdrs["Authorization"] = f"Bearer {token or self.token}"
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if got.get("content-type", "").startswith("application/json"):
            return resp.status, got, json.loads(payload)
        return resp.status, got, payload

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return self.call("POST", path, body=body, **kw)


@contextmanager
def monitoring_server(
    host: str = "127.0.0.1", token: Optional[str] = None, **settings: Any
) -> Iterator[Client]:
    """This process's metrics server with the monitoring endpoints, on a
    free port, with no health check registered but the test's own."""
    prometheus.stop_server()
    fresh(monitoring_enabled=True, monitoring_token=token, **settings)
    _health.REGISTRY.clear()
    endpoints._metrics_cache = (float("-inf"), b"")  # no snapshot of an earlier test
    prometheus._checks_registered = True  # the test registers what it checks
    addr = prometheus.start_server(f"{host}:0")
    assert addr is not None
    try:
        yield Client("127.0.0.1", addr[1])
    finally:
        prometheus.stop_server()
        _health.REGISTRY.clear()
        prometheus._checks_registered = False
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


class OwnRedis:
    """A redis-server only this test uses: ``stop()`` and ``start()`` again
    on the same port."""

    def __init__(self) -> None:
        self.binary = require("redis-server")
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", self.dir.name, "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.dir.cleanup()


def pg_url(server: Any, password: Optional[str] = None) -> str:
    user = server.extra["user"] + (f":{password}" if password else "")
    return f"postgresql://{user}@{server.host}:{server.port}/{server.extra['dbname']}"
