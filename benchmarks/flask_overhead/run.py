#!/usr/bin/env python3
"""End-to-end overhead of pulsetrace on a Flask app under gunicorn, vs no agent
and vs OpenTelemetry's own auto-instrumentation exporting to a real receiver.

    python benchmarks/flask_overhead/run.py [--quick|--full] [--json PATH] [--png PATH]

For every round and every configuration (interleaved, round-robin, the starting
configuration rotating from round to round), a fresh gunicorn (1 sync worker,
127.0.0.1) serves ``app.py``; each route is warmed up, then driven with wrk
(``-t2 -c4 --latency``, or the Python load generator when wrk is missing) for D
seconds. The upstream of ``/outbound``, the ``redis-server`` of ``/redis`` and
the OTLP receiver are started once, shared, and stopped at the end (by their
process ids, also when the harness fails). The report gives, per route, the
medians over the rounds of req/s, p50 and p99 latency, the throughput loss vs no
agent and the added µs per request, and checks the targets. Figures, not tests:
exits 0 whatever they are (non-zero only when the harness itself fails).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
DEFAULT_JSON = RESULTS / "flask_overhead.json"
DEFAULT_PNG = RESULTS / "flask_overhead.png"
LUA = HERE / "latency.lua"
HOST = "127.0.0.1"

sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "rounds": 2,
        "duration": 3,
        "warmup": 1,
        "configs": ["none", "pulsetrace", "otel"],
    },
    "full": {
        "rounds": 5,
        "duration": 10,
        "warmup": 2,
        "configs": ["none", "pulsetrace", "pulsetrace_keep_all", "otel"],
    },
}
ROUTES = ["/json", "/sqlite", "/outbound", "/redis"]
#: What /redis reads (app.py's REDIS_KEY), set by the harness once redis-server is up.
REDIS_KEY = "bench:key"
REDIS_VALUE = '{"id": 42, "name": "bench", "tags": ["a", "b", "c"]}'
THREADS = 2
CONNECTIONS = 4
#: Targets, on the medians: pulsetrace's loss on /json, and its loss as a share
#: of OpenTelemetry's on every route.
TARGET_JSON_LOSS_PCT = 5.0
TARGET_LOSS_RATIO = 0.25

NOTE_EXPORT = (
    "every agent gets the same exporter settings, OTLP/gRPC to a local receiver that "
    "discards (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER=otlp): figures include "
    "batching and encoding in the worker; spans received are counted per server"
)
NOTE_NO_EXPORT = (
    "pulsetrace sent nothing to the receiver: this build has no network exporter, so its "
    "kept traces stayed in a bounded in-process queue (dropped and counted once full) and "
    "its figures cover the request path only, while OpenTelemetry's include its export"
)


@dataclass
class Config:
    name: str
    description: str
    agent: str  # "none" | "pulsetrace" | "pulsetrace_off" | "otel": what /_bench/info must show
    launcher: list[str] = field(default_factory=list)  # executables put before gunicorn
    env: dict[str, str] = field(default_factory=dict)


def venv_bin(name: str) -> Optional[str]:
    """An executable of this interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def make_configs(receiver_port: Optional[int]) -> dict[str, Config]:
    """The configurations; without a receiver (``None``) exporters are off."""
    # The same exporter settings for every agent (the OpenTelemetry variables, which
    # pulsetrace reads too): an agent that exports pays for it in the worker, as in
    # production, and the receiver shows what each one sent.
    export_env = {
        "OTEL_SERVICE_NAME": "flask-overhead",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{receiver_port or 0}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    if receiver_port is None:
        export_env["OTEL_TRACES_EXPORTER"] = "none"
    return {
        "none": Config("none", "plain gunicorn, no agent", "none"),
        "pulsetrace": Config(
            "pulsetrace",
            "pulsetrace-run gunicorn, default settings (PULSETRACE_SAMPLE_RATE unset: 0.1)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            export_env,
        ),
        "pulsetrace_keep_all": Config(
            "pulsetrace_keep_all",
            "pulsetrace-run gunicorn, PULSETRACE_SAMPLE_RATE=1 (every trace kept)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "PULSETRACE_SAMPLE_RATE": "1"},
        ),
        "pulsetrace_disabled": Config(
            "pulsetrace_disabled",
            "pulsetrace-run gunicorn, APM_ENABLED=false (kill switch; optional, not in a mode)",
            "pulsetrace_off",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "APM_ENABLED": "false"},
        ),
        "pulsetrace_no_export": Config(
            "pulsetrace_no_export",
            "pulsetrace-run gunicorn, OTEL_TRACES_EXPORTER=none (tracing without an exporter; "
            "optional, not in a mode: splits the export's share out)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "OTEL_TRACES_EXPORTER": "none"},
        ),
        "otel": Config(
            "otel",
            "opentelemetry-instrument gunicorn (distro: SDK, BatchSpanProcessor, OTLP/gRPC)",
            "otel",
            [str(venv_bin("opentelemetry-instrument"))],
            export_env,
        ),
    }


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- checks


