"""Custom and business metrics merged over processes (a pre-fork server's
workers): every process records through the public API in its own Python
process and prints its state as JSON; the merged state gives the totals of
one process that recorded everything: counters added, histograms added
exactly (counts, sums, max, buckets and percentiles of one histogram that
recorded every value), gauges combined by their aggregate, business success
rates from the merged counts. Dead processes' states fold without their
gauges; a malformed state is refused with a clear error and skipped, and
the others still merge."""

from __future__ import annotations

import base64
import json
import logging
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pulsetrace.metrics as metrics
from pulsetrace import _diag
from pulsetrace._native import Histogram as NativeHistogram
from pulsetrace.monitoring import metrics_business, metrics_custom

PROCESS = Path(__file__).parent / "metrics_process.py"


@pytest.fixture(autouse=True)
def clean():
    metrics_custom.clear()
    metrics_business.clear()
    _diag.reset()
    yield
    metrics_custom.clear()
    metrics_business.clear()


def run(code: str) -> dict[str, Any]:
    """The states a fresh Python process prints after running ``code``."""
    r = subprocess.run(
        [sys.executable, str(PROCESS)],
        input=textwrap.dedent(code),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def values(seed: int, n: int = 2000) -> list[float]:
    """Values in eighths of a second: their sums are exact in any order."""
    rng = random.Random(seed)
    return [rng.randrange(1, 80_000) / 8 for _ in range(n)]


def by_name(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in rendered}


def series_of(family: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(s["labels"].items())): s for s in family["series"]}


def test_counters_and_histograms_merge_to_the_totals_of_one_process():
    states = [
        run(
            f"""
            orders = metrics.create_custom_counter("orders_total", "orders", ["plan"])
            orders.inc({i + 1}, plan="pro")
            orders.inc(2, plan="free")
            latency = metrics.create_custom_histogram("checkout_seconds", "checkout", ["step"])
            for v in {values(i)!r}:
                latency.observe(v, step="pay")
            latency.observe({i + 0.5}, step="ship")
            if {i} == 2:
                metrics.create_custom_counter("refunds_total", "refunds").inc(7)
            """
        )["custom"]
        for i in range(3)
    ]
    merged = metrics_custom.merge_states(states)
    assert json.loads(json.dumps(merged)) == merged  # JSON-able, as published

    # The same values recorded in one process: this one.
    orders = metrics.create_custom_counter("orders_total", "orders", ["plan"])
    latency = metrics.create_custom_histogram("checkout_seconds", "checkout", ["step"])
    for i in range(3):
        orders.inc(i + 1, plan="pro")
        orders.inc(2, plan="free")
        for v in values(i):
            latency.observe(v, step="pay")
        latency.observe(i + 0.5, step="ship")
    metrics.create_custom_counter("refunds_total", "refunds").inc(7)

    assert metrics_custom.to_json(merged) == metrics_custom.to_json()
    assert metrics_custom.families(merged) == metrics_custom.families()
    got = by_name(metrics_custom.to_json(merged))
    assert series_of(got["orders_total"])[(("plan", "pro"),)]["value"] == 6
    assert series_of(got["orders_total"])[(("plan", "free"),)]["value"] == 6
    assert got["refunds_total"]["series"][0]["value"] == 7  # seen in one process only
    pay = series_of(got["checkout_seconds"])[(("step", "pay"),)]
    everything = [v for i in range(3) for v in values(i)]
    assert pay["count"] == 6000
    assert pay["sum"] == sum(everything)
    assert pay["max"] == max(everything)
    assert pay["p50"] > 0 and pay["p99"] > pay["p50"]


