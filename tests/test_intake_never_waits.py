"""Ending a span never waits behind the intake's drain (issue 10).

The intake holds one ended span (the native minimum, see
``_with_an_intake_of_one``), the exporter takes 2 s per batch, and 8 threads
end spans for a few seconds while exports run: nearly every ``end()`` finds
the intake full, often while the core's worker or the export thread is
draining it. Before, the ending
thread then took the drain's mutex, holding the GIL, and slept until that
drain was over; every other Python thread stalled with it.

How each ``end()`` is measured: ``perf_counter_ns`` right before and after,
called from C (``map`` over the calls), so no bytecode runs in between and
the interpreter cannot hand the GIL to another thread inside the
measurement; around it, the thread's CPU time, context switches and page
faults (``getrusage(RUSAGE_THREAD)``). On a shared machine the kernel stops
any code for milliseconds now and then, and those pauses say nothing about
pulsetrace: a call the kernel preempted (an involuntary context switch and
no sleep), a call that took a page fault (new memory; on a busy machine the
kernel may spend milliseconds on it), and a call that lost the CPU without
any context switch (the hypervisor) are reported, not checked. Every other
call is checked, in particular every call that slept, i.e. waited for a
lock: none may take 1 ms.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import operator
import resource
import threading
import time
import types
from array import array
from collections.abc import Sequence
from typing import NamedTuple

import pulsetrace
from pulsetrace import _runtime

from conftest import fresh

THREADS = 8
LOAD_S = 6.0
EXPORT_S = 2.0
LIMIT_NS = 1_000_000
NOTABLE_NS = 50_000

_call = operator.methodcaller("__call__")
_wall = time.perf_counter_ns
_cpu = time.thread_time_ns
_usage = functools.partial(resource.getrusage, resource.RUSAGE_THREAD)


class Call(NamedTuple):
    """One ``end()``: wall and CPU time, and what the kernel did meanwhile."""

    wall_ns: int
    cpu_ns: int
    slept: int  # voluntary context switches: the thread waited for something
    preempted: int  # involuntary ones: the kernel ran another thread instead
    faults: int  # page faults

    def kernel_paused(self) -> bool:
        """The kernel (or the hypervisor) took the time, not pulsetrace."""
        if self.faults:
            return True
        if self.slept:
            return False
        return self.preempted > 0 or self.wall_ns - self.cpu_ns > self.wall_ns // 2


class SlowExporter:
    """An exporter whose every export takes 2 s (the GIL released)."""

    def __init__(self) -> None:
        self.batches = 0
        self.traces: list[Sequence[pulsetrace.SpanData]] = []

    def export(self, traces: Sequence[Sequence[pulsetrace.SpanData]]) -> pulsetrace.ExportResult:
        self.batches += 1
        self.traces.extend(traces)
        time.sleep(EXPORT_S)
        return pulsetrace.ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        pass


def _end_measured(span: pulsetrace.Span, walls: array, notable: list[Call]) -> None:
    """Every wall time goes to ``walls``; the whole measurement of a call
    that slept, was preempted, faulted or took 50 us goes to ``notable``."""
    r0, c0, t0, _, t1, c1, r1 = map(_call, (_usage, _cpu, _wall, span.end, _wall, _cpu, _usage))
    walls.append(t1 - t0)
    call = Call(
        t1 - t0,
        c1 - c0,
        r1.ru_nvcsw - r0.ru_nvcsw,
        r1.ru_nivcsw - r0.ru_nivcsw,
        r1.ru_minflt - r0.ru_minflt + r1.ru_majflt - r0.ru_majflt,
    )
    if call.slept or call.preempted or call.faults or call.wall_ns >= NOTABLE_NS:
        notable.append(call)


def _with_an_intake_of_one() -> None:
    """Give the native tracer the configuration in use with an intake of one
    slot. A user may set no fewer than 16 (`pulsetrace.config`); the core
    takes any capacity from 1, and with one slot nearly every ``end()``
    finds the intake full, often while the worker or the export thread
    drains it: the case under test. The tracer reads its configuration field
    by field, so it is given the fields with that one changed."""
    cfg = pulsetrace.get_config()
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    _runtime.tracer().configure(types.SimpleNamespace(**{**values, "intake_queue_size": 1}))


def _us(ns: int) -> str:
    return f"{ns / 1e3:.1f} us"


def test_ending_a_span_never_waits_for_a_drain(queued):
    fresh(export_queue_size=2_000, export_interval_ms=50.0)
    _with_an_intake_of_one()
    # One trace first, taken before the exporter comes: the operations'
    # histograms exist before the measurement starts.
    with pulsetrace.start_span("request", kind="server") as root:
        pulsetrace.start_span("query", kind="client", parent=root).end()
    assert len(_runtime.tracer().drain(10**9)) == 1
    before = pulsetrace.counters()
    exporter = SlowExporter()
    pulsetrace.add_exporter(exporter)
    walls = array("q")
    notable: list[Call] = []
    produced = [0] * THREADS
    start = threading.Barrier(THREADS + 1)
    deadline = 0.0

    def work(i: int) -> None:
        my_walls, my_notable = array("q"), []
        start.wait()
        while time.monotonic() < deadline:
            root = pulsetrace.start_span("request", kind="server")
            child = pulsetrace.start_span("query", kind="client", parent=root)
            _end_measured(child, my_walls, my_notable)
            _end_measured(root, my_walls, my_notable)
            produced[i] += 1
            time.sleep(0)  # let the other threads (and the export thread) run
        walls.extend(my_walls)
        notable.extend(my_notable)

    gc.disable()
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + LOAD_S
        start.wait()
        for t in threads:
            t.join()
    finally:
        gc.enable()
    try:
        exports_during_load = exporter.batches
        assert pulsetrace.flush(timeout=3 * EXPORT_S)
        counters = pulsetrace.counters()
        latency = {row["name"]: row["count"] for row in pulsetrace.latency()}
        exposition = _runtime.tracer().render_metrics()[0].decode()
    finally:
        pulsetrace.remove_exporter(exporter)
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)

    ordered = sorted(walls)
    paused = sorted((c for c in notable if c.kernel_paused()), key=lambda c: c.wall_ns)
    checked = sorted((c for c in notable if not c.kernel_paused()), key=lambda c: c.wall_ns)
    quiet = [w for w in ordered if w < NOTABLE_NS]
    checked_max = max([*(c.wall_ns for c in checked[-1:]), *quiet[-1:]])
    slept = [c for c in checked if c.slept]
    n = len(ordered)
    print(
        f"\n{n:,} end() calls by {THREADS} threads, intake of 1, "
        f"{exports_during_load} exports of {EXPORT_S:g} s running meanwhile: "
        f"p50 {_us(ordered[n // 2])}, p99 {_us(ordered[n * 99 // 100])}, "
        f"p99.9 {_us(ordered[n * 999 // 1000])}, max {_us(ordered[-1])}"
        f"\n  paused by the kernel (reported, not checked): {len(paused):,} calls, "
        f"max {_us(paused[-1].wall_ns) if paused else '-'}"
        f"\n  checked: {n - len(paused):,} calls, max {_us(checked_max)}; "
        f"slept (waited): {len(slept)}, max {_us(slept[-1].wall_ns) if slept else '-'}"
        f"\n  processed by the ending thread: in order {counters['spans_processed_inline']:,}, "
        f"ahead of the queue {counters.get('spans_processed_ahead', '-')}"
    )

    assert exports_during_load >= 1, "the exporter was busy while spans ended"
    assert (
        counters["spans_processed_inline"] + counters.get("spans_processed_ahead", 0) > 0
    ), "the intake was full"
    assert not slept, f"{len(slept)} end() calls slept (waited for a lock): {slept[-5:]}"
    too_slow = [c for c in checked if c.wall_ns >= LIMIT_NS]
    # A call that ran on the CPU all along did work, it did not wait; on this
    # shared 2-core VM, time the hypervisor takes from a thread counts as its
    # CPU time, and one such call in a run was seen (1.06 ms of 282k calls).
    # A few are reported and tolerated; none may reach 5 ms, and none may
    # have waited (the check above, the property under test).
    busy = [c for c in too_slow if c.cpu_ns >= 0.9 * c.wall_ns]
    print(f"  checked calls of 1 ms or more: {too_slow}")
    assert len(busy) == len(too_slow), f"end() calls of 1 ms or more off the CPU: {too_slow}"
    assert len(busy) <= 3 and all(c.wall_ns < 5 * LIMIT_NS for c in busy), busy

    # Every span counts in the histograms, every trace is decided once, and
    # every span of a kept trace reached the exporter or is counted as
    # dropped; nothing is left behind, no exported trace lost a span.
    def new(name: str) -> int:
        return counters.get(name, 0) - before.get(name, 0)

    traces = sum(produced)
    assert latency == {"request": traces + 1, "query": traces + 1}  # with the first
    assert sum(new(k) for k in counters if k.startswith("traces_kept_")) == traces
    exported = sum(len(t) for t in exporter.traces)
    left_out = new("spans_dropped_intake_full")
    assert exported + new("spans_dropped_export_full") + left_out == 2 * traces
    assert new("spans_handed_to_exporters") == exported
    assert new("traces_handed_to_exporters") == len(exporter.traces)
    if left_out == 0:
        assert new("traces_dropped_export_full") + len(exporter.traces) == traces
        assert all(len(t) == 2 for t in exporter.traces), "every exported trace is whole"
    assert counters["spans_late_kept"] == counters["spans_late_dropped"] == 0
    assert counters["spans_dropped_trace_limit"] == 0
    assert counters["open_traces"] == counters["export_queue_spans"] == 0
    # The outcomes of a full intake are in the Prometheus self-metrics too.
    for name in (
        "spans_processed_inline",
        "spans_processed_ahead",
        "traces_decision_deferred",
        "spans_dropped_intake_full",
    ):
        assert f"\npulsetrace_{name}_total {counters[name]}\n" in exposition
