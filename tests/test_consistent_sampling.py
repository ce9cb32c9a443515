"""Probability sampling as OpenTelemetry specifies it ("TraceState:
Probability Sampling"): a trace is kept when its randomness R (``ot=rv``, else
the last 56 bits of its trace id) is at least the threshold T of the rate, and
kept spans say so with ``ot=th:<T>`` in their tracestate. Other samplers that
follow the rule (other services, OpenTelemetry SDKs, the Collector) keep the
same traces at the same rate."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pulsetrace
from pulsetrace import _runtime

from conftest import finished, fresh

#: Thresholds of the rates below, as the specification encodes them.
TH = {0.5: "8", 0.25: "c"}

#: Run in a fresh process with PULSETRACE_SAMPLE_RATE set: one SERVER span
#: per incoming traceparent (argv[1], one per line), nothing slow, no error;
#: prints {trace id: [trace_state of each exported span]} and the counters.
SERVICE = """
import json, sys
import pulsetrace

exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)
for line in open(sys.argv[1]):
    ctx = pulsetrace.extract({"traceparent": line.strip()})
    with pulsetrace.use_context(ctx):
        with pulsetrace.start_span("GET /orders/{id}", kind="server") as span:
            span.set_attribute("http.response.status_code", 200)
assert pulsetrace.flush(timeout=10)
kept = {}
for s in exporter.spans():
    kept.setdefault(f"{s.trace_id:032x}", []).append(s.trace_state)
