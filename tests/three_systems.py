"""Real calls to three systems under one span name, ``GET``, through the
integrations: outbound HTTP with requests (to the echo server on
127.0.0.1), Redis ``GET`` (redis-py, to the session's redis-server) and
sqlite3. Shared by the histogram and the Prometheus tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests

from pulsetrace.contrib import redis as redis_hook
from pulsetrace.contrib import requests as requests_hook
from pulsetrace.contrib import sqlite3 as sqlite3_hook
from servers import Server

from contrib.http_echo_server import EchoServer

HOOKS = (requests_hook, redis_hook, sqlite3_hook)


@contextmanager
def patched() -> Iterator[EchoServer]:
    """The three integrations patched and an echo server running."""
    echo = EchoServer().start()
    for hook in HOOKS:
        hook.patch()
    try:
        yield echo
    finally:
        for hook in HOOKS:
            hook.unpatch()
        echo.stop()


def http_gets(url: str, n: int) -> None:
    with requests.Session() as s:
        for _ in range(n):
            assert s.get(url, timeout=5).status_code == 200


def calls_named_get(redis_server: Server, http: int = 5, redis_gets: int = 3, sql: int = 2) -> str:
    """``http`` requests, ``redis_gets`` Redis GETs and ``sql`` sqlite3
    statements, every span named ``GET``; returns the echo server's URL.

    sqlite has no GET statement: a statement it rejects is still a span named
    after its first word (an error), which gives the third system its span
    named ``GET``."""
    with patched() as echo:
        http_gets(echo.url("/status/200"), http)
        client = redis.Redis(host=redis_server.host, port=redis_server.port)
        try:
            for _ in range(redis_gets):
                client.get("pulsetrace:same-name")
        finally:
            client.close()
        conn = sqlite3.connect(":memory:")
        try:
            for _ in range(sql):
                with pytest.raises(sqlite3.OperationalError):
                    conn.execute("GET x")
        finally:
            conn.close()
        return echo.url("/")


def refused_gets(port: int, hosts: int) -> None:
    """One request to each of ``hosts`` loopback addresses (127.0.0.2, ...)
    on ``port``, where nothing listens: a refused connection, a CLIENT span
    named ``GET`` with its own ``server.address`` each."""
    requests_hook.patch()
    try:
        with requests.Session() as s:
            for i in range(hosts):
                with pytest.raises(requests.ConnectionError):
                    s.get(f"http://127.0.0.{i + 2}:{port}/", timeout=5)
    finally:
        requests_hook.unpatch()
