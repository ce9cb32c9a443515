"""``LOG_LEVEL`` is the application's log level; pulsetrace's own
diagnostics follow ``PULSETRACE_LOG_LEVEL`` (and, for one release, still
``LOG_LEVEL`` when it is unset, with a deprecation warning).
``import pulsetrace.auto`` with ``PULSETRACE_LOGS_JSON=true`` writes JSON
lines; ``PULSETRACE_LOGGING_ENABLED=false`` leaves logging alone."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from pulsetrace.config import from_env

PROGRAM = """
import logging
import pulsetrace.auto
log = logging.getLogger("app")
log.debug("a debug line")
log.info("an info line")
log.warning("a warning line")
"""


def run(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PULSETRACE_", "OTEL_", "APM_")) and k != "LOG_LEVEL"
    }
    clean.update(OTEL_TRACES_EXPORTER="none", **env)
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, env=clean
    )


def messages(stdout: str) -> list[str]:
    return [json.loads(x)["message"] for x in stdout.splitlines()]


def test_log_level_is_the_application_s_level():
    r = run(PULSETRACE_LOGS_JSON="true", LOG_LEVEL="warning", PULSETRACE_LOG_LEVEL="warning")
    assert r.returncode == 0, r.stderr
    assert messages(r.stdout) == ["a warning line"]
    r = run(PULSETRACE_LOGS_JSON="true", LOG_LEVEL="debug", PULSETRACE_LOG_LEVEL="warning")
    assert messages(r.stdout) == ["a debug line", "an info line", "a warning line"]
    # The default application level is info.
    r = run(PULSETRACE_LOGS_JSON="true")
    assert messages(r.stdout) == ["an info line", "a warning line"]


def test_pulsetrace_s_diagnostics_follow_pulsetrace_log_level():
    r = run(PULSETRACE_LOGS_JSON="true", LOG_LEVEL="warning", PULSETRACE_LOG_LEVEL="info")
    said = [x for x in messages(r.stdout) if x.startswith("pulsetrace: service")]
    assert len(said) == 1, r.stdout  # pulsetrace's INFO start-up line, as JSON
    assert "a warning line" in messages(r.stdout)
    assert "an info line" not in messages(r.stdout)
    assert "deprecated: LOG_LEVEL" not in r.stdout + r.stderr


def test_log_level_alone_still_sets_the_diagnostics_with_a_deprecation_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"LOG_LEVEL": "debug"})
    assert cfg.log_level == "debug" and cfg.diag_log_level == "debug"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "set PULSETRACE_LOG_LEVEL=debug" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"LOG_LEVEL": "error", "PULSETRACE_LOG_LEVEL": "info"})
    assert cfg.log_level == "error" and cfg.diag_log_level == "info"
    assert caplog.records == []
    assert from_env({}).diag_log_level == "warning" and from_env({}).log_level == "info"


def test_without_pulsetrace_logs_json_or_with_the_toggle_off_logging_is_left_alone():
    for env in ({}, {"PULSETRACE_LOGS_JSON": "true", "PULSETRACE_LOGGING_ENABLED": "false"}):
        r = run(**env)
        assert r.returncode == 0 and r.stdout == "", (env, r.stdout)
