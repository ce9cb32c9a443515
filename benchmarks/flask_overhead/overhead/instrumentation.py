"""What each server traced, per route (from the OTLP receiver's statistics
and /_bench/info), printed after the table; and the report of a saved run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from overhead.plots import plot, plot_title
from overhead.settings import Config
from overhead.summary import fmt, print_report


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
