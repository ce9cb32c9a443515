"""Custom and business metrics across pre-fork workers: under real gunicorn
``-w 4`` started with ``pulsetrace-run``, the master (which serves the
monitoring endpoints and no request) shows the whole application's custom
counters, histograms and gauges and its business figures, exactly, in
``/health/metrics``, ``/health/business-metrics`` and the Prometheus
exposition; a worker killed with SIGKILL keeps its counts, once, and its
gauge's level goes with it."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from test_workers_traces import Gunicorn, _get, _until

CAMPAIGNS = {"spring": ("delivered", "delivered", "failed"), "fall": ("delivered", "failed")}


def _orders(app: Gunicorn, rounds: int) -> list[tuple[str, str, int]]:
    """``rounds`` of every campaign's messages (8 threads): (campaign,
    status, worker pid) of each."""
    paths = [(c, s) for _ in range(rounds) for c, statuses in CAMPAIGNS.items() for s in statuses]

    def one(cs: tuple[str, str]) -> tuple[str, str, int]:
        status, _, headers = _get(app.port, f"/order/{cs[0]}/{cs[1]}")
        assert status == 200, (cs, status)
        return cs[0], cs[1], int(headers["X-Pid"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, paths))


def _value(campaign: str, status: str) -> float:
    return len(campaign) + (2.5 if status == "delivered" else 0.5)  # as traces_app records it


def _custom(mport: int) -> dict[str, Any]:
    _, body, _ = _get(mport, "/health/metrics")
    return {m["name"]: m for m in body["custom"]}


def _want(done: list[tuple[str, str, int]], live: set[int]) -> dict[str, Any]:
    """What the endpoints must show for the orders ``done``, ``live``
    being the workers alive that served one."""
    per: dict[str, dict[str, int]] = {}
    for c, s, _ in done:
        per.setdefault(c, {}).setdefault(s, 0)
        per[c][s] += 1
    return {
        "orders": float(len(done)),
        "values": (float(len(done)), sum(_value(c, s) for c, s, _ in done)),
        "serving": float(len(live)),
        "campaigns": {
            c: dict(n, success_rate=round(n.get("delivered", 0) / sum(n.values()), 6))
            for c, n in per.items()
        },
    }


def _shown(mport: int) -> dict[str, Any]:
    custom = _custom(mport)
    (orders,) = custom["orders"]["series"]
    (values,) = custom["order_value"]["series"]
    (serving,) = custom["serving_workers"]["series"]
    _, business, _ = _get(mport, "/health/business-metrics")
    return {
        "orders": orders["value"],
        "values": (values["count"], values["sum"]),
        "serving": serving["value"],
        "campaigns": business["campaigns"],
    }


def _exposition(mport: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _sample(text: str, name: str, label: str = "") -> float:
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*{re.escape(label)}[^}}]*\}})? (\S+)$"
    found = re.findall(pattern, text, re.M)
    assert len(found) == 1, (name, label, found)
    return float(found[0])


def test_gunicorn_custom_and_business_metrics_of_every_worker_and_of_a_killed_one(tmp_path):
    pytest.importorskip("gunicorn")
    app = Gunicorn(tmp_path)
    try:
        done: list[tuple[str, str, int]] = []
        while len({pid for *_, pid in done}) < 3 and len(done) < 500:
            done += _orders(app, 10)
        pids = {pid for *_, pid in done}
        assert len(pids) >= 3 and app.proc.pid not in pids  # the master serves none

        want = _want(done, pids)
        _until(lambda: _shown(app.mport) == want, lambda: f"{_shown(app.mport)} != {want}")
        text = _exposition(app.mport)
        assert _sample(text, "orders_total", 'kind="web"') == len(done)
        assert _sample(text, "order_value_count", 'kind="web"') == len(done)
        assert _sample(text, "serving_workers") == len(pids)
        delivered = sum(s == "delivered" for _, s, _ in done)
        # Each worker's own process figures, in /apm/status.
        _, status, _ = _get(app.mport, "/apm/status")
        rows = {w["pid"]: w for w in status["workers"]}
        assert pids <= set(rows) and rows[app.proc.pid]["serving"]
        for pid in pids | {app.proc.pid}:
            assert rows[pid]["rss_bytes"] > 10_000_000 and rows[pid]["cpu_seconds"] > 0, rows
        messages = _sample(text, "pulsetrace_business_messages_total", 'status="delivered"')
        assert messages == delivered

        # A worker killed with SIGKILL once its orders are shown: its counts
        # stay, once; its gauge's level is gone (the gauges add up over
        # live workers).
        victim = max(pids, key=lambda p: sum(pid == p for *_, pid in done))
        os.kill(victim, signal.SIGKILL)
        more = _orders(app, 6)
        assert victim not in {pid for *_, pid in more}
        live = (pids | {pid for *_, pid in more}) - {victim}
        want = _want(done + more, live)
        _until(lambda: _shown(app.mport) == want, lambda: f"{_shown(app.mport)} != {want}")
    finally:
        app.kill()
