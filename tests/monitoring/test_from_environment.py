"""The monitoring endpoints switched on from the environment: an application
started with ``MONITORING_ENABLED=true`` serves them at
``PULSETRACE_METRICS_ADDR``, with the checks ``DATABASE_URL`` and
``REDIS_URL`` name (their passwords never shown: not in a response, not in
the configuration's repr, not in a warning)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request

from monitoring_support import pg_url

from pulsetrace.config import Config, from_env
from servers import free_port

SECRET = "pw-7e1f-secret"

APP = """
import sys, time
import pulsetrace.auto
print("started", flush=True)
sys.stdin.read()
"""


def test_the_settings_are_read_and_secrets_never_shown(caplog):
    env = {
        "MONITORING_ENABLED": "true",
        "PULSETRACE_MONITORING_TOKEN": SECRET,
        "DATABASE_URL": f"postgresql://app:{SECRET}@db/app",
        "REDIS_URL": f"redis://:{SECRET}@cache:6379/0",
    }
    cfg = from_env(env)
    assert cfg.monitoring_enabled is True and cfg.monitoring_token == SECRET
    assert cfg.database_url == env["DATABASE_URL"] and cfg.redis_url == env["REDIS_URL"]
    assert SECRET not in repr(cfg)
    assert from_env({}) == Config() and Config().monitoring_enabled is False
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"DATABASE_URL": f"postgresql://a:{SECRET}\udcff@db/x"})
    assert cfg.database_url is None
    assert "DATABASE_URL is not valid UTF-8 (value not shown)" in caplog.text
    assert SECRET not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"REDIS_URL": f"cache:{SECRET}"})
    assert cfg.redis_url is None
    assert "REDIS_URL is not a URL (scheme://...) (value not shown)" in caplog.text
    assert SECRET not in caplog.text


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_an_application_started_with_monitoring_enabled_serves_the_checks_it_names(
    postgres_server, redis_server
):
    port = free_port()
    env = {
        **os.environ,
        "MONITORING_ENABLED": "true",
        "PULSETRACE_METRICS_ADDR": f"127.0.0.1:{port}",
        "OTEL_TRACES_EXPORTER": "none",
        "DATABASE_URL": pg_url(postgres_server, password=SECRET),
        "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", APP],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = get(port, "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "the monitoring server never answered"
                time.sleep(0.05)
        checks = {c["name"]: c for c in body["checks"]}
        assert set(checks) == {"database", "redis", "disk", "memory", "cpu", "exporter"}
        # The test Redis needs no password: redis-py sends AUTH, which a
        # server without one refuses; that failure is reported, password-free.
        assert checks["database"]["status"] == "pass", checks["database"]
        assert checks["database"]["critical"] and checks["redis"]["critical"]
        assert not checks["exporter"]["critical"]
        assert SECRET not in json.dumps(body)
        assert get(port, "/health/live")[0] == 200
        assert get(port, "/openapi.json")[0] == 200
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert SECRET not in err
