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
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

# The harness's modules (overhead/) sit beside this script (on sys.path as its folder).
from overhead.instrumentation import print_instrumentation, report_from_json
from overhead.meta import provenance, versions
from overhead.plots import plot, plot_title
from overhead.procs import (
    PIN,
    HarnessError,
    Processes,
    base_env,
    by_root_delta,
    choose_pin,
    drive,
    http_get,
    process_cpu_s,
    read_stats,
    redis_server_version,
    start_gunicorn,
    start_receiver,
    start_redis,
)
from overhead.settings import (
    CONNECTIONS,
    DEFAULT_JSON,
    DEFAULT_PNG,
    HERE,
    HOST,
    MODES,
    NOTE_EXPORT,
    NOTE_NO_EXPORT,
    ROUTES,
    THREADS,
    make_configs,
    venv_bin,
)
from overhead.summary import check_instrumented, print_report, pulsetrace_spans, summarize, targets


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
