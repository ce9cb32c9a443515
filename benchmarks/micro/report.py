"""Statistics and the printed table of the micro-benchmarks (see run.py)."""

from __future__ import annotations

import statistics
from typing import Any

#: (numerator, denominator, target ratio): the ratio of medians must be <= target.
RATIO_TARGETS: list[tuple[str, str, float]] = [
    ("pulsetrace_span", "otel_sdk_span", 0.05),
    ("pulsetrace_span", "wrapt_passthrough", 2.0),
]
HISTOGRAM_TARGET_NS = 30.0  # strictly below
HISTOGRAM_NOTE = (
    "measured from Python: includes the call of the bound method and the loop "
    "(see empty_loop); the native figure comes from the Rust criterion bench "
    "`cargo bench -p pulsetrace-core --bench histogram`"
)
COUNTERS_SHOWN = [
    "spans_processed_inline",
    "spans_dropped_export_full",
    "export_queue_spans",
    "open_traces",
    "traces_evicted",
    "spans_handed_to_exporters",
    "internal_errors",
]


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def stats(xs: list[float]) -> dict[str, float]:
    p25, median, p75 = quartiles(xs)
    return {"median": median, "p25": p25, "p75": p75, "min": min(xs), "max": max(xs)}


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the results of one or more processes and derive the figures."""
    names = list(parts[0]["cases"])
    cases: dict[str, Any] = {}
    for name in names:
        samples = [x for p in parts for x in p["cases"][name]["samples"]]
        cpu = [x for p in parts for x in p["cases"][name].get("cpu_samples", [])]
        cases[name] = {
            "unit": "ns/op",
            "n_per_batch": [p["cases"][name]["n"] for p in parts],
            "samples": samples,
            **stats(samples),
            "cpu_samples": cpu,
            "cpu_median": quartiles(cpu)[1] if cpu else None,
        }
    cases["empty_loop"]["label"] = "loop cost alone, included in every other figure"
    ratios = []
    for num, den, target in RATIO_TARGETS:
        value = cases[num]["median"] / cases[den]["median"]
        # Samples of one round are paired (same process, same round index).
        per_round = [a / b for a, b in zip(cases[num]["samples"], cases[den]["samples"])]
        p25, _, p75 = quartiles(per_round)
        ratios.append(
            {
                "name": f"{num} / {den}",
                "value": value,
                "per_round_p25": p25,
                "per_round_p75": p75,
                "target": f"<= {target:g}",
                "met": value <= target,
            }
        )
    # Not a target: the same span as CPU time of the whole process (every
    # thread: work the span hands to a background thread counts too).
    cpu_ratio = None
    if cases["pulsetrace_span"]["cpu_median"] and cases["otel_sdk_span"]["cpu_median"]:
        cpu_ratio = cases["pulsetrace_span"]["cpu_median"] / cases["otel_sdk_span"]["cpu_median"]
    hist = cases["histogram_record"]["median"]
    attempted = sum(p["spans_timed"] for p in parts)
    drops: dict[str, int] = {}
    for p in parts:
        for key, value in p["span_drops_timed"].items():
            drops[key] = drops.get(key, 0) + value
    return {
        "versions": parts[0]["versions"],
        "pulsetrace_config": parts[0]["pulsetrace_config"],
        "cases": cases,
        "ratios": ratios,
        "cpu_ratio_span_vs_otel": cpu_ratio,
        "histogram_record": {
            "median_ns": hist,
            "target": f"< {HISTOGRAM_TARGET_NS:g} ns",
            "met": hist < HISTOGRAM_TARGET_NS,
            "note": HISTOGRAM_NOTE,
        },
        "pulsetrace_drops_during_timed_batches": {
            "spans": attempted,
            "dropped": drops,
            "share": {k: v / attempted if attempted else 0.0 for k, v in drops.items()},
        },
        "counters": parts[-1]["counters"],
        "counters_per_process": [p["counters"] for p in parts],
        "loadavg_per_process": [p["loadavg"] for p in parts],
        "env_scrubbed": parts[0]["env_scrubbed"],
        "third_party_log": merged_log(parts),
    }


def merged_log(parts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in parts:
        for text, n in p.get("third_party_log", {}).items():
            out[text] = out.get(text, 0) + n
    return out


QUICK_NOTE = (
    "quick mode: few short batches on a machine other work may share; figures and "
    "verdicts are indicative only (--full gives figures to judge)"
)


def verdict(met: bool, quick: bool = False) -> str:
    if quick:
        return "met (quick run)" if met else "not met in this quick run (noisy)"
    return "met" if met else "NOT MET"


def print_report(r: dict[str, Any]) -> None:
    v = r["versions"]
    print(
        f"Python {v['python']} ({v['python_implementation']}), pulsetrace {v['pulsetrace']}, "
        f"opentelemetry-sdk {v['opentelemetry-sdk']}, wrapt {v['wrapt']}"
    )
    print(f"pulsetrace config: {r['pulsetrace_config']}")
    if r["env_scrubbed"]:
        print(f"ignored (removed from the environment): {', '.join(r['env_scrubbed'])}")
    print("\nraw ns per operation, loop included (samples = processes x rounds)\n")
    header = (
        f"{'case':<32}{'median':>10}{'p25':>10}{'p75':>10}{'min':>10}{'samples':>9}"
        f"{'cpu ns':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, c in r["cases"].items():
        label = "empty_loop (loop cost)" if name == "empty_loop" else name
        cpu = c.get("cpu_median")
        print(
            f"{label:<32}{c['median']:>10.1f}{c['p25']:>10.1f}{c['p75']:>10.1f}"
            f"{c['min']:>10.1f}{len(c['samples']):>9}"
            f"{'' if cpu is None else format(cpu, '10.1f')}"
        )
    print(
        "(cpu ns: CPU time of every thread of the process per operation, median; "
        "background work of the case included)"
    )
    quick = r.get("mode") == "quick"
    print("\ntargets (on medians; these are figures, not tests)")
    if quick:
        print(f"({QUICK_NOTE})")
    print()
    for ratio in r["ratios"]:
        print(
            f"  {ratio['name']:<40}{ratio['value']:>8.3f}   target {ratio['target']:<8}"
            f"{verdict(ratio['met'], quick):<9} (per-round p25..p75: "
            f"{ratio['per_round_p25']:.3f}..{ratio['per_round_p75']:.3f})"
        )
    if r.get("cpu_ratio_span_vs_otel") is not None:
        print(
            f"  {'(cpu) pulsetrace_span / otel_sdk_span':<40}"
            f"{r['cpu_ratio_span_vs_otel']:>8.3f}   not a target: CPU of every thread"
        )
    h = r["histogram_record"]
    print(
        f"  {'histogram_record':<40}{h['median_ns']:>6.1f} ns   target {h['target']:<8}"
        f"{verdict(h['met'], quick)}"
    )
    print(f"    note: {h['note']}")
    d = r["pulsetrace_drops_during_timed_batches"]
    shares = ", ".join(f"{k}={v:,} ({d['share'][k]:.0%})" for k, v in d["dropped"].items() if v)
    print(
        f"\npulsetrace spans timed: {d['spans']:,}; dropped meanwhile: {shares or 'none'}. "
        "No exporter drains the export queue, so the buffers stay full and further "
        "spans are dropped and counted (by design)"
    )
    for i, counters in enumerate(r["counters_per_process"]):
        shown = ", ".join(f"{k}={counters[k]}" for k in COUNTERS_SHOWN if k in counters)
        print(f"pulsetrace counters at end (process {i + 1}): {shown}")
    loads = ", ".join(f"{a[0]:.2f}->{b[0]:.2f}" for a, b in r["loadavg_per_process"])
    print(f"load average (1 min) during the run(s): {loads}")
    for text, n in r.get("third_party_log", {}).items():
        print(f"logged by a third-party library during the run ({n}x): {text}")
