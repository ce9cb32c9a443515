#!/usr/bin/env python3
"""Memory of a gunicorn worker with each agent, in one run: the same Flask app
(``benchmarks/flask_overhead/app.py``, one sync worker) with no agent, with
pulsetrace (no exporter, and exporting over OTLP/gRPC), with OpenTelemetry
(``opentelemetry-instrument``: SDK, BatchSpanProcessor, OTLP/gRPC) and with
ddtrace (``ddtrace-run``), each driven with REQUESTS requests to ``/json`` and
read after warm-up.

    python benchmarks/memory/workers.py [--quick|--full] [--requests N] [--json PATH]

Per configuration, a fresh gunicorn: WARMUP requests, then the rest; the
worker's and the master's VmRSS, PSS and private memory, and the worker's
shared memory (``/proc/PID/smaps_rollup``: pages a worker still shares with
the master since the fork count half in PSS, not at all in private, and in
shared), at the end, and the worker's RSS at each tenth (the growth over
the second half shows a plateau, not a leak). The agent's own memory is the
worker's RSS over the no-agent worker's. The gRPC library is reported apart:
pulsetrace with OTLP/gRPC minus pulsetrace with ``OTEL_TRACES_EXPORTER=none``,
and the RSS of ``import grpc`` in a bare interpreter. The OTLP exporters send
to the local receiver of ``benchmarks/flask_overhead``; ddtrace sends to a
port where no Datadog agent listens (its writer drops what it cannot send,
as it does in production when the agent is down). A configuration whose
launcher is not installed is skipped, and said so.

Exits 0 whatever the figures (the target is printed beside them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
APP_DIR = HERE.parent / "flask_overhead"
DEFAULT_JSON = HERE.parent / "results" / "memory_workers.json"
REQUESTS = {"quick": 20_000, "full": 100_000}
WARMUP = 2_000
CHECKPOINTS = 10
HOST = "127.0.0.1"
#: The agent's own memory per worker that pulsetrace aims at (MiB over no
#: agent, the gRPC library apart).
TARGET_MIB = 15.0


def venv_bin(name: str) -> Optional[str]:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def kib(pid: int, path: str, field: str) -> Optional[int]:
    """A ``kB`` field of /proc/PID/status or smaps_rollup, or None."""
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(pid: int) -> dict[str, Optional[int]]:
    """RSS, PSS, and RSS split into private pages and pages shared (with the
    master, for a worker: what fork left in common and neither wrote since)."""

    def both(a: str, b: str) -> Optional[int]:
        x, y = kib(pid, "smaps_rollup", a), kib(pid, "smaps_rollup", b)
        return None if x is None or y is None else x + y

    return {
        "rss_kib": kib(pid, "status", "VmRSS"),
        "pss_kib": kib(pid, "smaps_rollup", "Pss"),
        "private_kib": both("Private_Clean", "Private_Dirty"),
        "shared_kib": both("Shared_Clean", "Shared_Dirty"),
    }


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def clean_env() -> dict[str, str]:
    """This environment without any agent setting, this interpreter's bin first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PULSETRACE_", "APM_", "DD_"))
    }
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def configs(receiver_port: int) -> dict[str, tuple[str, list[str], dict[str, str]]]:
    """name -> (description, launcher, environment)."""
    otlp = {
        "OTEL_SERVICE_NAME": "flask-memory",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{receiver_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    pt, otel, dd = (
        venv_bin(n) for n in ("pulsetrace-run", "opentelemetry-instrument", "ddtrace-run")
    )
    out: dict[str, tuple[str, list[str], dict[str, str]]] = {"none": ("no agent", [], {})}
    if pt:
        out["pulsetrace_no_export"] = (
            "pulsetrace-run, OTEL_TRACES_EXPORTER=none",
            [pt],
            {**otlp, "OTEL_TRACES_EXPORTER": "none"},
        )
        out["pulsetrace_grpc"] = ("pulsetrace-run, OTLP/gRPC exporter", [pt], otlp)
    if otel:
        out["otel"] = ("opentelemetry-instrument, SDK + OTLP/gRPC exporter", [otel], otlp)
    if dd:
        out["ddtrace"] = (
            "ddtrace-run (no Datadog agent listening)",
            [dd],
            {
                "DD_SERVICE": "flask-memory",
                "DD_TRACE_AGENT_URL": f"http://{HOST}:{free_port()}",
                "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
                "DD_REMOTE_CONFIGURATION_ENABLED": "false",
                "DD_TRACE_STARTUP_LOGS": "false",
            },
        )
    return out


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            if get(port, "/json") == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer")


def measure(name: str, launcher: list[str], env: dict[str, str], n: int) -> dict[str, Any]:
    port = free_port()
    cmd = [
        *launcher,
        str(venv_bin("gunicorn")),
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--bind",
        f"{HOST}:{port}",
        "--chdir",
        str(APP_DIR),
        "--no-control-socket",
        "--log-level",
        "warning",
        "app:app",
    ]
    proc = subprocess.Popen(cmd, env={**clean_env(), **env}, start_new_session=True)
    try:
        wait_ready(proc, port)
        workers = children(proc.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker, found {workers}")
        worker = workers[0]
        for _ in range(WARMUP):
            get(port, "/json")
        curve = [(0, kib(worker, "status", "VmRSS"))]
        chunk = max(n // CHECKPOINTS, 1)
        done, errors = 0, 0
        t0 = time.monotonic()
        while done < n:
            for _ in range(min(chunk, n - done)):
                errors += get(port, "/json") != 200
            done = min(n, done + chunk)
            curve.append((done, kib(worker, "status", "VmRSS")))
        seconds = time.monotonic() - t0
        time.sleep(1.0)  # let a batching exporter send what it holds
        if children(proc.pid) != [worker]:
            raise RuntimeError("gunicorn replaced its worker during the run")
        half = curve[len(curve) // 2][1]
        return {
            "requests": n,
            "warmup": WARMUP,
            "errors": errors,
            "seconds": seconds,
            "worker": memory(worker),
            "master": memory(proc.pid),
            "curve_kib": curve,
            "second_half_growth_kib": (curve[-1][1] or 0) - (half or 0),
        }
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def import_grpc_kib() -> Optional[int]:
    """RSS growth of ``import grpc`` in a bare interpreter."""
    code = (
        "import os\n"
        "def r():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "a = r()\nimport grpc\nprint((r() - a) // 1024)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        return int(out.stdout.strip())
    except (ValueError, subprocess.TimeoutExpired):
        return None


def start_receiver() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(APP_DIR / "receiver.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "READY":
        proc.kill()
        raise RuntimeError(f"the receiver did not start: {line}")
    return proc, int(line[1])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--requests", type=int, help="requests per configuration (after warm-up)")
    ap.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    mode_name = args.mode or "quick"
    n = args.requests or REQUESTS[mode_name]
    receiver, receiver_port = start_receiver()
    results: dict[str, Any] = {}
    try:
        all_configs = configs(receiver_port)
        skipped = sorted(
            {"pulsetrace_no_export", "pulsetrace_grpc", "otel", "ddtrace"} - set(all_configs)
        )
        print(
            f"gunicorn worker memory, {mode_name} mode: {WARMUP:,} warm-up + {n:,} requests to "
            f"/json per configuration, one sync worker, one fresh gunicorn each"
        )
        for name, (desc, launcher, env) in all_configs.items():
            if args.only and name not in args.only:
                continue
            r = measure(name, launcher, env, n)
            r["description"] = desc
            results[name] = r
            w, m = r["worker"], r["master"]
            print(
                f"  {name:<22} worker RSS {w['rss_kib'] / 1024:6.1f} MiB  PSS "
                f"{w['pss_kib'] / 1024:6.1f}  private {w['private_kib'] / 1024:6.1f}  shared "
                f"{w['shared_kib'] / 1024:6.1f}  | master RSS {m['rss_kib'] / 1024:6.1f} MiB "
                f"private {m['private_kib'] / 1024:6.1f} | 2nd-half growth "
                f"{r['second_half_growth_kib'] / 1024:+.1f} MiB, {r['errors']} errors  ({desc})",
                flush=True,
            )
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    grpc_kib = import_grpc_kib()
    base = results.get("none", {}).get("worker", {}).get("rss_kib")
    own = {
        name: (r["worker"]["rss_kib"] - base) / 1024
        for name, r in results.items()
        if name != "none" and base is not None
    }
    print("\nthe agent's own memory per worker (worker RSS over no agent):")
    for name, mib in own.items():
        print(f"  {name:<22} {mib:+6.1f} MiB")
    summary: dict[str, Any] = {"agent_mib": own, "import_grpc_mib": None, "target_mib": TARGET_MIB}
    if grpc_kib is not None:
        summary["import_grpc_mib"] = grpc_kib / 1024
        print(f"  (import grpc alone, bare interpreter: {grpc_kib / 1024:.1f} MiB)")
    if "pulsetrace_no_export" in own and "pulsetrace_grpc" in own:
        grpc_part = own["pulsetrace_grpc"] - own["pulsetrace_no_export"]
        summary["pulsetrace_grpc_part_mib"] = grpc_part
        met = own["pulsetrace_no_export"] <= TARGET_MIB
        summary["met"] = met
        print(
            f"pulsetrace: {own['pulsetrace_no_export']:.1f} MiB without an exporter (target "
            f"<= {TARGET_MIB:.0f}: {'met' if met else 'NOT MET'}), plus {grpc_part:.1f} MiB with "
            "the OTLP/gRPC exporter (the gRPC library and the exporter)"
        )
    if skipped:
        print(f"skipped (launcher not installed): {', '.join(skipped)}")
    doc = {
        "mode": mode_name,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "requests": n,
        "skipped": skipped,
        "summary": summary,
        "configs": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
