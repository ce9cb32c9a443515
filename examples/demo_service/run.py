"""Run the demo service the way a user would run theirs, instrumented by
pulsetrace with no code change:

    pulsetrace-run gunicorn -w 2 --threads 4 --preload -b 127.0.0.1:$DEMO_PORT app:app

with the monitoring endpoints and the live page on ``PULSETRACE_METRICS_ADDR``,
a built-in load generator sending a few requests a second, until Ctrl-C (or
for ``DEMO_SECONDS`` seconds), then a summary read from the monitoring
endpoints. ``make demo`` runs it.

Settings (environment): ``DEMO_PORT`` (the service, default 8000),
``PULSETRACE_METRICS_ADDR`` (the monitoring server, default
127.0.0.1:9464), ``DEMO_SECONDS`` (stop by itself after that many seconds),
``DEMO_RATE`` (requests a second, default 6), ``PULSETRACE_MONITORING_TOKEN``
(the token the live page asks for to acknowledge an alert: a random one is
made when unset). Every other pulsetrace variable of the README applies to
the service too (``PULSETRACE_SAMPLE_RATE=1 make demo``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import store
import summary
from load import LoadGenerator

HERE = Path(__file__).resolve().parent
LOOPBACK = ("127.0.0.1", "localhost")
#: Defaults the demo picks for the service (each one only when not set).
DEMO_DEFAULTS = {
    "OTEL_SERVICE_NAME": "messaging-demo",
    "OTEL_TRACES_EXPORTER": "none",  # no collector here: /apm/traces keeps them
    "PULSETRACE_SAMPLE_RATE": "0.25",
    "PULSETRACE_SLOW_THRESHOLD_MS": "300",
    "PULSETRACE_ALERT_INTERVAL_MS": "2000",
    "PULSETRACE_LOGS_JSON": "true",
    "PULSETRACE_ACCESS_LOG": "true",
}


class DemoError(Exception):
    """A setting or a port the demo cannot use: shown as it is, exit 2."""


def setting_port(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise DemoError(f"{name}={raw!r} is not a port number (1 to 65535)")
    return int(raw)


def metrics_port() -> int:
    """The port of ``PULSETRACE_METRICS_ADDR``, whose host must be loopback."""
    raw = os.environ.get("PULSETRACE_METRICS_ADDR") or "127.0.0.1:9464"
    host, _, port = raw.rpartition(":")
    if host not in LOOPBACK:
        raise DemoError(
            f"PULSETRACE_METRICS_ADDR={raw!r}: the demo listens on loopback only "
            "(set it to 127.0.0.1:<port>)"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DemoError(f"PULSETRACE_METRICS_ADDR={raw!r}: the port is not a number (1 to 65535)")
    return int(port)


def require_free(host: str, port: int, variable: str) -> None:
    with socket.socket() as s:
        # As the servers do: connections of an earlier run in TIME_WAIT do
        # not make the port busy; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DemoError(
                f"port {port} on {host} is not free ({exc.strerror}): set {variable} to "
                f"another one, e.g. {variable}={_example(variable, host, port)} make demo"
            ) from None


def _example(variable: str, host: str, port: int) -> str:
    other = port + 1 if port < 65535 else port - 1
    return f"{host}:{other}" if variable == "PULSETRACE_METRICS_ADDR" else str(other)


def answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


class Service:
    """``pulsetrace-run gunicorn ...`` in its own session (Ctrl-C reaches the
    runner only, which stops it: SIGTERM, then SIGKILL to its group)."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        bin_dir = Path(sys.executable).parent
        run = bin_dir / "pulsetrace-run"
        gunicorn = bin_dir / "gunicorn"
        for tool, package in ((run, "pulsetrace"), (gunicorn, "gunicorn")):
            if not tool.exists():
                raise DemoError(f"{tool} not found: install {package} into this Python first")
        # --threads: a send waits for the provider stub, served by the same
        # workers. --preload: the master imports the application, so the
        # process serving the monitoring endpoints has its health checks and
        # alert rules (the workers inherit them).
        self.args = [
            str(run),
            str(gunicorn),
            "-w",
            "2",
            "--threads",
            "4",
            "--preload",
            "--graceful-timeout",
            "5",
            "--no-control-socket",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(HERE),
            "app:app",
        ]
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                env=env,
                cwd=HERE,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (gunicorn stops its workers gracefully), SIGKILL to the
        group after ``timeout``, and to any process of the group left."""
        group = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(group, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)  # a worker still exiting?
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def wait_until_up(
    service: Service, port: int, mport: int, stop: threading.Event, timeout: float = 60.0
) -> bool:
    """Until the service and the monitoring server answer (True), or
    ``stop`` is set (False); RuntimeError when the service exits first or
    does not answer in time."""
    deadline = time.monotonic() + timeout
    while not (answers(port, "/provider/health") and answers(mport, "/health/live")):
        if not service.alive():
            raise RuntimeError(
                f"the service exited with {service.proc.returncode}:\n{service.tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the service did not answer within {timeout:.0f} s:\n{service.tail()}"
            )
        if stop.wait(0.2):
            return False
    return True


def banner(port: int, mport: int, token: str, token_made: bool, log: Path, seconds: float) -> str:
    app, mon = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mport}"
    how_long = f"for {seconds:g} s (DEMO_SECONDS)" if seconds else "until Ctrl-C"
    token_line = (
        f"  token (to acknowledge an alert on the live page; made for this run): {token}"
        if token_made
        else "  token: PULSETRACE_MONITORING_TOKEN from your environment"
    )
    return f"""
