"""The checks that each server ran instrumented as configured, and the
summary of a run: medians per route and configuration, ratios, targets and
the printed table."""

from __future__ import annotations

import json
import statistics
from typing import Any, Optional

from overhead.procs import HarnessError
from overhead.settings import TARGET_JSON_LOSS_PCT, TARGET_LOSS_RATIO, Config


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
        # A configuration that switches the Flask hook off says so in its environment.
        flask_wanted = cfg.env.get("PULSETRACE_FLASK_ENABLED", "true") != "false"
        if not pt or not pt.get("enabled"):
            problems.append("pulsetrace is not active")
        elif ("flask" in pt.get("integrations", [])) != flask_wanted:
            problems.append(
                "pulsetrace's flask integration is "
                + ("not active" if flask_wanted else "active though switched off")
            )
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
