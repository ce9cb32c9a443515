"""The processes of one benchmark run: gunicorn under test, the OTLP receiver,
redis-server, CPU pinning, the statistics files, and one load run (wrk or the
Python load generator)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import loadgen

from overhead.settings import (
    CONNECTIONS,
    HERE,
    HOST,
    LUA,
    REDIS_KEY,
    REDIS_VALUE,
    THREADS,
    venv_bin,
)


class HarnessError(RuntimeError):
    pass


#: CPU pinning (``--pin``): the server under test on its own CPU(s), the load
#: generator and the helpers (receiver, outbound server, Redis) on the others,
#: so they do not take turns on one core with the worker. Empty: not pinned.
PIN: dict[str, str] = {}
HELPERS = ("outbound", "receiver", "redis", "wrk")


def pinned(name: str, cmd: list[str]) -> list[str]:
    """``cmd`` under ``taskset`` for the CPUs of its role, when pinning."""
    if not PIN:
        return cmd
    return ["taskset", "-c", PIN["load" if name in HELPERS else "server"], *cmd]


def choose_pin(spec: str) -> dict[str, str]:
    """``auto``: the last CPU for the server, the rest for the load (needs 2
    CPUs and taskset); ``off``; or ``SERVER/LOAD`` CPU lists, e.g. ``1/0``."""
    if spec == "off":
        return {}
    if spec == "auto":
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2 or not shutil.which("taskset"):
            return {}
        return {"server": str(cpus[-1]), "load": ",".join(map(str, cpus[:-1]))}
    server, _, load = spec.partition("/")
    if not server or not load:
        raise HarnessError(f"--pin {spec!r}: expected auto, off or SERVER/LOAD, e.g. 1/0")
    return {"server": server, "load": load}


class Processes:
    """Every process the harness starts, each in its own process group, so that
    stopping one stops its children (gunicorn's worker) too."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        cmd = pinned(name, cmd)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed by the child's exit
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=str(HERE),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.running[proc.pid] = (name, proc)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> Optional[int]:
        self.running.pop(proc.pid, None)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # The group may outlive its leader (a worker still exiting): make sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for _name, proc in list(self.running.values()):
            self.stop(proc, timeout=5.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(
    procs: Processes, name: str, proc: subprocess.Popen[bytes], port: int
) -> dict[str, Any]:
    """Poll /_bench/info until it answers 200; returns its JSON."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(
                f"{name} exited with {proc.returncode} before serving:\n{procs.log_tail(name)}"
            )
        try:
            status, body = http_get(port, "/_bench/info", timeout=2.0)
            if status == 200:
                return dict(json.loads(body))
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.05)
    raise HarnessError(f"{name} did not serve within 60 s:\n{procs.log_tail(name)}")


def base_env() -> dict[str, str]:
    """This environment without any agent setting or auto-instrumentation hook,
    with this interpreter's environment first on PATH."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PULSETRACE_", "APM_"))
    }
    parts = [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and not p.rstrip("/").endswith(("_bootstrap", "auto_instrumentation"))
    ]
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gunicorn_cmd(port: int, app: str) -> list[str]:
    return [
        str(venv_bin("gunicorn")),
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--bind",
        f"{HOST}:{port}",
        "--chdir",
        str(HERE),
        "--no-control-socket",
        "--worker-tmp-dir",
        "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
        "--graceful-timeout",
        "10",
        "--log-level",
        "warning",
        app,
    ]


def start_gunicorn(
    procs: Processes, name: str, prefix: list[str], app: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, dict[str, Any], float]:
    """Start gunicorn on a free port (retrying if another process took it)."""
    last: Optional[Exception] = None
    for _attempt in range(3):
        port = free_port()
        t0 = time.monotonic()
        proc = procs.start(name, [*prefix, *gunicorn_cmd(port, app)], env)
        try:
            info = wait_http(procs, name, proc, port)
            return proc, port, info, time.monotonic() - t0
        except HarnessError as exc:
            procs.stop(proc)
            last = exc
            if "in use" not in str(exc):
                break
    raise HarnessError(str(last))


def start_receiver(procs: Processes, env: dict[str, str], stats: Path) -> tuple[Any, int]:
    proc = procs.start(
        "receiver", [sys.executable, str(HERE / "receiver.py"), "--stats", str(stats)], env
    )
    deadline = time.monotonic() + 30
    log = procs.log_dir / "receiver.log"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(
                f"receiver exited with {proc.returncode}:\n{procs.log_tail('receiver')}"
            )
        m = re.search(r"READY (\d+)", log.read_text(errors="replace")) if log.exists() else None
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    raise HarnessError(f"receiver did not start:\n{procs.log_tail('receiver')}")


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process, all its threads, ended ones
    included (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def read_stats(path: Path) -> dict[str, Any]:
    """The receiver's counts (receiver.py): export requests, spans, and spans by
    the root span of their trace."""
    try:
        stats = dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        stats = {}
    stats.setdefault("requests", 0)
    stats.setdefault("spans", 0)
    stats.setdefault("by_root", {})
    stats.setdefault("unattributed", 0)
    return stats


def by_root_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """What the receiver attributed to each root span name between two reads."""
    out = {}
    for name, now in after["by_root"].items():
        was = before["by_root"].get(name, {"traces": 0, "spans": 0})
        d = {k: int(now[k]) - int(was[k]) for k in ("traces", "spans")}
        if d["traces"] or d["spans"]:
            out[name] = d
    return out


# --------------------------------------------------------------------------- redis


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command in RESP on a fresh connection; returns the reply's first line
    (``+PONG``, ``+OK``). The harness needs no Redis client of its own."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        raw = a.encode()
        payload += f"${len(raw)}\r\n".encode() + raw + b"\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n", 1)[0]


def redis_server_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"v=(\S+)", out.stdout)
    return m.group(1) if m else (out.stdout.strip() or "unknown")


def start_redis(
    procs: Processes, binary: str, data_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on 127.0.0.1 and a free port, no persistence, its files (none
    expected) in ``data_dir``; ``REDIS_KEY`` set once it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _attempt in range(3):
        port = free_port()
        cmd = [
            binary,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ]
        proc = procs.start("redis", cmd, base_env())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if redis_command(port, "PING") == b"+PONG":
                    reply = redis_command(port, "SET", REDIS_KEY, REDIS_VALUE)
                    if reply != b"+OK":
                        procs.stop(proc)
                        raise HarnessError(f"redis-server: SET {REDIS_KEY} replied {reply!r}")
                    return proc, port
            except OSError:
                pass
            time.sleep(0.05)
        last = procs.log_tail("redis")
        procs.stop(proc)
        if "in use" not in last:
            break
    raise HarnessError(f"redis-server did not start:\n{last}")


# --------------------------------------------------------------------------- load


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def drive(loadgen_name: str, port: int, route: str, seconds: int) -> dict[str, Any]:
    """One load run; returns the fields latency.lua prints (+ rps)."""
    if loadgen_name == "wrk":
        cmd = [
            str(shutil.which("wrk")),
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(LUA),
            f"http://{HOST}:{port}{route}",
        ]
        cmd = pinned("wrk", cmd)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        m = re.search(r"^PTBENCH (\{.*\})$", out.stdout, re.MULTILINE)
        if out.returncode != 0 or m is None:
            raise HarnessError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        result = dict(json.loads(m.group(1)))
    else:
        result = loadgen.run_load(HOST, port, route, CONNECTIONS, float(seconds))
    result["rps"] = (
        result["requests"] / (result["duration_us"] / 1e6) if result["requests"] else 0.0
    )
    result["error_count"] = sum(result["errors"].values())
    return result