pulsetrace demo: a messaging service under `pulsetrace-run gunicorn -w 2`, with a
load generator sending a few requests a second, {how_long}.

  live page          {mon}/
  health             {mon}/health
  operations         {mon}/apm/transactions
  kept traces        {mon}/apm/traces
  business metrics   {mon}/health/business-metrics
  alerts             {mon}/monitoring/alerts
  Prometheus         {mon}/metrics
  the service        {app}/  (its routes)  {app}/contacts  {app}/campaigns
                     curl -X POST -H 'Content-Type: application/json' \\
                          -d '{{"contact_id": 1, "template": "welcome"}}' {app}/messages
{token_line}
  service logs (JSON lines with trace ids): tail -f {log}
"""


def main() -> int:
    try:
        port = setting_port("DEMO_PORT", 8000)
        mport = metrics_port()
        raw_seconds = os.environ.get("DEMO_SECONDS") or "0"
        raw_rate = os.environ.get("DEMO_RATE") or "6"
        try:
            seconds, rate = float(raw_seconds), float(raw_rate)
        except ValueError:
            raise DemoError(
                f"DEMO_SECONDS={raw_seconds!r} / DEMO_RATE={raw_rate!r}: not numbers"
            ) from None
        if seconds < 0 or not 0 < rate <= 200:
            raise DemoError("DEMO_SECONDS must be >= 0 and DEMO_RATE within (0, 200]")
        if port == mport:
            raise DemoError(f"DEMO_PORT and PULSETRACE_METRICS_ADDR both use port {port}")
        require_free("127.0.0.1", port, "DEMO_PORT")
        require_free("127.0.0.1", mport, "PULSETRACE_METRICS_ADDR")
        return run(port, mport, seconds, rate)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


def service_env(workdir: Path, port: int, mport: int, token: str) -> dict[str, str]:
    """The service's environment: the user's, the demo's defaults where the
    user set nothing, and what the demo needs."""
    env = {**{k: v for k, v in DEMO_DEFAULTS.items() if not os.environ.get(k)}, **os.environ}
    env.update(
        MONITORING_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{mport}",
        PULSETRACE_MONITORING_TOKEN=token,
        DEMO_PORT=str(port),
        DEMO_DB=str(workdir / "messages.db"),
    )
    env.setdefault("PULSETRACE_WORKERS_DIR", str(workdir / "workers"))
    env.setdefault("PULSETRACE_ALERT_DIR", str(workdir / "alerts"))
    env.pop("PULSETRACE_APP_ID", None)  # this run is an application of its own
    return env


def run(port: int, mport: int, seconds: float, rate: float) -> int:
    stop = threading.Event()
    reason = ["DEMO_SECONDS"]

    def on_signal(signum: int, frame: object) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    token = os.environ.get("PULSETRACE_MONITORING_TOKEN") or ""
    token_made = not token
    if token_made:
        token = secrets.token_urlsafe(18)
    workdir = Path(tempfile.mkdtemp(prefix="pulsetrace-demo-"))
    log = workdir / "service.log"
    service: Optional[Service] = None
    load: Optional[LoadGenerator] = None
    code = 0
    try:
        env = service_env(workdir, port, mport, token)
        store.create(env["DEMO_DB"])
        print(f"demo: starting the service on 127.0.0.1:{port} ...", flush=True)
        service = Service(port, env, log)
        if not wait_until_up(service, port, mport, stop):
            print(f"demo: stopping ({reason[0]})", flush=True)
            return 0
        print(banner(port, mport, token, token_made, log, seconds), flush=True)
        load = LoadGenerator(port, rate=rate)
        load.start()
        started = time.monotonic()
        next_report = started + 10
        while not stop.wait(0.5):
            now = time.monotonic()
            if not service.alive():
                print(f"demo: the service stopped by itself:\n{service.tail()}", file=sys.stderr)
                return 1
            if now >= next_report:
                line = summary.statuses_line(load.statuses)
                print(f"  {now - started:4.0f} s  {line}", flush=True)
                next_report += 10
            if seconds and now - started >= seconds:
                break
        print(f"\ndemo: stopping ({reason[0] if stop.is_set() else 'DEMO_SECONDS'})", flush=True)
        load.stop()
        try:
            print(summary.report(mport, load.statuses), flush=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"demo: cannot read the summary from the monitoring server: {exc!r}")
            code = 1
    except (RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave gunicorn
        if load is not None:
            load.stop()
        if service is not None:
            stopping = time.monotonic()
            service.stop()
            print(f"demo: the service has stopped ({time.monotonic() - stopping:.1f} s)")
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
