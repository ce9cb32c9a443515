#!/usr/bin/env python3
"""The application's throughput while the monitoring endpoints are probed:
Flask ``/json`` under gunicorn (1 sync worker) with pulsetrace
(``pulsetrace-run``, ``MONITORING_ENABLED=true``: the monitoring server runs
beside the application, as deployed), driven by wrk (or the Python load
generator), unprobed against probed at 50 requests/s spread over
``/health/live``, ``/health``, ``/apm/transactions`` and ``/apm/status``.

One gunicorn serves every round, so the two states differ only by the
probes. Rounds are interleaved in pairs whose order alternates (unprobed
then probed, probed then unprobed, ...), so that a drift of the machine
weighs on both alike. Per pair the loss is ``1 - probed / unprobed`` req/s;
the report gives each pair's figures, the median loss and the target
(under 2%). With ``--control`` each pair is followed by a control pair in
which neither run is probed: its "loss" is the measurement's own noise (the
same interleaving, the same machine, no probes), printed beside the
result, so that a loss smaller than that noise is read as such.

With ``--mounted`` the endpoints are mounted in the application itself
(``pulsetrace.monitoring.mount.wsgi_app`` under ``/_pulsetrace``,
werkzeug's DispatcherMiddleware) and probed there, through the same
gunicorn worker: the worst case, each probe taking the worker from the
application.

Figures, not a test: it exits 0 whatever the numbers (non-zero only when the
harness fails). Reuses ``benchmarks/flask_overhead``'s harness (its app,
process handling, load generator).

    python benchmarks/monitoring/probed_throughput.py              # 5 pairs x 5 s
    python benchmarks/monitoring/probed_throughput.py --pairs 3 --seconds 3
    python benchmarks/monitoring/probed_throughput.py --mounted
    python benchmarks/monitoring/probed_throughput.py --pin auto --pairs 10
    python benchmarks/monitoring/probed_throughput.py --pairs 10 --control
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "flask_overhead"))

from overhead.procs import (  # noqa: E402
    PIN,
    HarnessError,
    Processes,
    base_env,
    choose_pin,
    drive,
    free_port,
    http_get,
    process_cpu_s,
    start_gunicorn,
)
from overhead.settings import HOST, venv_bin  # noqa: E402

PROBED = ["/health/live", "/health", "/apm/transactions", "/apm/status"]
RATE = 50.0
TARGET_LOSS = 0.02
RESULTS = HERE.parent / "results"
#: The app with the endpoints mounted (--mounted): flask_overhead's app,
#: unchanged, wrapped as an application would do it.
MOUNTED_APP = """
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from pulsetrace.monitoring.mount import wsgi_app
from app import app
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_pulsetrace": wsgi_app()})
"""


class Prober:
    """Probes ``paths`` round-robin on ``port`` at ``rate`` requests/s from
    a thread, one connection per probe, while it is on."""

    def __init__(self, port: int, prefix: str, rate: float) -> None:
        self.port, self.prefix, self.interval = port, prefix, 1.0 / rate
        self.on = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        #: This thread's own CPU time spent probing: it shares the machine
        #: with the application (a load balancer's probes come from another).
        self.cpu_s = 0.0
        self.request_head = f"GET {{}} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _get(self, path: str) -> int:
        """One probe on a new connection, read to its end: the status (0 on
        a failure). A bare socket: ``http.client`` costs several times the
        CPU of the request itself, on the cores the application uses."""
        try:
            with socket.create_connection((HOST, self.port), timeout=10) as sock:
                sock.sendall(self.request_head.format(path).encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            return int(data.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            return 0

    def _run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            if not self.on.wait(0.1):
                next_at = time.monotonic()
                continue
            path = self.prefix + PROBED[i % len(PROBED)]
            i += 1
            t0 = time.perf_counter()
            c0 = time.thread_time()
            status = self._get(path)
            self.cpu_s += time.thread_time() - c0
            self.latencies.append(time.perf_counter() - t0)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.sent += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: no burst to catch up


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5, help="unprobed/probed pairs (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="load per run (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up before the pairs, s")
    ap.add_argument("--rate", type=float, default=RATE, help="probes per second (default 50)")
    ap.add_argument("--mounted", action="store_true", help="probe the endpoints mounted in the app")
    ap.add_argument(
        "--control",
        action="store_true",
        help="after each pair, a control pair with no probes in either run (the noise)",
    )
    ap.add_argument("--json", type=Path, default=RESULTS / "probed_throughput.json")
    ap.add_argument(
        "--pin",
        default="off",
        help="auto: gunicorn (worker and the serving master) on the last CPU, wrk and the "
        "prober on the others, so the probes' cost falls on the worker's CPU and the load "
        "generator's noise does not; or SERVER/LOAD CPU lists; off (default)",
    )
    args = ap.parse_args(argv)
    PIN.clear()
    PIN.update(choose_pin(args.pin))
    if PIN:
        os.sched_setaffinity(0, {int(c) for c in PIN["load"].split(",")})  # the prober
        print(f"pinned: gunicorn on CPU {PIN['server']}, wrk and the prober on CPU {PIN['load']}")

    load_name = "wrk" if shutil.which("wrk") else "python"
    log_dir = Path(tempfile.mkdtemp(prefix="pt-probed-"))
    procs = Processes(log_dir)
    env = base_env()
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="probed-throughput")
    app = "app:app"
    if args.mounted:
        (log_dir / "mounted_app.py").write_text(MOUNTED_APP)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(log_dir), env.get("PYTHONPATH")]))
        app = "mounted_app:app"
    else:
        env.update(MONITORING_ENABLED="true", PULSETRACE_METRICS_ADDR=f"{HOST}:{free_port()}")
    print(
        f"probed_throughput: Flask /json, gunicorn 1 sync worker, pulsetrace-run; {load_name}; "
        f"{args.pairs} pairs x {args.seconds} s; probes {args.rate:g}/s over {', '.join(PROBED)}"
        + (" (mounted in the app)" if args.mounted else " (monitoring server)")
    )
    pairs: list[dict[str, Any]] = []
    controls: list[float] = []
    try:
        master, port, info, _ = start_gunicorn(
            procs, "app", [str(venv_bin("pulsetrace-run"))], app, env
        )
        probe_port = port if args.mounted else int(env["PULSETRACE_METRICS_ADDR"].rsplit(":")[1])
        prefix = "/_pulsetrace" if args.mounted else ""
        status, body = http_get(probe_port, prefix + "/health/live")
        if status != 200:
            raise HarnessError(f"GET {prefix}/health/live: {status} {body[:200]!r}")
        served_by = json.loads(body).get("pid")
        role = {master.pid: "the gunicorn master", int(info["pid"]): "the worker"}.get(
            served_by, "another process"
        )
        print(f"  the endpoints are served by pid {served_by} ({role})", flush=True)
        prober = Prober(probe_port, prefix, args.rate)

        def run_state(probed: bool) -> tuple[float, Optional[tuple[float, int]]]:
            """One load run: its req/s and the serving process's CPU
            seconds and probes sent meanwhile."""
            if probed:
                prober.on.set()
                time.sleep(0.2)  # the probes running before the load starts
            cpu0, sent0 = process_cpu_s(served_by), prober.sent
            r = drive(load_name, port, "/json", args.seconds)
            prober.on.clear()
            cpu1, sent1 = process_cpu_s(served_by), prober.sent
            if r["error_count"]:
                state = "probed" if probed else "unprobed"
                raise HarnessError(f"{state}: {r['error_count']} errors from the load")
            if cpu0 is None or cpu1 is None:
                return r["rps"], None
            return r["rps"], (cpu1 - cpu0, sent1 - sent0)

        drive(load_name, port, "/json", args.warmup)
        for i in range(args.pairs):
            order = ["unprobed", "probed"] if i % 2 == 0 else ["probed", "unprobed"]
            rps: dict[str, float] = {}
            cpu: dict[str, tuple[float, int]] = {}
            for state in order:
                r, cpu_state = run_state(state == "probed")
                if cpu_state is not None:
                    cpu[state] = cpu_state
                rps[state] = r
            if args.control:
                # The same two runs in the same order, neither probed.
                a, _ = run_state(False)
                b, _ = run_state(False)
                noise = 1 - (b / a if order[0] == "unprobed" else a / b)
                controls.append(noise)
            loss = 1 - rps["probed"] / rps["unprobed"]
            pairs.append({**rps, "loss": loss, "order": order, "cpu_s": cpu})
            extra = ""
            if len(cpu) == 2 and cpu["probed"][1]:
                # CPU of the process serving the endpoints, beyond what it
                # spends unprobed, per probe (noise-robust, unlike req/s).
                per = (cpu["probed"][0] - cpu["unprobed"][0]) / cpu["probed"][1] * 1e3
                pairs[-1]["cpu_ms_per_probe"] = per
                extra = f"  serving process: {per:.2f} ms CPU per probe"
            print(
                f"  pair {i + 1}: unprobed {rps['unprobed']:8.0f} req/s  "
                f"probed {rps['probed']:8.0f} req/s  loss {loss:+.2%}{extra}"
                + (f"  control {controls[-1]:+.2%}" if args.control else ""),
                flush=True,
            )
        prober.stop.set()
        prober.thread.join(2)
    except HarnessError as exc:
        print(f"probed_throughput: harness failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    median = statistics.median(p["loss"] for p in pairs)
    lat = prober.latencies
    print(
        f"  probes sent {prober.sent}, statuses {dict(sorted(prober.statuses.items()))}, "
        f"p50 {quantile(lat, 0.5) * 1e3:.1f} ms, p99 {quantile(lat, 0.99) * 1e3:.1f} ms"
    )
    per_probe = [p["cpu_ms_per_probe"] for p in pairs if "cpu_ms_per_probe" in p]
    if per_probe:
        med = statistics.median(per_probe)
        print(
            f"  CPU per probe (median) {med:.2f} ms: {med * args.rate / 10:.1f}% of one core "
            f"at {args.rate:g} probes/s"
        )
    if prober.sent:
        print(
            f"  the prober's own CPU per probe {prober.cpu_s / prober.sent * 1e3:.2f} ms "
            "(on the same cores: counted in the loss, as no load balancer's probe is)"
        )
    verdict = "met" if median < TARGET_LOSS else "NOT met"
    print(f"  median loss {median:+.2%} (target under {TARGET_LOSS:.0%}: {verdict})")
    if controls:
        spread = statistics.median(abs(c) for c in controls)
        print(
            "  control pairs (no probes in either run): "
            f"median {statistics.median(controls):+.2%}, median |noise| {spread:.2%}, "
            f"range {min(controls):+.2%} to {max(controls):+.2%}"
        )
    RESULTS.mkdir(exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "pairs": pairs,
                "median_loss": median,
                "probes": {"sent": prober.sent, "statuses": prober.statuses},
                "mounted": args.mounted,
                "control_losses": controls,
                "loadgen": load_name,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