print(json.dumps({"kept": kept, "counters": pulsetrace.counters()}))
"""


def randomness(trace_id: str) -> int:
    """R of a trace id: its last 56 bits (14 hex digits)."""
    return int(trace_id[-14:], 16)


def threshold(th: str) -> int:
    """T of a ``th`` value: hex digits padded with zeros to 14."""
    return int(th.ljust(14, "0"), 16)


def run_service(rate: float, traceparents: Path) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))},
        "PULSETRACE_SAMPLE_RATE": str(rate),
        "PULSETRACE_ADAPTIVE_PERCENTILE": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    out = subprocess.run(
        [sys.executable, "-c", SERVICE, str(traceparents)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_two_processes_at_rates_0_5_and_0_25_keep_nested_sets_of_the_same_traces(tmp_path):
    rng = random.Random(20240610)
    n = 4000
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    traceparents = tmp_path / "traceparents"
    # Flags 03: sampled upstream, and the trace id is random (W3C level 2).
    traceparents.write_text("".join(f"00-{t}-{rng.getrandbits(64) | 1:016x}-03\n" for t in ids))

    half = run_service(0.5, traceparents)
    quarter = run_service(0.25, traceparents)

    kept_half, kept_quarter = set(half["kept"]), set(quarter["kept"])
    # Consistent: every trace kept at 0.25 is kept at 0.5.
    assert kept_quarter <= kept_half
    # Each rate keeps its share, within 4 standard deviations of the binomial.
    for rate, kept in ((0.5, kept_half), (0.25, kept_quarter)):
        sd = math.sqrt(n * rate * (1 - rate))
        assert abs(len(kept) - n * rate) <= 4 * sd, (rate, len(kept))
    # The traces kept are those the specification's rule keeps (R >= T),
    # the ones any other sampler following it keeps at the same rate.
    for rate, run in ((0.5, half), (0.25, quarter)):
        t = threshold(TH[rate])
        assert set(run["kept"]) == {i for i in ids if randomness(i) >= t}, rate
        # Every exported span says at which threshold it was kept.
        states = {s for spans in run["kept"].values() for s in spans}
        assert states == {f"ot=th:{TH[rate]}"}, rate
        c = run["counters"]
        assert c["traces_kept_probabilistic"] == len(run["kept"])
        assert c["traces_dropped_sampled_out"] == n - len(run["kept"])
        assert c["sampling_randomness_presumed"] == 0


def test_kept_spans_carry_the_threshold_only_when_the_rule_selected_them(exporter):
    fresh(sample_rate=0.5)
    pulsetrace.add_exporter(exporter)
    selected = "4bf92f3577b34da6a3c0000000000001"  # R = 0xc0000000000001 >= 0x80...
    rejected = "4bf92f3577b34da6a37fffffffffffff"  # R = 0x7fffffffffffff < 0x80...
    for trace_id, error in ((selected, False), (rejected, True), (rejected[:-1] + "e", False)):
        ctx = pulsetrace.extract(
            {
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-03",
                # An upstream head sampler kept everything (th:0).
                "tracestate": "rojo=00f067aa0ba902b7,ot=th:0",
            }
        )
        with pulsetrace.use_context(ctx), pulsetrace.start_span("GET /", kind="server") as s:
            with pulsetrace.start_span("SELECT", kind="client"):
                pass
            if error:
                s.set_status("error")
    spans = finished(exporter)
    states = {(f"{s.trace_id:032x}", s.trace_state) for s in spans}
    assert states == {
        # Kept by the rule: the threshold this stage applied, first.
        (selected, "ot=th:8,rojo=00f067aa0ba902b7"),
        # Kept only for its error: no probability can be claimed.
        (rejected, "rojo=00f067aa0ba902b7"),
    }
    assert len(spans) == 4


def test_explicit_randomness_decides_instead_of_the_trace_id(exporter):
    fresh(sample_rate=0.5)
    pulsetrace.add_exporter(exporter)
    cases = {
        # The trace id alone would be kept; rv says no.
        "4bf92f3577b34da6a3ffffffffffffff": "ot=rv:12121212121212",
        # The trace id alone would be dropped; rv says yes.
        "4bf92f3577b34da6a3000000000000ff": "ot=rv:ababababababab;x:1",
    }
    for trace_id, state in cases.items():
        ctx = pulsetrace.extract(
            {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "tracestate": state}
        )
        with pulsetrace.use_context(ctx), pulsetrace.start_span("GET /", kind="server"):
            pass
    spans = finished(exporter)
    # rv and the unknown sub-key stay; th joins them.
    assert [(f"{s.trace_id:032x}", s.trace_state) for s in spans] == [
        ("4bf92f3577b34da6a3000000000000ff", "ot=rv:ababababababab;x:1;th:8")
    ]
    assert pulsetrace.counters()["sampling_randomness_presumed"] == 0


def test_the_head_ratio_sampler_applies_the_rule_and_propagates_its_threshold(exporter):
    fresh(head_sampler="traceidratio", head_sampler_ratio=0.25)
    pulsetrace.add_exporter(exporter)
    outcomes = {True: 0, False: 0}
    for _ in range(400):
        with pulsetrace.start_span("GET /", kind="client") as span:
            headers: dict[str, str] = {}
            pulsetrace.inject(headers)
        trace_id = f"{span.trace_id:032x}"
        sampled = randomness(trace_id) >= threshold("c")
        outcomes[sampled] += 1
        flags = headers["traceparent"][-2:]
        if sampled:
            assert (flags, headers.get("tracestate")) == ("03", "ot=th:c"), trace_id
        else:
            assert (flags, headers.get("tracestate")) == ("02", None), trace_id
    assert outcomes[True] > 50 and outcomes[False] > 200
    # The tail sampler (rate 1 here) leaves the head sampler's threshold as it is.
    assert {s.trace_state for s in finished(exporter)} == {"ot=th:c"}


def test_a_parent_based_child_keeps_its_parents_threshold_unless_contradicted(exporter):
    fresh(head_sampler="parentbased_traceidratio", head_sampler_ratio=0.25)
    pulsetrace.add_exporter(exporter)
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    consistent = "congo=t61rcWkgMzE,ot=th:8;rv:c0000000000000"
    contradicted = "congo=t61rcWkgMzE,ot=th:8;rv:10000000000000"
    for incoming, outgoing in (
        # Consistent (R = 0xc0... >= th 8): passed on as it came.
        (consistent, consistent),
        # Sampled although R < th: the threshold is wrong and is erased.
        (contradicted, "ot=rv:10000000000000,congo=t61rcWkgMzE"),
    ):
        ctx = pulsetrace.extract({"traceparent": tp, "tracestate": incoming})
        with pulsetrace.use_context(ctx), pulsetrace.start_span("GET /", kind="server"):
            headers: dict[str, str] = {}
            pulsetrace.inject(headers)
        assert headers["traceparent"].endswith("-03")
        assert headers["tracestate"] == outgoing


def test_a_trace_id_not_flagged_random_is_used_counted_and_warned_about_once(exporter, caplog):
    fresh(sample_rate=0.5)
    pulsetrace.add_exporter(exporter)
    _runtime._randomness_warned = False
    # Flags 01: a level-1 tracer; its trace id's bits are presumed random.
    for trace_id in ("4bf92f3577b34da6a3c0000000000000", "4bf92f3577b34da6a300000000000000"):
        ctx = pulsetrace.extract({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        with pulsetrace.use_context(ctx), pulsetrace.start_span("GET /", kind="server"):
            pass
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        kept = finished(exporter)
        ctx = pulsetrace.extract({"traceparent": "00-" + "5" * 32 + "-00f067aa0ba902b7-01"})
        with pulsetrace.use_context(ctx), pulsetrace.start_span("GET /", kind="server"):
            pass
        finished(exporter)
    assert [f"{s.trace_id:032x}" for s in kept] == ["4bf92f3577b34da6a3c0000000000000"]
    assert pulsetrace.counters()["sampling_randomness_presumed"] == 3
    warnings = [r.getMessage() for r in caplog.records if "presumed random" in r.getMessage()]
    assert len(warnings) == 1, warnings
