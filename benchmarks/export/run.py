#!/usr/bin/env python3
"""Export benchmarks: OTLP encoding, CPU per exported span, Prometheus exposition.

    python benchmarks/export/run.py [--quick|--full] [--json PATH] [--parts encoding,cpu,exposition]

1. encoding: pulsetrace's native OTLP encoder vs opentelemetry-exporter-otlp-proto-common
   on the same 512 spans, in one process, interleaved rounds (encoding.py).
2. cpu: total CPU time per exported span, pulsetrace vs the OpenTelemetry SDK, each in a
   process of its own, sending over OTLP/gRPC to a counting receiver in a third process
   (cpu_worker.py, receiver.py).
3. exposition: ``render_metrics`` for registries of 1,000 and 10,000 series, both
   formats: time, bytes, memory (exposition.py, one fresh process per size and format).

Figures, not tests: exits 0 whatever they are (prints "NOT MET" next to a missed
target); non-zero only when the harness itself broke (a worker crashed, a receiver
did not start).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from common import HERE, child_env, loadavg, missing_modules, run_child, stats, versions

DEFAULT_JSON = HERE.parent / "results" / "export.json"
PARTS = ("encoding", "cpu", "exposition")
MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "encoding_rounds": 9,
        "encoding_sample_ms": 20.0,
        "cpu_spans": 20_000,
        "cpu_rounds": 2,
        "exposition_series": (1_000, 10_000),
        "exposition_rounds": 5,
    },
    "full": {
        "encoding_rounds": 25,
        "encoding_sample_ms": 100.0,
        "cpu_spans": 200_000,
        "cpu_rounds": 5,
        "exposition_series": (1_000, 10_000),
        "exposition_rounds": 21,
    },
}
#: Targets: encoding speed-up (OpenTelemetry ns / pulsetrace ns) at least this;
#: CPU per exported span (pulsetrace / OpenTelemetry) at most this.
ENCODING_SPEEDUP_TARGET = 10.0
CPU_RATIO_TARGET = 0.1
#: Payload sizes of the two encoders differ by at most this share ("similar").
PAYLOAD_SIZE_TOLERANCE = 0.10

NEEDS = {
    "encoding": (
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.common",
        "opentelemetry.proto",
    ),
    "cpu": (
        "grpc",
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.grpc",
        "opentelemetry.proto",
    ),
    "exposition": (),
}
INSTALL_HINT = "pip install -r benchmarks/export/requirements.txt"


QUICK_NOTE = (
    "quick mode: few short samples on a machine other work may share; figures and "
    "verdicts are indicative only (--full gives figures to judge)"
)


def verdict(ok: bool, quick: bool = False) -> str:
    if quick:
        return "met (quick run)" if ok else "not met in this quick run (noisy)"
    return "met" if ok else "NOT MET"


# -- 1. encoding ---------------------------------------------------------------------


def run_encoding(mode: dict[str, Any], tmp: Path) -> dict[str, Any]:
    rounds, sample_ms = mode["encoding_rounds"], mode["encoding_sample_ms"]
    print(
        f"\n--- 1. OTLP encoding: 512 spans per batch, {rounds} interleaved rounds, "
        f"~{sample_ms:g} ms per sample ---",
        flush=True,
    )
    r = run_child(
        "encoding.py",
        ["--rounds", str(rounds), "--sample-ms", str(sample_ms)],
        tmp / "encoding.json",
        timeout=600,
    )
    print(f"{'ns per span':<16}{'median':>10}{'p25':>10}{'p75':>10}{'min':>10}  reps/sample")
    for clock in ("cpu", "wall"):
        for side in ("pulsetrace", "opentelemetry"):
            s = r[f"{clock}_ns_per_span"][side]
            print(
                f"{side + ' ' + clock:<16}{s['median']:>10.0f}{s['p25']:>10.0f}"
                f"{s['p75']:>10.0f}{s['min']:>10.0f}  {r['reps_per_sample'][side]}"
            )
    pt, ot = r["payload"]["pulsetrace"], r["payload"]["opentelemetry"]
    print("payload (one ExportTraceServiceRequest of the batch, decoded back):")
    for side, p in (("pulsetrace", pt), ("opentelemetry", ot)):
        print(
            f"  {side:<14} {p['bytes']:>8} bytes  {p['spans']} spans, {p['traces']} traces, "
            f"{p['with_parent']} with a parent, {p['attributes']} attributes, "
            f"{p['events']} events, {p['resource_attributes']} resource attributes"
        )
    size_diff = abs(pt["bytes"] - ot["bytes"]) / max(ot["bytes"], 1)
    same_content = all(
        pt[k] == ot[k] for k in ("spans", "traces", "with_parent", "attributes", "events", "names")
    )
    sizes_ok = size_diff <= PAYLOAD_SIZE_TOLERANCE
    print(
        f"  sizes differ by {size_diff * 100:.1f} % (similar: within "
        f"{PAYLOAD_SIZE_TOLERANCE * 100:.0f} %: {'yes' if sizes_ok else 'NO'}); same spans, "
        f"names, parents, attributes and events: {'yes' if same_content else 'NO'}"
    )
    cpu_speedup = (
        r["cpu_ns_per_span"]["opentelemetry"]["median"]
        / r["cpu_ns_per_span"]["pulsetrace"]["median"]
    )
    wall_speedup = (
        r["wall_ns_per_span"]["opentelemetry"]["median"]
        / r["wall_ns_per_span"]["pulsetrace"]["median"]
    )
    cr, wr = r["cpu_ratio_per_round"], r["wall_ratio_per_round"]
    print(
        f"speed-up (OpenTelemetry / pulsetrace, CPU time): {cpu_speedup:.1f}x "
        f"(per round p25..p75 {cr['p25']:.1f}..{cr['p75']:.1f}x); wall clock: "
        f"{wall_speedup:.1f}x (per round {wr['p25']:.1f}..{wr['p75']:.1f}x)"
    )
    met = cpu_speedup >= ENCODING_SPEEDUP_TARGET
    print(
        f"target: pulsetrace >= {ENCODING_SPEEDUP_TARGET:g}x faster (CPU time): "
        f"{cpu_speedup:.1f}x  {verdict(met, mode['quick'])}"
    )
    r["summary"] = {
        "speedup_cpu": cpu_speedup,
        "speedup_wall": wall_speedup,
        "target_speedup": ENCODING_SPEEDUP_TARGET,
        "met": met,
        "payload_size_diff": size_diff,
        "payload_sizes_similar": sizes_ok,
        "payload_same_content": same_content,
    }
    return r


# -- 2. CPU per exported span ----------------------------------------------------------


class Receiver:
    """receiver.py in a process of its own, asked for its counts over stdin."""

    def __init__(self) -> None:
        env, _ = child_env()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "receiver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        try:
            line = self._readline(30.0)
            if not line.startswith("port "):
                raise RuntimeError(f"receiver.py said {line!r} instead of its port")
            self.port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"receiver.py did not answer within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"receiver.py exited ({self.proc.poll()})")
        return line.strip()

    def counts(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        words = self._readline(10.0).split()
        return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}

    def wait_for(self, spans: int, timeout: float = 10.0) -> dict[str, int]:
        """Counts once at least ``spans`` spans arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts()
            if c["spans"] >= spans or time.monotonic() > deadline:
                return c
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def run_cpu(mode: dict[str, Any], tmp: Path) -> dict[str, Any]:
    spans, rounds = mode["cpu_spans"], mode["cpu_rounds"]
    print(
        f"\n--- 2. CPU per exported span: {spans} spans (traces of 1 root + 2 children, "
        f"3 attributes each), OTLP/gRPC to a counting receiver, {rounds} round(s) of one "
        "process per side ---",
        flush=True,
    )
    sides = ("pulsetrace", "opentelemetry")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    receiver = Receiver()
    try:
        for r in range(rounds):
            for side in sides[r % 2 :] + sides[: r % 2]:
                before = receiver.counts()
                res = run_child(
                    "cpu_worker.py",
                    ["--side", side, "--port", str(receiver.port), "--spans", str(spans)],
                    tmp / f"cpu-{side}-{r}.json",
                    timeout=1800,
                )
                expected = res["warmup_spans"] + res["spans"]
                after = receiver.wait_for(before["spans"] + expected)
                got = after["spans"] - before["spans"]
                res["receiver"] = {
                    "spans": got,
                    "requests": after["requests"] - before["requests"],
                    "bytes": after["bytes"] - before["bytes"],
                    "expected_spans": expected,
                    "ok": got == expected and res["sent_by_exporter"] == res["spans"],
                }
                runs[side].append(res)
                print(
                    f"  round {r + 1} {side:<14} {res['cpu_us_per_span']:7.2f} µs/span  "
                    f"(CPU {res['total']['cpu_s']:.3f} s - idle {res['baseline']['cpu_s']:.3f} s; "
                    f"loop {res['loop']['cpu_s']:.3f} s + flush {res['flush']['cpu_s']:.3f} s; "
                    f"wall {res['total']['wall_s']:.2f} s)  receiver got {got}/{expected} spans "
                    f"in {res['receiver']['requests']} requests"
                    + ("" if res["receiver"]["ok"] else "  SPANS MISSING"),
                    flush=True,
                )
    finally:
        receiver.stop()

    per_span = {s: stats([x["cpu_us_per_span"] for x in runs[s]]) for s in sides}
    ratio = per_span["pulsetrace"]["median"] / per_span["opentelemetry"]["median"]
    per_round = [
        p["cpu_us_per_span"] / o["cpu_us_per_span"]
        for p, o in zip(runs["pulsetrace"], runs["opentelemetry"])
    ]
    all_arrived = all(x["receiver"]["ok"] for s in sides for x in runs[s])
    print(f"{'µs CPU per span':<16}{'median':>10}{'min':>10}{'max':>10}  user/system (last round)")
    for s in sides:
        last = runs[s][-1]["total"]
        print(
            f"{s:<16}{per_span[s]['median']:>10.2f}{per_span[s]['min']:>10.2f}"
            f"{per_span[s]['max']:>10.2f}  {last['user_s']:.3f} s / {last['system_s']:.3f} s"
        )
    print(
        "every span arrived at the receiver: "
        + ("yes" if all_arrived else "NO (the figures are not per exported span)")
    )
    met = ratio <= CPU_RATIO_TARGET and all_arrived
    rounds_text = ", ".join(f"{x:.3f}" for x in per_round)
    print(
        f"target: pulsetrace <= 1/{1 / CPU_RATIO_TARGET:g} of OpenTelemetry's CPU per exported "
        f"span: {ratio:.3f} (1/{1 / ratio if ratio > 0 else float('inf'):.1f}; "
        f"per round {rounds_text})  {verdict(met, mode['quick'])}"
    )
    return {
        "spans": spans,
        "rounds": rounds,
        "runs": runs,
        "cpu_us_per_span": per_span,
        "summary": {
            "ratio": ratio,
            "ratio_per_round": per_round,
            "target_ratio": CPU_RATIO_TARGET,
            "all_spans_arrived": all_arrived,
            "met": met,
        },
    }