def _wrapped(info: dict[str, Any], name: str) -> bool:
    """Whether /_bench/info shows ``name`` replaced by a wrapper (wrapt's)."""
    return "builtins." not in str((info.get("wrappers") or {}).get(name, "builtins."))


def check_instrumented(cfg: Config, info: dict[str, Any], routes: list[str]) -> None:
    """Fail when a server does not run with the agent its configuration names
    (and, with /redis measured, when that agent has not wrapped redis-py)."""
    pt, ot = info.get("pulsetrace"), info.get("opentelemetry")
    problems = []
    redis_wrapped = _wrapped(info, "redis.Redis.execute_command")
    if cfg.agent == "none" and (pt or ot):
        problems.append("an agent is loaded")
    if cfg.agent == "pulsetrace":
        if not pt or not pt.get("enabled") or "flask" not in pt.get("integrations", []):
            problems.append("pulsetrace is not active with its flask integration")
        if ot:
            problems.append("OpenTelemetry instrumentation is loaded too")
        want = float(cfg.env.get("PULSETRACE_SAMPLE_RATE", "0.1"))
        if pt and abs(float(pt.get("sample_rate", -1)) - want) > 1e-9:
            problems.append(f"sample_rate is {pt.get('sample_rate')}, expected {want}")
        if "/redis" in routes and (
            not pt or "redis" not in pt.get("integrations", []) or not redis_wrapped
        ):
            problems.append("pulsetrace's redis integration has not patched redis-py")
    if cfg.agent == "pulsetrace_off" and (not pt or pt.get("enabled") or ot):
        problems.append("pulsetrace is not loaded, or not switched off")
    if cfg.agent == "otel":
        if not ot or "TracerProvider" not in str(ot.get("provider")):
            problems.append("no OpenTelemetry SDK TracerProvider")
        if "Instrumented" not in str(info.get("app_class")):
            problems.append("Flask is not instrumented by OpenTelemetry")
        if "/redis" in routes and (
            not ot or "redis" not in ot.get("instrumentations", []) or not redis_wrapped
        ):
            problems.append("redis-py is not instrumented by OpenTelemetry")
        if pt:
            problems.append("pulsetrace is loaded too")
    if problems:
        raise HarnessError(f"{cfg.name}: {'; '.join(problems)}; /_bench/info: {json.dumps(info)}")


def pulsetrace_spans(info: dict[str, Any], app_only: bool = False) -> int:
    """Spans pulsetrace's histograms recorded so far (``app_only``: not counting
    the harness's own /_bench/info requests)."""
    pt = info.get("pulsetrace") or {}
    ops = pt.get("operations") or {}
    return int(sum(v for k, v in ops.items() if not (app_only and "/_bench/" in k)))


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(x: Optional[float], spec: str, width: int) -> str:
    if x is None or x != x:
        return f"{'—':>{width}}"
    return f"{x:{spec}}".rjust(width)


def summarize(
    samples: list[dict[str, Any]], configs: list[str], routes: list[str]
) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for route in routes:
        per: dict[str, Any] = {}
        by_round: dict[str, dict[int, float]] = {}
        for c in configs:
            ss = [s for s in samples if s["config"] == c and s["route"] == route]
            by_round[c] = {s["round"]: s["rps"] for s in ss}
            per[c] = {
                "rounds": len(ss),
                "rps": median([s["rps"] for s in ss]),
                "p50_ms": median([s["named"]["50"] / 1000 for s in ss]),
                "p99_ms": median([s["named"]["99"] / 1000 for s in ss]),
                "p999_ms": median([s["named"]["99.9"] / 1000 for s in ss]),
                "errors": sum(s["error_count"] for s in ss),
                "requests": sum(s["requests"] for s in ss),
                "cpu_us": median(
                    [s["cpu_us_per_request"] for s in ss if s.get("cpu_us_per_request") is not None]
                ),
            }
        base = per.get("none", {}).get("rps", float("nan"))
        for c in configs:
            rps = per[c]["rps"]
            per[c]["loss_pct"] = (1 - rps / base) * 100 if c != "none" and base > 0 else None
            per[c]["added_us"] = (
                1e6 / rps - 1e6 / base if c != "none" and base > 0 and rps > 0 else None
            )
            # The worker's own CPU time per request: far less moved by other processes
            # competing for the cores than throughput is.
            base_cpu = per.get("none", {}).get("cpu_us", float("nan"))
            cpu = per[c]["cpu_us"]
            per[c]["added_cpu_us"] = (
                cpu - base_cpu if c != "none" and cpu == cpu and base_cpu == base_cpu else None
            )
            # The same figure round by round (each config against the `none` run of its
            # own round): its spread shows how much the machine's noise moved it.
            paired = [
                (1 - r / by_round["none"][k]) * 100
                for k, r in by_round[c].items()
                if c != "none" and by_round.get("none", {}).get(k)
            ]
            per[c]["loss_pct_per_round"] = paired
        summary[route] = per
    return summary


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def ratio_text(pt: Optional[float], ot: Optional[float]) -> str:
    """pulsetrace's loss over OpenTelemetry's, said plainly when undefined."""
    if pt is not None and pt <= 0:
        return f"<= 0 (no loss measured for pulsetrace: {pt:+.1f} %)"
    r = ratio(pt, ot)
    if r is None:
        return "undefined (no loss measured for OpenTelemetry)"
    return f"{r:.3f}"


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    if "/json" in summary and "pulsetrace" in summary["/json"]:
        loss = summary["/json"]["pulsetrace"]["loss_pct"]
        out.append(
            {
                "name": "pulsetrace throughput loss on /json",
                "value": loss,
                "limit": TARGET_JSON_LOSS_PCT,
                "unit": "%",
                "met": None if loss is None else loss <= TARGET_JSON_LOSS_PCT,
            }
        )
    for route, per in summary.items():
        if "pulsetrace" not in per:
            continue
        if "otel" not in per:
            out.append(
                {
                    "name": f"pulsetrace loss / OpenTelemetry loss on {route}",
                    "value": None,
                    "text": "not measured (no otel run)",
                    "limit": TARGET_LOSS_RATIO,
                    "unit": "",
                    "met": None,
                }
            )
            continue
        pt, ot = per["pulsetrace"]["loss_pct"], per["otel"]["loss_pct"]
        r = ratio(pt, ot)
        met: Optional[bool]
        if pt is not None and pt <= 0:
            met = True  # no loss measured at all
        elif r is None:
            met = None  # OpenTelemetry showed no loss: the ratio is undefined
        else:
            met = r <= TARGET_LOSS_RATIO
        out.append(
            {
                "name": f"pulsetrace loss / OpenTelemetry loss on {route}",
                "value": r,
                "text": ratio_text(pt, ot),
                "limit": TARGET_LOSS_RATIO,
                "unit": "",
                "met": met,
            }
        )
    return out


