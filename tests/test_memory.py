"""Memory stays within the configured buffer bound when nothing drains the
export queue (an exporter that never takes its traces)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys
import pulsetrace

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

pulsetrace.configure(sample_rate=1.0, export_queue_size=20_000, max_open_traces=2_000)
# Kept traces are queued as while an exporter is set, but nothing takes them.
pulsetrace._runtime.tracer().exporting = True
start = rss()
marks = []
ss = pulsetrace.start_span
for i in range(1_000_000):
    if i % 10 == 0:
        # One trace in ten stays open a while (its root ends 9 spans later).
        root = ss("GET /items/{id}", kind="server")
    with ss("SELECT items", kind="client", parent=root,
            attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT",
                        "db.query.text": "SELECT * FROM items WHERE id = ?"}):
        pass
    if i % 10 == 9:
        root.end()
    if i % 100_000 == 99_999:
        marks.append(rss())
print(json.dumps({"start": start, "marks": marks, "counters": pulsetrace.counters()}))
"""


@pytest.mark.slow
def test_a_million_spans_never_exported_stay_within_the_bound():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=300
    )
    r = json.loads(out.stdout)
    c = r["counters"]
    # The export queue filled to its bound and everything after was dropped, counted.
    assert c["export_queue_spans"] <= 20_000
    assert c["spans_dropped_export_full"] > 1_000_000 - 20_000 - 10
    mb = 1 << 20
    growth = (r["marks"][-1] - r["start"]) / mb
    # 20,000 queued spans of ~1 KB, histograms and the decided-trace memory.
    assert growth < 48, f"grew {growth:.1f} MB"
    # Once the buffers are full, memory is flat: no leak per span.
    steady = (r["marks"][-1] - r["marks"][1]) / mb
    assert steady < 4, f"grew {steady:.1f} MB after the buffers filled"