def test_a_native_histogram_adds_another_ones_encoding_exactly():
    a, b, both = NativeHistogram(), NativeHistogram(), NativeHistogram()
    for v in values(1):
        a.record(int(v * 1000))
        both.record(int(v * 1000))
    for v in values(2, 500):
        b.record(int(v * 1000))
        both.record(int(v * 1000))
    a.add_encoded(base64.b64decode(b.encode()), b.sum, b.min, b.max)
    assert (a.count, a.sum, a.min, a.max) == (both.count, both.sum, both.min, both.max)
    assert a.encode() == both.encode()
    for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert a.value_at_quantile(q) == both.value_at_quantile(q)
    raw = base64.b64decode(b.encode())
    with pytest.raises(ValueError, match="not a V2-encoded histogram"):
        a.add_encoded(raw[: len(raw) // 2], b.sum, b.min, b.max)
    with pytest.raises(ValueError, match="different config"):
        a.add_encoded(base64.b64decode(NativeHistogram(3).encode()), 0, 0, 0)
    assert a.count == both.count  # nothing added by a refused encoding
    # One histogram added to another directly: the same exact merge.
    c = NativeHistogram()
    c.add(a)
    c.add(b)
    for v in values(2, 500):
        both.record(int(v * 1000))
    assert (c.count, c.sum, c.min, c.max, c.encode()) == (
        both.count,
        both.sum,
        both.min,
        both.max,
        both.encode(),
    )
    with pytest.raises(ValueError, match="different config"):
        c.add(NativeHistogram(3))


def test_gauges_combine_by_their_aggregate_and_a_fold_drops_them():
    codes = []
    for i, level in enumerate((5, 20, 11)):
        codes.append(
            f"""
            for aggregate in ("sum", "max", "min", "last"):
                g = metrics.create_custom_gauge(f"queue_{{aggregate}}", "q", aggregate=aggregate)
                g.set({level})
            metrics.create_custom_counter("jobs_total", "jobs").inc({i + 1})
            time.sleep(0.01)  # the next process changes its gauges later
            """
        )
    states = [run(code)["custom"] for code in codes]
    got = by_name(metrics_custom.to_json(metrics_custom.merge_states(states)))
    level = {name: m["series"][0]["value"] for name, m in got.items()}
    assert level == {
        "queue_sum": 36,
        "queue_max": 20,
        "queue_min": 5,
        "queue_last": 11,
        "jobs_total": 6,
    }
    # The last one set wins whatever the order the states come in.
    got = by_name(metrics_custom.to_json(metrics_custom.merge_states(states[::-1])))
    assert got["queue_last"]["series"][0]["value"] == 11

    # Two processes died: their counts stay, their levels go.
    dead = metrics_custom.fold_states(states[:2])
    folded = by_name(metrics_custom.to_json(dead))
    assert folded["jobs_total"]["series"][0]["value"] == 3
    assert folded["queue_sum"]["series"] == []  # the gauge is still known, with no value
    # The view with the one live process: counts from all three, once; its level only.
    view = by_name(metrics_custom.to_json(metrics_custom.merge_states([states[2], dead])))
    assert view["jobs_total"]["series"][0]["value"] == 6
    assert view["queue_sum"]["series"][0]["value"] == 11
    # A fold of a fold (another death later) still counts each process once.
    again = metrics_custom.fold_states([dead, states[2]])
    assert by_name(metrics_custom.to_json(again))["jobs_total"]["series"][0]["value"] == 6


def test_a_gauge_aggregate_is_checked_at_creation():
    with pytest.raises(
        ValueError, match="aggregate is one of 'sum', 'max', 'min', 'last', not 'avg'"
    ):
        metrics.create_custom_gauge("g_avg", "g", aggregate="avg")
    with pytest.raises(ValueError, match="only a gauge has an aggregate"):
        metrics_custom.create(metrics_custom.Counter, "c_total", "c", (), 10, aggregate="max")
    metrics.create_custom_gauge("g", "g", aggregate="max")
    with pytest.raises(
        ValueError, match="exists as a gauge with labels \\[\\] and aggregate 'max'"
    ):
        metrics.create_custom_gauge("g", "g", aggregate="min")


def test_the_series_bound_holds_in_the_merged_view():
    states = [
        run(
            f"""
            c = metrics.create_custom_counter("hits_total", "hits", ["route"], max_series=3)
            for route in {routes!r}:
                c.inc(route=route)
            """
        )["custom"]
        for routes in (["/a", "/b", "/c", "/d"], ["/a", "/e", "/f"])
    ]
    # The first process dropped /d itself; the merge keeps /a, /b, /c and
    # drops /e and /f.
    merged = metrics_custom.merge_states(states)
    hits = by_name(metrics_custom.to_json(merged))["hits_total"]
    assert {s["labels"]["route"]: s["value"] for s in hits["series"]} == {"/a": 2, "/b": 1, "/c": 1}
    assert hits["series_overflowed"] == 3
    overflow = metrics_custom.families(merged)[-1]
    assert overflow[0] == "pulsetrace_custom_series_overflowed_total"
    assert overflow[3] == [({"metric": "hits_total"}, 3.0)]


def test_business_figures_merge_with_success_rates_from_the_merged_counts():
    states = [
        run(
            """
            for _ in range(8):
                metrics.record_message("delivered", "text", campaign_id="spring", company_id="c1")
            metrics.record_contacts(5, company_id="c1")
            metrics.record_api_call("twilio", "send", 0.25)
            metrics.record_template_use("welcome")
            """
        )["business"],
        run(
            """
            metrics.record_message("delivered", "text", campaign_id="spring", company_id="c1")
            metrics.record_message("failed", "text", campaign_id="spring", company_id="c2")
            metrics.record_message("failed", "image", campaign_id="autumn")
            metrics.record_contacts(-2, company_id="c1")
            metrics.record_api_call("twilio", "send", 0.75, ok=False)
            metrics.record_auth_event("login", True)
            """
        )["business"],
    ]
    merged = metrics_business.merge_states(states)
    assert json.loads(json.dumps(merged)) == merged
    out = metrics_business.summary(merged)
    # 9 of 10 delivered: 0.9 (the average of the two processes' rates would be 0.75).
    assert out["campaigns"]["spring"] == {"delivered": 9, "failed": 1, "success_rate": 0.9}
    assert out["campaigns"]["autumn"] == {"failed": 1, "success_rate": 0.0}
    assert out["messages"]["by_status"] == {"delivered": 9, "failed": 2}
    assert out["messages"]["success_rate"] == round(9 / 11, 6)
    assert out["companies"] == {"c1": {"delivered": 9, "contacts": 3}, "c2": {"failed": 1}}
    assert {k: out["contacts"][k] for k in ("added", "removed")} == {"added": 5, "removed": 2}
    assert out["templates"] == {"welcome": 1}
    [api] = out["external_apis"]
    assert (api["labels"], api["count"], api["sum"], api["max"]) == (
        {"api": "twilio", "operation": "send"},
        2,
        1.0,
        0.75,
    )
    calls = {c["labels"]["outcome"]: c["count"] for c in out["external_api_calls"]}
    assert calls == {"success": 1, "failure": 1}
    assert out["auth_events"] == [{"labels": {"event": "login", "outcome": "success"}, "count": 1}]
    assert merged["start"] == min(s["start"] for s in states)
    families = {f[0]: f for f in metrics_business.families(merged)}
    assert families["pulsetrace_business_messages_total"][3] == [
        ({"status": "delivered", "message_type": "text"}, 9.0),
        ({"status": "failed", "message_type": "text"}, 1.0),
        ({"status": "failed", "message_type": "image"}, 1.0),
    ]
    # Dead processes fold with their counts kept.
    assert (
        metrics_business.summary(metrics_business.fold_states(states))["campaigns"]
        == (out["campaigns"])
    )


def test_one_process_state_renders_as_that_process_does():
    metrics.create_custom_counter("orders_total", "orders", ["plan"]).inc(3, plan="pro")
    metrics.create_custom_gauge("active", "active", ["plan"], aggregate="last").set(4, plan="pro")
    h = metrics.create_custom_histogram("size_bytes", "size", buckets=[10, 100, 1000])
    for v in (1, 15.5, 99.999, 100.001, 640, 2e6):
        h.observe(v)
    metrics.record_message("delivered", "text", campaign_id="spring")
    metrics.record_api_call("twilio", "send", 0.123)
    own = json.loads(json.dumps(metrics_custom.state()))
    assert metrics_custom.families(own) == metrics_custom.families()
    assert metrics_custom.to_json(own) == metrics_custom.to_json()
    business = json.loads(json.dumps(metrics_business.state()))
    assert metrics_business.families(business) == metrics_business.families()
    expected, got = metrics_business.summary(), metrics_business.summary(business)
    for out in (expected, got):
        out["contacts"].pop("growth_per_hour")  # depends on the time it is computed at
    assert got == expected
    # A merge of one state is that state.
    assert metrics_custom.merge_states([own]) == own
    # A series recorded into since the last state is in the next one.
    h.observe(5)
    assert metrics_custom.to_json(metrics_custom.state()) == metrics_custom.to_json()
    assert by_name(metrics_custom.to_json())["size_bytes"]["series"][0]["count"] == 7


def malformed(good: dict[str, Any]) -> list[tuple[Any, str]]:
    """Broken copies of a custom state, and the error each must give."""

    def broken(change: Any) -> dict[str, Any]:
        st = json.loads(json.dumps(good))
        change(by_name(st["metrics"]))
        return st

    def truncate(m: dict[str, Any]) -> None:
        row = m["latency_seconds"]["series"][0][1]
        raw = base64.b64decode(row["v2"])
        row["v2"] = base64.b64encode(raw[: len(raw) // 2]).decode()

    def cut(m: dict[str, Any]) -> None:
        row = m["latency_seconds"]["series"][0][1]
        row["v2"] = row["v2"][:-3]

    def set_value(name: str, index: int, value: Any) -> Any:
        return lambda m: m[name]["series"][0].__setitem__(index, value)

    return [
        (7, "a dict with a list 'metrics'"),
        ({"metrics": "x"}, "a dict with a list 'metrics'"),
        (
            broken(set_value("orders_total", 1, "3")),
            "metric 'orders_total': series #0: a counter's value must be a number, not str",
        ),
        (
            broken(set_value("orders_total", 1, -1)),
            "metric 'orders_total': series #0: a counter's value is at least 0",
        ),
        (
            broken(set_value("orders_total", 0, [7])),
            "metric 'orders_total': series #0: its label values are 1 str, not \\[7\\]",
        ),
        (
            broken(truncate),
            "metric 'latency_seconds': series #0: its 'v2' is not a histogram's encoding",
        ),
        (broken(cut), "metric 'latency_seconds': series #0: its 'v2' is not base64"),
        (
            broken(lambda m: m["latency_seconds"]["series"][0][1].pop("total")),
            "metric 'latency_seconds': series #0: no 'total'",
        ),
        (
            broken(lambda m: m["orders_total"].__setitem__("kind", "summary")),
            "metric 'orders_total': its kind is one of",
        ),
        (
            broken(lambda m: m["level"].__setitem__("aggregate", "avg")),
            "metric 'level': a gauge's aggregate is one of",
        ),
    ]


def test_a_malformed_state_is_refused_clearly_and_the_others_still_merge(caplog):
    code = """
        metrics.create_custom_counter("orders_total", "orders", ["plan"]).inc(2, plan="pro")
        metrics.create_custom_gauge("level", "level").set(1)
        h = metrics.create_custom_histogram("latency_seconds", "latency")
        for v in range(1, 200):
            h.observe(v / 100)
        """
    good = [run(code)["custom"], run(code)["custom"]]
    expected = metrics_custom.merge_states(good)
    bad = malformed(good[0])
    for state, error in bad:
        with pytest.raises(ValueError, match=error):
            metrics_custom.to_json(state)
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        merged = metrics_custom.merge_states([good[0], *[s for s, _ in bad], good[1]])
    assert merged == expected
    # Logged once (then at most once a minute), naming the state and its fault.
    [logged] = [r.getMessage() for r in caplog.records if "metrics_custom.merge" in r.getMessage()]
    assert "state #1 skipped: a metrics state is a dict with a list 'metrics', not 7" in logged
    assert by_name(metrics_custom.to_json(merged))["orders_total"]["series"][0]["value"] == 4
    assert _diag.internal_errors().get("metrics_custom.merge") == len(bad)
    assert metrics_custom.fold_states([good[0], bad[0][0]]) == metrics_custom.fold_states([good[0]])


def test_a_malformed_business_state_is_skipped():
    good = run('metrics.record_message("delivered", "text", campaign_id="spring")')["business"]
    bad = []
    for key, value, error in [
        ("campaigns", {"spring": {"delivered": "1"}}, "campaigns 'spring' is a dict of str to int"),
        ("contacts", {"added": 1}, "'contacts' is counts of \\['added', 'removed'\\]"),
        ("start", "yesterday", "'start' is a finite number"),
    ]:
        st = dict(good, **{key: value})
        with pytest.raises(ValueError, match=error):
            metrics_business.summary(st)
        bad.append(st)
    merged = metrics_business.merge_states([good, *bad, good])
    assert metrics_business.summary(merged)["campaigns"]["spring"]["delivered"] == 2
    assert _diag.internal_errors().get("metrics_custom.merge") == 3


def test_a_metric_defined_differently_in_two_processes_keeps_the_first_definition():
    first = run('metrics.create_custom_counter("jobs_total", "jobs", ["queue"]).inc(queue="a")')
    other = run('metrics.create_custom_gauge("jobs_total", "jobs", ["queue"]).set(9, queue="a")')
    same = run('metrics.create_custom_counter("jobs_total", "jobs", ["queue"]).inc(queue="a")')
    merged = metrics_custom.merge_states([first["custom"], other["custom"], same["custom"]])
    [jobs] = metrics_custom.to_json(merged)
    assert (jobs["type"], jobs["series"]) == ("counter", [{"labels": {"queue": "a"}, "value": 2}])
    assert _diag.internal_errors().get("metrics_custom.merge") == 1


def test_a_forked_worker_starts_at_zero_so_the_parents_figures_count_once():
    # A pre-fork master that recorded before forking (an application loaded
    # before the fork): its figures are its own, reported by it once.
    out = run(
        """
        import json, os
        from pulsetrace.monitoring import metrics_business, metrics_custom

        boots = metrics.create_custom_counter("boots_total", "boots")
        sizes = metrics.create_custom_histogram("size_bytes", "size", buckets=[10, 100])
        boots.inc(5)
        sizes.observe(7)
        metrics.record_message("delivered", "text", campaign_id="spring")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            boots.inc()
            sizes.observe(70)
            metrics.record_message("failed", "text", campaign_id="spring")
            states = {"custom": metrics_custom.state(), "business": metrics_business.state()}
            os.write(w, json.dumps(states).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child = json.loads(f.read())
        os.waitpid(pid, 0)
        """
    )
    custom = metrics_custom.merge_states([out["custom"], out["child"]["custom"]])
    got = by_name(metrics_custom.to_json(custom))
    assert got["boots_total"]["series"][0]["value"] == 6
    size = got["size_bytes"]["series"][0]
    assert (size["count"], size["sum"], size["max"]) == (2, 77, 70)
    business = metrics_business.merge_states([out["business"], out["child"]["business"]])
    assert metrics_business.summary(business)["campaigns"]["spring"] == {
        "delivered": 1,
        "failed": 1,
        "success_rate": 0.5,
    }