def print_report(
    summary: dict[str, dict[str, Any]],
    configs: list[str],
    rounds: int,
    duration: int,
    load_desc: str,
    tgts: list[dict[str, Any]],
    quick: bool = False,
) -> None:
    for route, per in summary.items():
        print(f"\n{route}  (medians of {rounds} rounds x {duration} s, {load_desc})")
        print(
            f"  {'config':<21}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
            f"{'loss %':>8}  {'loss/round %':<15}{'+µs/req':>8}{'cpu µs':>8}{'+cpu µs':>8}"
            f"{'errors':>7}"
        )
        for c in configs:
            s = per[c]
            pr = s["loss_pct_per_round"]
            spread = f"{min(pr):.1f} .. {max(pr):.1f}" if pr else "—"
            print(
                f"  {c:<21}{fmt(s['rps'], '.0f', 9)}{fmt(s['p50_ms'], '.2f', 9)}"
                f"{fmt(s['p99_ms'], '.2f', 9)}{fmt(s['p999_ms'], '.2f', 10)}"
                f"{fmt(s['loss_pct'], '.1f', 8)}  {spread:<15}{fmt(s['added_us'], '.0f', 8)}"
                f"{fmt(s['cpu_us'], '.0f', 8)}{fmt(s['added_cpu_us'], '.0f', 8)}{s['errors']:>7}"
            )
        for c in configs:
            if c.startswith("pulsetrace") and c != "pulsetrace_disabled" and "otel" in per:
                text = ratio_text(per[c]["loss_pct"], per["otel"]["loss_pct"])
                target = f"  (target <= {TARGET_LOSS_RATIO:g})" if c == "pulsetrace" else ""
                print(f"  {c} loss / otel loss: {text}{target}")
                cpu_r = ratio(per[c]["added_cpu_us"], per["otel"]["added_cpu_us"])
                if cpu_r is not None:
                    print(f"    same on the worker's CPU time (+cpu µs / +cpu µs): {cpu_r:.3f}")
    print("\ntargets (on the medians):")
    if quick:
        print(
            f"  (quick mode: {rounds} rounds of {duration} s, on a machine other work may "
            "share: figures and verdicts are indicative only; --full gives figures to judge)"
        )
    for t in tgts:
        if quick:
            verdict = {
                True: "met (quick run)",
                False: "not met in this quick run (noisy)",
                None: "undetermined",
            }[t["met"]]
        else:
            verdict = {True: "met", False: "NOT MET", None: "undetermined"}[t["met"]]
        value = t.get("text") or fmt(t["value"], ".1f", 0).strip()
        print(f"  {t['name']}: {value}{t['unit']} (target <= {t['limit']:g}{t['unit']}): {verdict}")


