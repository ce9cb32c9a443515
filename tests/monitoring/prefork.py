"""A real pre-fork application for the tests of the merged view
(``pulsetrace.monitoring.workers``): ``pulsetrace-run gunicorn -w 4
<app>`` started from this folder, the monitoring server on ``mport``, its
workers directory and alert directory under the test's ``tmp_path``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable

from servers import free_port

HERE = Path(__file__).resolve().parent
RUN = str(Path(sys.executable).with_name("pulsetrace-run"))


def get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of a GET on 127.0.0.1."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def until(cond: Callable[[], Any], what: Any, timeout: float = 30.0) -> Any:
    """``cond()``'s first true value within ``timeout`` seconds (an
    OSError, ValueError or KeyError counts as not yet); AssertionError
    naming ``what`` (or ``what()``) after."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}: {last!r}")


def fork_child(work: Callable[[], None], stay: bool) -> tuple[int, int]:
    """Fork a child that runs ``work`` (it records and publishes) and
    exits; with ``stay`` it lives until the returned descriptor is closed.
    Returns (pid, the parent's end of the pipe)."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # newer Pythons warn about forking with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(w)
            work()
            code = 0
            if stay:
                os.read(r, 1)
        finally:
            os._exit(code)
    os.close(r)
    return pid, w


class Gunicorn:
    """``pulsetrace-run gunicorn -w 4 <app>``, with MONITORING_ENABLED and
    no exporter; ``env`` adds to (or replaces) those settings (``mport``:
    the monitoring server's port, a free one by default)."""

    def __init__(self, tmp_path: Path, app: str, service: str, **env_extra: str) -> None:
        self.port = free_port()
        self.mport = int(env_extra.pop("mport", free_port()))
        self.log = tmp_path / "gunicorn.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
        env.update(
            MONITORING_ENABLED="true",
            PULSETRACE_METRICS_ADDR=f"127.0.0.1:{self.mport}",
            PULSETRACE_WORKERS_DIR=str(tmp_path / "workers"),
            PULSETRACE_ALERT_DIR=str(tmp_path / "alerts"),
            OTEL_TRACES_EXPORTER="none",
            OTEL_SERVICE_NAME=service,
        )
        env.update(env_extra)
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        args = [gunicorn, "-w", "4", "-b", f"127.0.0.1:{self.port}", app]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [RUN, *args],
                env=env,
                cwd=HERE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            until(lambda: get(self.port, "/ping")[0] == 200, "the application")
            until(lambda: get(self.mport, "/health/live")[0] == 200, "the monitoring server")
        except BaseException:
            self.kill()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