# -- 3. exposition -------------------------------------------------------------------


def run_exposition(mode: dict[str, Any], tmp: Path) -> dict[str, Any]:
    sizes, rounds = mode["exposition_series"], mode["exposition_rounds"]
    formats = ("prometheus_0.0.4", "openmetrics_1.0.0")
    print(
        f"\n--- 3. Exposition rendering: registries of {', '.join(map(str, sizes))} series, "
        f"{rounds} rounds, one fresh process per size and format ---",
        flush=True,
    )
    results = []
    print(
        f"{'series':>7} {'format':<18}{'wall ms':>9}{'cpu ms':>9}{'p25..p75 wall':>16}"
        f"{'MiB out':>9}{'B/series':>9}{'exempl.':>8}{'peak MiB':>10}{'held MiB':>10}"
        f"{'registry MiB':>13}"
    )
    for n in sizes:
        for fmt in formats:
            r = run_child(
                "exposition.py",
                ["--series", str(n), "--format", fmt, "--rounds", str(rounds)],
                tmp / f"exposition-{n}-{fmt}.json",
                timeout=900,
            )
            results.append(r)
            mem = r["memory_cold"]
            peak = mem.get("peak_growth_kib")
            wall, cpu = r["wall_ms"], r["cpu_ms"]
            print(
                f"{n:>7} {fmt:<18}{wall['median']:>9.1f}{cpu['median']:>9.1f}"
                f"{wall['p25']:>8.1f}..{wall['p75']:<6.1f}{r['bytes'] / 2**20:>9.2f}"
                f"{r['bytes'] / n:>9.0f}{r['exemplars']:>8}"
                f"{'n/a' if peak is None else f'{peak / 1024:.1f}':>10}"
                f"{mem.get('held_growth_kib', 0) / 1024:>10.1f}"
                f"{(r['registry_rss_kib'] or 0) / 1024:>13.1f}",
                flush=True,
            )
            rc = r.get("record_cpu_us") or {}
            if fmt == formats[0] and rc:
                print(
                    f"        building it: a span that creates its series cost "
                    f"{rc['new_key_us']:.1f} µs CPU on the recording thread (the last tenth of "
                    f"the series {rc['new_key_last_tenth_us']:.1f} µs), one whose series exists "
                    f"{rc['existing_key_us']:.1f} µs"
                )
            problems = []
            if r["metric_keys"] != n or r["metric_keys_overflowed"]:
                problems.append(
                    f"the registry has {r['metric_keys']} keys "
                    f"({r['metric_keys_overflowed']} overflowed), not {n}"
                )
            if not r["content_type_ok"]:
                problems.append(f"content type {r['content_type']!r}")
            if not mem.get("peak_reset"):
                problems.append("VmHWM could not be reset: peak growth not available")
            for p in problems:
                print(f"        note: {p}")
    print(
        "wall/cpu ms: median render time (CPU = the calling thread's, where the render runs);"
        " peak MiB: VmHWM - VmRSS around the first render of the process; held MiB: VmRSS"
        " growth with the body still referenced; registry MiB: RSS of the registry built"
    )
    return {"rounds": rounds, "results": results}