def plot(
    path: Path,
    samples: list[dict[str, Any]],
    summary: dict[str, dict[str, Any]],
    configs: list[str],
    routes: list[str],
    title: str,
) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
    except ImportError as exc:
        return f"no PNG: matplotlib is not installed ({exc})"
    colors = {
        "none": "#444444",
        "pulsetrace": "#1f77b4",
        "pulsetrace_keep_all": "#17becf",
        "otel": "#ff7f0e",
    }
    styles = {"pulsetrace_keep_all": "--"}
    # One panel per route: a row up to three, then two per row (four routes: 2 x 2).
    ncols = len(routes) if len(routes) <= 3 else 2
    nrows = -(-len(routes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.6 * nrows + 0.3), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(routes) :]:
        ax.set_visible(False)
    ticks = [(50, "50%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%")]
    for ax, route in zip(flat, routes):
        ymin, ymax = float("inf"), 0.0
        for c in configs:
            ss = [s for s in samples if s["config"] == c and s["route"] == route]
            if not ss:
                continue
            # Median curve over the rounds, point by point; each round faintly.
            ps = [p for p, _ in ss[0]["percentiles"]]
            xs = [1 / (1 - p / 100) for p in ps]
            for s in ss:
                ys = [v / 1000 for _, v in s["percentiles"]]
                ax.plot(
                    xs, ys, color=colors.get(c), alpha=0.18, linewidth=0.8, ls=styles.get(c, "-")
                )
            med = [median([s["percentiles"][i][1] / 1000 for s in ss]) for i in range(len(ps))]
            per = summary[route][c]
            loss = "" if per["loss_pct"] is None else f", {-per['loss_pct']:+.1f}%"
            ax.plot(
                xs,
                med,
                color=colors.get(c),
                linewidth=2,
                ls=styles.get(c, "-"),
                label=f"{c}: {per['rps']:.0f} req/s{loss}",
            )
            ymax = max(ymax, *med)
            ymin = min(ymin, *med)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1 / (1 - p / 100) for p, _ in ticks]))
        ax.set_xticklabels([label for _, label in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(2, 1e4)
        # Log latency: the body (where a small per-request cost shows) and the tail
        # (where the export work of a batching agent shows) are both readable.
        ax.set_yscale("log")
        yticks = [0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
        ax.yaxis.set_major_locator(FixedLocator(yticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(ymin / 1.3, ymax * 1.6)
        ax.set_title(f"GET {route}")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(
            fontsize=8, loc="upper left", title="median; throughput vs none", title_fontsize=7
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_title(load_desc: str, settings: dict[str, Any], vers: dict[str, str]) -> str:
    return (
        f"Flask under gunicorn (1 sync worker), {load_desc}, median of {settings['rounds']} "
        f"rounds x {settings['duration_s']} s; pulsetrace {vers['pulsetrace']}, "
        f"OpenTelemetry SDK {vers['opentelemetry-sdk']} + OTLP/gRPC"
    )


def tracing_by_route(servers: list[dict[str, Any]], cfg: Config) -> dict[str, dict[str, Any]]:
    """Per route, summed over ``cfg``'s servers: the requests sent; the spans
    pulsetrace's histograms recorded during them (``recorded``, with the requests
    of the servers that reported it); the traces whose root span is the route's
    server span (``GET <route>``) and their spans, at the receiver."""
    out: dict[str, dict[str, Any]] = {}
    for s in servers:
        if s["config"] != cfg.name:
            continue
        for route, n in (s.get("requests_by_route") or {}).items():
            r = out.setdefault(
                route,
                {"requests": 0, "recorded": None, "recorded_requests": 0, "traces": 0, "spans": 0},
            )
            r["requests"] += n
            rec = (s.get("pulsetrace_spans_by_route") or {}).get(route)
            if rec is not None:
                r["recorded"] = (r["recorded"] or 0) + rec
                r["recorded_requests"] += n
            got = (s.get("receiver_by_root") or {}).get(f"GET {route}") or {}
            r["traces"] += got.get("traces", 0)
            r["spans"] += got.get("spans", 0)
    for r in out.values():
        r["recorded_per_request"] = (
            r["recorded"] / r["recorded_requests"] if r["recorded_requests"] else None
        )
        r["exported_per_trace"] = r["spans"] / r["traces"] if r["traces"] else None
        r["traces_per_request"] = r["traces"] / r["requests"] if r["requests"] else None
    return out


def redis_traced(by_route: dict[str, dict[str, Any]], key: str) -> Optional[dict[str, Any]]:
    """Spans per request on /redis minus on /json (or minus the server span alone
    without /json): one Redis command per request, so 1 when the agent traced it."""
    if "/redis" not in by_route or by_route["/redis"].get(key) is None:
        return None
    base = by_route.get("/json", {}).get(key)
    extra = by_route["/redis"][key] - (1.0 if base is None else base)
    verdict = "traced" if abs(extra - 1) <= 0.1 else "NOT traced" if extra < 0.5 else "unclear"
    return {
        "extra_spans_per_request": extra,
        "vs": "/json" if base is not None else "the server span alone",
        "measured": key,
        "verdict": verdict,
    }


def print_instrumentation(
    servers: list[dict[str, Any]], configs: list[Config]
) -> dict[str, dict[str, Any]]:
    """What each agent recorded or exported, against the requests sent, also per
    route; returns the per-route figures and the Redis verdict of every agent."""
    print("\ninstrumentation check (summed over the rounds; requests include warm-ups):")
    found: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        ss = [s for s in servers if s["config"] == cfg.name]
        sent = sum(s["requests_sent"] for s in ss)
        head = f"  {cfg.name:<21}"
        last = ss[-1]["info_start"] if ss else {}
        if cfg.agent == "none":
            print(f"{head}no agent loaded (checked in every server)")
        elif cfg.agent == "pulsetrace_off":
            print(f"{head}pulsetrace loaded and switched off (checked in every server)")
        if cfg.agent in ("none", "pulsetrace_off"):
            continue
        reqs = sum(s.get("receiver_export_requests", 0) for s in ss)
        exported = sum(s.get("receiver_spans", 0) for s in ss)
        received = (
            f"the OTLP receiver got {exported} spans in {reqs} export requests "
            f"({exported / max(sent, 1):.2f} per request)"
        )
        if cfg.agent == "otel":
            print(
                f"{head}{sent} HTTP requests sent; {received}; instrumentations loaded: "
                + ", ".join((last.get("opentelemetry") or {}).get("instrumentations", []))
            )
            by_route = tracing_by_route(servers, cfg)
            if by_route:
                print(
                    f"{'':<23}per route at the receiver, spans per trace (traces per request): "
                    + ", ".join(
                        f"{route} {fmt(r['exported_per_trace'], '.2f', 0)} "
                        f"({fmt(r['traces_per_request'], '.2f', 0)})"
                        for route, r in by_route.items()
                    )
                )
            found[cfg.name] = {
                "routes": by_route,
                "redis": redis_traced(by_route, "exported_per_trace"),
            }
        else:
            spans = sum(s.get("pulsetrace_spans_recorded", 0) for s in ss)
            counters: dict[str, int] = {}
            for s in ss:
                for k, v in (s.get("pulsetrace_counters") or {}).items():
                    counters[k] = counters.get(k, 0) + int(v)
            kept = sum(v for k, v in counters.items() if k.startswith("traces_kept_"))
            pt = last.get("pulsetrace") or {}
            print(
                f"{head}{sent} HTTP requests sent; {spans} spans recorded "
                f"({spans / max(sent, 1):.2f} per request); traces kept {kept}, sampled out "
                f"{counters.get('traces_dropped_sampled_out', 0)}, dropped on a full export "
                f"queue {counters.get('traces_dropped_export_full', 0)}; {received}; "
                f"integrations: {', '.join(pt.get('integrations', []))}; "
                f"exporters: {', '.join(pt.get('exporters', [])) or 'none'}"
            )
            by_route = tracing_by_route(servers, cfg)
            if by_route:
                print(
                    f"{'':<23}per route, spans recorded per request: "
                    + ", ".join(
                        f"{route} {fmt(r['recorded_per_request'], '.2f', 0)}"
                        for route, r in by_route.items()
                    )
                )
                if any(r["traces"] for r in by_route.values()):
                    print(
                        f"{'':<23}per route at the receiver, spans per trace (traces per "
                        "request): "
                        + ", ".join(
                            f"{route} {fmt(r['exported_per_trace'], '.2f', 0)} "
                            f"({fmt(r['traces_per_request'], '.3f', 0)})"
                            for route, r in by_route.items()
                        )
                    )
            found[cfg.name] = {
                "routes": by_route,
                "redis": redis_traced(by_route, "recorded_per_request"),
            }
        red = found[cfg.name]["redis"]
        if red is not None:
            where = {
                "recorded_per_request": "recorded",
                "exported_per_trace": "at the receiver",
            }[red["measured"]]
            print(
                f"{'':<23}Redis: {red['extra_spans_per_request']:+.2f} span per request on "
                f"/redis vs {red['vs']} ({where}): {red['verdict']}"
            )
    return found


def report_from_json(path: Path, png: Path) -> int:
    """Print the report of a saved run and redraw its PNG."""
    saved = json.loads(path.read_text())
    st = saved["settings"]
    configs = [Config(**c) for c in st["configs"].values()]
    names = [c.name for c in configs]
    load_desc = saved["load_generator"]["description"]
    print(f"flask_overhead ({saved['mode']}) from {path}, run {saved['started']}")
    for n in saved.get("notes", []):
        print(f"  note: {n}")
    la0, la1 = saved["machine"]["loadavg_start"], saved["machine"]["loadavg_end"]
    print(f"  load average at start {la0[0]:.2f}, at end {la1[0]:.2f}")
    print_report(
        saved["summary"], names, st["rounds"], st["duration_s"], load_desc, saved["targets"]
    )
    print_instrumentation(saved["servers"], configs)
    print(f"elapsed: {saved['elapsed_s']:.1f} s")
    note = plot(
        png,
        saved["samples"],
        saved["summary"],
        names,
        st["routes"],
        plot_title(load_desc, st, saved["versions"]),
    )
    print(note or f"PNG: {png}")
    return 0


# --------------------------------------------------------------------------- main


def versions(wrk: Optional[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "pulsetrace",
        "flask",
        "werkzeug",
        "gunicorn",
        "requests",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-distro",
        "opentelemetry-instrumentation",
        "opentelemetry-instrumentation-flask",
        "opentelemetry-instrumentation-requests",
        "opentelemetry-instrumentation-sqlite3",
        "opentelemetry-instrumentation-redis",
        "redis",
        "opentelemetry-exporter-otlp-proto-grpc",
        "grpcio",
        "protobuf",
        "matplotlib",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if wrk:
        out["wrk"] = wrk_version(wrk)
    return out


def provenance() -> dict[str, Any]:
    """Which pulsetrace is measured: where it is imported from (the venv's editable
    install may point at another checkout) and this checkout's commit."""
    repo = HERE.parent.parent
    spec = importlib.util.find_spec("pulsetrace")
    origin = str(Path(spec.origin).resolve().parent) if spec and spec.origin else None
    native = importlib.util.find_spec("pulsetrace._native") if origin else None
    git = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "pulsetrace_imported_from": origin,
        "pulsetrace_native": native.origin if native else None,
        "from_this_checkout": bool(origin) and Path(str(origin)).is_relative_to(repo.resolve()),
        "checkout": str(repo),
        "commit": git.stdout.strip() or None,
        "uncommitted_changes": bool(dirty.stdout.strip()) if git.returncode == 0 else None,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG, help=f"default {DEFAULT_PNG}")
    ap.add_argument("--rounds", type=int, help="override the mode's rounds")
    ap.add_argument("--duration", type=int, help="seconds of load per route (override)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up per route (override)")
    ap.add_argument("--configs", help="comma-separated subset, e.g. none,pulsetrace")
    ap.add_argument("--routes", help="comma-separated subset, e.g. /json,/sqlite")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="lower the niceness of the harness and every process it starts by N (needs "
        "root): on a shared machine, less of the other processes' noise. Default 0",
    )
    ap.add_argument(
        "--pin",
        default="off",
        metavar="SPEC",
        help="CPU pinning: off (default: servers and load generator share every CPU), "
        "auto (the server alone on the last CPU, the load generator and helpers on the "
        "others), or SERVER/LOAD lists such as 1/0",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="run nothing: print the report of a saved JSON and redraw --png from it",
    )
    args = ap.parse_args(argv)
    if args.from_json:
        return report_from_json(args.from_json, args.png)
    mode_name = args.mode or "quick"
    m = MODES[mode_name]
    rounds = args.rounds or m["rounds"]
    duration = args.duration or m["duration"]
    warmup = args.warmup if args.warmup is not None else m["warmup"]
    config_names: list[str] = args.configs.split(",") if args.configs else list(m["configs"])
    routes: list[str] = args.routes.split(",") if args.routes else list(ROUTES)
    t_start = time.monotonic()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()

    notes: list[str] = [NOTE_EXPORT]
    if args.nice:
        # Inherited by every child: servers, receiver, load generator, alike for all configs.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - args.nice)
            notes.append(f"niceness lowered by {args.nice} for the harness and its processes")
        except OSError as exc:
            notes.append(f"--nice {args.nice} not applied ({exc.strerror})")
    PIN.clear()
    PIN.update(choose_pin(args.pin))
    if PIN:
        # The harness itself (and the Python load generator, which runs in it)
        # belongs with the load.
        os.sched_setaffinity(0, {int(c) for c in PIN["load"].split(",")})
        notes.append(
            f"pinned: the server under test on CPU {PIN['server']}, the load generator and "
            f"helpers on CPU {PIN['load']}"
        )
    else:
        notes.append("not pinned: servers and load generator share every CPU")
    skipped: dict[str, str] = {}
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and not wrk:
        raise HarnessError("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    load_name = "wrk" if wrk and args.loadgen != "python" else "python"
    if load_name == "python":
        why = "forced by --loadgen python" if args.loadgen == "python" else "wrk not found"
        notes.append(f"load generator: the Python fallback (loadgen.py), {why}")
        load_desc = f"python loadgen, {CONNECTIONS} connections"
    else:
        load_desc = f"wrk -t{THREADS} -c{CONNECTIONS}"
    vers = versions(wrk if load_name == "wrk" else None)
    prov = provenance()
    if not prov["from_this_checkout"]:
        notes.append(
            f"pulsetrace is imported from {prov['pulsetrace_imported_from']}, not from this "
            f"checkout ({prov['checkout']}): the venv's install points elsewhere"
        )

    # Missing optional pieces: skip what needs them, say so.
    if vers["requests"] == "not installed" and "/outbound" in routes:
        routes.remove("/outbound")
        skipped["/outbound"] = "requests is not installed"
    if "otel" in config_names:
        missing = [
            d
            for d in (
                "opentelemetry-distro",
                "opentelemetry-instrumentation-flask",
                "opentelemetry-exporter-otlp-proto-grpc",
            )
            if vers[d] == "not installed"
        ]
        if missing or not venv_bin("opentelemetry-instrument"):
            config_names.remove("otel")
            skipped["otel"] = f"not installed: {', '.join(missing) or 'opentelemetry-instrument'}"
    redis_server = shutil.which("redis-server")
    if "/redis" in routes:
        why_not = None
        if vers["redis"] == "not installed":
            why_not = "redis (redis-py) is not installed"
        elif not redis_server:
            why_not = "redis-server is not installed (apt-get install -y redis-server)"
        elif "otel" in config_names and vers["opentelemetry-instrumentation-redis"] == (
            "not installed"
        ):
            why_not = (
                "opentelemetry-instrumentation-redis is not installed: otel would not trace it"
            )
        if why_not:
            routes.remove("/redis")
            skipped["/redis"] = why_not
    if redis_server:
        vers["redis-server"] = redis_server_version(redis_server)
    # The receiver needs grpcio and opentelemetry-proto; without them no agent exports.
    have_receiver = all(
        importlib.util.find_spec(m) is not None for m in ("grpc", "opentelemetry.proto")
    )
    if not have_receiver:
        skipped["receiver"] = (
            "grpcio or opentelemetry-proto is not installed: no OTLP receiver, every agent's "
            "exporter is off (OTEL_TRACES_EXPORTER=none)"
        )
    for what, why in skipped.items():
        fix = "" if "apt-get" in why else f" (pip install -r {HERE.name}/requirements.txt)"
        notes.append(f"SKIPPED {what}: {why}{fix}")

    print(f"flask_overhead ({mode_name}): configs {', '.join(config_names)}", end="")
    print(f"; routes {', '.join(routes)}")
    print(
        f"  {rounds} rounds, interleaved; per server: {warmup} s warm-up + {duration} s load per "
        f"route; {load_desc}"
        + (f" ({vers['wrk']})" if load_name == "wrk" else "")
        + "; gunicorn 1 sync worker"
    )
    for n in notes:
        print(f"  note: {n}")
    print(
        f"  pulsetrace imported from {prov['pulsetrace_imported_from']}; this checkout at "
        f"{prov['commit']}" + (" + uncommitted changes" if prov["uncommitted_changes"] else "")
    )
    print(
        f"  load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
        flush=True,
    )

    log_dir = Path(tempfile.mkdtemp(prefix="pt-flask-overhead-"))
    procs = Processes(log_dir)
    samples: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    receiver_info: dict[str, Any] = {}
    redis_info: dict[str, Any] = {}
    redis_proc: Optional[subprocess.Popen[bytes]] = None
    ok = False

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        env0 = base_env()
        # The upstream of /outbound, shared by every configuration, stopped with the rest.
        _, outbound_port, _, _ = start_gunicorn(procs, "outbound", [], "outbound_server:app", env0)
        env0["BENCH_OUTBOUND_URL"] = f"http://{HOST}:{outbound_port}/"
        if "/redis" in routes and redis_server:
            # The server of /redis, shared by every configuration, uninstrumented.
            redis_proc, redis_port = start_redis(procs, redis_server, log_dir / "redis-data")
            redis_info.update({"pid": redis_proc.pid, "port": redis_port})
            env0["BENCH_REDIS_HOST"] = HOST
            env0["BENCH_REDIS_PORT"] = str(redis_port)
        receiver_port: Optional[int] = None
        stats_path = log_dir / "receiver-stats.json"
        if have_receiver and any(c != "none" for c in config_names):
            _, receiver_port = start_receiver(procs, base_env(), stats_path)
            receiver_info["port"] = receiver_port
        all_configs = make_configs(receiver_port)
        configs = [all_configs[c] for c in config_names]

        for rnd in range(rounds):
            order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
            route_order = routes[rnd % len(routes) :] + routes[: rnd % len(routes)]
            print(f"\nround {rnd + 1}/{rounds}: " + " -> ".join(c.name for c in order), flush=True)
            for cfg in order:
                env = {**env0, **cfg.env}
                rcv_before = read_stats(stats_path)
                proc, port, info, startup = start_gunicorn(
                    procs, f"app-{cfg.name}", cfg.launcher, "app:app", env
                )
                server: dict[str, Any] = {
                    "round": rnd,
                    "config": cfg.name,
                    "startup_s": startup,
                    "info_start": info,
                    "requests_sent": 0,
                    "requests_by_route": {},
                }
                worker_pid = int(info["pid"])
                tracks_spans = cfg.agent == "pulsetrace"
                if tracks_spans:
                    server["pulsetrace_spans_by_route"] = {}
                    spans_before = pulsetrace_spans(info, app_only=True)
                try:
                    check_instrumented(cfg, info, routes)
                    line = []
                    for route in route_order:
                        sent_route = 0
                        if route == "/redis":
                            # The key is there and the app reaches the server.
                            status, body = http_get(port, route, timeout=5.0)
                            sent_route += 1
                            if status != 200 or not json.loads(body).get("found"):
                                raise HarnessError(f"{cfg.name}: GET /redis: {status} {body!r}")
                        if warmup > 0:
                            w = drive(load_name, port, route, warmup)
                            sent_route += w["requests"]
                        cpu0 = process_cpu_s(worker_pid)
                        s = drive(load_name, port, route, duration)
                        cpu1 = process_cpu_s(worker_pid)
                        sent_route += s["requests"]
                        server["requests_sent"] += sent_route
                        server["requests_by_route"][route] = sent_route
                        if tracks_spans:
                            # What the histograms recorded during this route's requests.
                            status, body = http_get(port, "/_bench/info", timeout=5.0)
                            if status == 200:
                                now = pulsetrace_spans(json.loads(body), app_only=True)
                                server["pulsetrace_spans_by_route"][route] = now - spans_before
                                spans_before = now
                        s["worker_cpu_s"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                        s["cpu_us_per_request"] = (
                            s["worker_cpu_s"] * 1e6 / s["requests"]
                            if s["worker_cpu_s"] is not None and s["requests"]
                            else None
                        )
                        s.update({"round": rnd, "config": cfg.name, "route": route})
                        samples.append(s)
                        line.append(
                            f"{route} {s['rps']:.0f}/s"
                            + (f" ({s['error_count']} errors)" if s["error_count"] else "")
                        )
                    status, body = http_get(port, "/_bench/info", timeout=5.0)
                    server["info_end"] = json.loads(body) if status == 200 else None
                    if (server["info_end"] or {}).get("pid") != worker_pid:
                        # gunicorn replaced a dead worker: its figures mix two processes.
                        server["worker_restarted"] = True
                        line.append("WORKER RESTARTED (crash?): see the errors column")
                finally:
                    t_stop = time.monotonic()
                    server["exit_code"] = procs.stop(proc)
                    server["stop_s"] = time.monotonic() - t_stop
                # The server has stopped (an agent flushes at SIGTERM): what it exported.
                after = read_stats(stats_path)
                server["receiver_export_requests"] = after["requests"] - rcv_before["requests"]
                server["receiver_spans"] = after["spans"] - rcv_before["spans"]
                server["receiver_by_root"] = by_root_delta(rcv_before, after)
                if cfg.agent == "pulsetrace" and server.get("info_end"):
                    server["pulsetrace_spans_recorded"] = pulsetrace_spans(server["info_end"])
                    server["pulsetrace_counters"] = server["info_end"]["pulsetrace"]["counters"]
                servers.append(server)
                sent = max(server["requests_sent"], 1)
                extra = ""
                if "pulsetrace_spans_recorded" in server:
                    extra += (
                        f"; {server['pulsetrace_spans_recorded'] / sent:.2f} spans/req recorded"
                    )
                if cfg.agent != "none":
                    extra += f"; {server['receiver_spans'] / sent:.2f} spans/req exported"
                print(
                    f"  {cfg.name:<21} up in {startup:.1f} s, down in {server['stop_s']:.1f} s; "
                    + ", ".join(line)
                    + extra,
                    flush=True,
                )
        receiver_info.update(read_stats(stats_path))
        ok = True
    finally:
        if redis_proc is not None:
            redis_info["exit_code"] = procs.stop(redis_proc)
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"\nharness failed; process logs kept in {log_dir}", file=sys.stderr)

    summary = summarize(samples, config_names, routes)
    tgts = targets(summary)
    print_report(
        summary, config_names, rounds, duration, load_desc, tgts, quick=mode_name == "quick"
    )
    for what, why in skipped.items():
        print(f"  SKIPPED {what}: {why}")

    tracing = print_instrumentation(servers, [all_configs[c] for c in config_names])
    pt_servers = [s for s in servers if all_configs[s["config"]].agent == "pulsetrace"]
    if pt_servers and not any(s.get("receiver_spans") for s in pt_servers):
        notes.append(NOTE_NO_EXPORT)
        print(f"  note: {NOTE_NO_EXPORT}")
    elapsed = time.monotonic() - t_start
    load_end = os.getloadavg()
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print(f"elapsed: {elapsed:.1f} s")

    settings = {
        "rounds": rounds,
        "duration_s": duration,
        "warmup_s": warmup,
        "routes": routes,
        "configs": {c: vars(all_configs[c]) for c in config_names},
        "threads": THREADS,
        "connections": CONNECTIONS,
        "server": "gunicorn, 1 sync worker, fresh per configuration per round",
    }
    png_note = plot(
        args.png, samples, summary, config_names, routes, plot_title(load_desc, settings, vers)
    )
    if png_note:
        notes.append(png_note)
        print(png_note)
    else:
        print(f"PNG: {args.png}")

    report = {
        "benchmark": "flask_overhead",
        "mode": mode_name,
        "started": started,
        "elapsed_s": elapsed,
        "settings": settings,
        "load_generator": {"name": load_name, "description": load_desc},
        "versions": vers,
        "provenance": prov,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "notes": notes,
        "skipped": skipped,
        "receiver": receiver_info,
        "redis_server": redis_info,
        "summary": summary,
        "targets": tgts,
        "tracing": tracing,
        "servers": servers,
        "samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