# -- main ----------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", dest="mode", const="quick")
    group.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write figures")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of parts")
    ap.add_argument("--spans", type=int, help="spans per CPU run (overrides the mode)")
    ap.add_argument("--rounds", type=int, help="rounds of every part (overrides the mode)")
    args = ap.parse_args(argv)
    mode_name = args.mode or "quick"
    mode = dict(MODES[mode_name], quick=mode_name == "quick")
    if args.spans:
        mode["cpu_spans"] = args.spans
    if args.rounds:
        mode.update(
            encoding_rounds=args.rounds, cpu_rounds=args.rounds, exposition_rounds=args.rounds
        )
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown parts: {', '.join(unknown)} (choose from {', '.join(PARTS)})")

    t0 = time.monotonic()
    _, scrubbed = child_env()
    load_start = loadavg()
    print(
        f"pulsetrace export benchmarks, {mode_name} mode, {os.cpu_count()} CPUs, "
        f"load average {load_start}",
        flush=True,
    )
    if scrubbed:
        print(f"removed from the workers' environment: {', '.join(scrubbed)}")
    if mode["quick"]:
        print(f"({QUICK_NOTE})")

    report: dict[str, Any] = {
        "mode": mode_name,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in mode.items()},
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "scrubbed_env": scrubbed,
        "loadavg_start": load_start,
        "parts": {},
        "skipped": {},
        "errors": {},
        "part_seconds": {},
    }
    runners = {"encoding": run_encoding, "cpu": run_cpu, "exposition": run_exposition}
    with tempfile.TemporaryDirectory(prefix="pulsetrace-export-bench-") as d:
        for part in parts:
            missing = missing_modules(*NEEDS[part])
            if missing:
                why = f"missing {', '.join(missing)} ({INSTALL_HINT})"
                print(f"\n--- {part}: SKIPPED, {why} ---")
                report["skipped"][part] = why
                continue
            p0 = time.monotonic()
            try:
                report["parts"][part] = runners[part](mode, Path(d))
            except Exception as exc:  # a broken harness: report it, go on, exit non-zero
                traceback.print_exc()
                print(f"--- {part}: HARNESS ERROR: {exc} ---", flush=True)
                report["errors"][part] = f"{type(exc).__name__}: {exc}"
            report["part_seconds"][part] = round(time.monotonic() - p0, 2)

    report["loadavg_end"] = loadavg()
    report["wall_seconds"] = round(time.monotonic() - t0, 2)
    print("\n=== summary ===")
    enc = report["parts"].get("encoding")
    if enc:
        s = enc["summary"]
        print(
            f"encoding: pulsetrace {s['speedup_cpu']:.1f}x faster than OpenTelemetry's encoder "
            f"(target >= {ENCODING_SPEEDUP_TARGET:g}x): {verdict(s['met'], mode['quick'])}"
        )
    cpu = report["parts"].get("cpu")
    if cpu:
        s = cpu["summary"]
        print(
            f"cpu per exported span: pulsetrace/OpenTelemetry = {s['ratio']:.3f} "
            f"(target <= {CPU_RATIO_TARGET:g}): {verdict(s['met'], mode['quick'])}"
        )
    expo = report["parts"].get("exposition")
    if expo:
        worst = max(expo["results"], key=lambda r: r["wall_ms"]["median"])
        print(
            f"exposition: slowest render {worst['wall_ms']['median']:.1f} ms "
            f"({worst['series']} series, {worst['format']}, {worst['bytes'] / 2**20:.1f} MiB)"
        )
    for part, why in report["skipped"].items():
        print(f"{part}: skipped ({why})")
    for part, err in report["errors"].items():
        print(f"{part}: HARNESS ERROR ({err})")
    print(
        f"load average: {load_start} at start, {report['loadavg_end']} at end "
        "(figures from a busy machine are inflated and scattered)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"figures written to {args.json} ({report['wall_seconds']} s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
