"""One view across pre-fork workers (``pulsetrace.monitoring.workers``):
the monitoring endpoints and the Prometheus exposition show the whole
application's totals, exactly, with a dead worker's counts kept once and a
replaced worker starting at zero.

- Under real gunicorn ``-w 4`` started with ``pulsetrace-run``: requests
  spread over the workers, exact totals at ``/apm/transactions``,
  ``/health/metrics``, ``/apm/metrics`` and in the exposition; a worker
  killed with SIGKILL (gunicorn replaces it) and more requests: exact
  totals again.
- In this process with forked children: two processes' histograms add
  exactly, a dead one is kept once, a new one starts at zero.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import prefork
import pytest

import pulsetrace
from pulsetrace import _diag, prometheus
from pulsetrace.monitoring import workers
from servers import free_port

from conftest import fresh

HERE = Path(__file__).resolve().parent
RUN = str(Path(sys.executable).with_name("pulsetrace-run"))


def _get(port: int, path: str) -> tuple[int, bytes]:
    status, body, _ = prefork.get(port, path)
    return status, body


_until = prefork.until


def _prometheus_total(text: str, operation: str) -> int:
    """``http_server_requests_total`` of ``operation`` in an exposition."""
    pattern = rf'^http_server_requests_total{{operation="{re.escape(operation)}"[^}}]*}} (\d+)$'
    found = re.findall(pattern, text, re.M)
    return sum(int(v) for v in found)


def _counts(mport: int, operation: str) -> dict[str, int]:
    """The operation's total as each endpoint shows it."""
    _, body = _get(mport, "/apm/transactions?window=all")
    tx = sum(r["count"] for r in json.loads(body)["operations"] if r["name"] == operation)
    _, body = _get(mport, "/health/metrics")
    hm = sum(r["count"] for r in json.loads(body)["operations"] if r["name"] == operation)
    _, body = _get(mport, "/apm/metrics")
    server = json.loads(body)["by_kind"].get("server", {}).get("count", 0)
    out = {"transactions": tx, "health_metrics": hm, "apm_metrics_server": server}
    for path in ("/health/prometheus", "/metrics"):
        _, body = _get(mport, path)
        out[path] = _prometheus_total(body.decode(), operation)
    return out


class Gunicorn(prefork.Gunicorn):
    """``pulsetrace-run gunicorn -w 4 workers_app:app`` with the monitoring
    server (and the exposition) on ``mport``."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, "workers_app:app", "workers-test", PROMETHEUS_ENABLED="true")

    def work(self, n: int) -> dict[int, int]:
        """``n`` requests from 8 threads; served requests per worker pid."""

        def one(_: int) -> int:
            status, body = _get(self.port, "/work")
            assert status == 200, body
            return int(json.loads(body)["pid"])

        served: dict[int, int] = {}
        with ThreadPoolExecutor(8) as pool:
            for pid in pool.map(one, range(n)):
                served[pid] = served.get(pid, 0) + 1
        return served


def test_gunicorn_workers_totals_are_exact_and_survive_a_killed_worker(tmp_path):
    pytest.importorskip("gunicorn")
    app = Gunicorn(tmp_path)
    try:
        # Rounds of 120 until at least 3 workers served (on a loaded
        # machine the last workers may still be importing the application).
        n, m, served = 0, 120, {}
        while len(served) < 3 and n < 600:
            for pid, count in app.work(120).items():
                served[pid] = served.get(pid, 0) + count
            n += 120
        assert len(served) >= 3, f"requests served by {served}"
        # /apm/metrics counts every SERVER span: the one /ping as well.
        want = dict.fromkeys(_counts(app.mport, "GET /work"), n)
        want["apm_metrics_server"] = n + 1
        _until(
            lambda: _counts(app.mport, "GET /work") == want,
            lambda: f"{_counts(app.mport, 'GET /work')} != {want}: {app.output()}",
        )

        # One worker killed without a chance to publish again: gunicorn
        # replaces it, and its requests stay in the totals, once.
        victim = max(served, key=served.get)
        os.kill(victim, signal.SIGKILL)
        more = app.work(m)
        assert victim not in more
        want = dict.fromkeys(want, n + m)
        want["apm_metrics_server"] = n + m + 1
        _until(
            lambda: _counts(app.mport, "GET /work") == want,
            lambda: f"{_counts(app.mport, 'GET /work')} != {want}: {app.output()}",
        )

        _, body = _get(app.mport, "/apm/status")
        seen = {w["pid"]: w for w in json.loads(body)["workers"]}
        assert seen[victim]["alive"] is False
        assert all(seen[pid]["alive"] for pid in more), seen
        assert sum(w["serving"] for w in seen.values()) == 1
        # The served requests' pids are workers, not the serving process
        # (the master, which serves no request).
        (server,) = [pid for pid, w in seen.items() if w["serving"]]
        assert server == app.proc.pid and server not in served
    finally:
        app.kill()


# --- in this process, with forked children -----------------------------------------


@pytest.fixture
def serving(tmp_path):
    """This process serves the monitoring endpoints with the workers'
    files under ``tmp_path``; children forked from it publish there."""
    prometheus.stop_server()
    workers.reset()
    addr = f"127.0.0.1:{free_port()}"  # the application's: elected
    fresh(monitoring_enabled=True, workers_dir=str(tmp_path), metrics_addr=addr)
    addr = prometheus.start_server(addr)
    assert addr is not None
    try:
        yield addr[1]
    finally:
        prometheus.stop_server()
        workers.reset()
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


def _record(name: str, n: int, errors: int = 0) -> None:
    for i in range(n):
        with pulsetrace.start_span(name, kind="server") as span:
            if i < errors:
                span.set_status("error", "failed")


def _child(name: str, n: int, errors: int, stay: bool) -> tuple[int, int]:
    """Fork a child that records ``n`` spans and publishes them; with
    ``stay`` it lives until the returned descriptor is closed. Returns
    (pid, the parent's end of the pipe)."""

    def work() -> None:
        _record(name, n, errors)
        pulsetrace.flush()
        workers.publish(force=True)

    return prefork.fork_child(work, stay)


def _row(name: str) -> dict:
    (row,) = [r for r in workers.latency() if r["name"] == name]
    return row


def _fresh_view() -> None:
    time.sleep(workers.VIEW_TTL_S + 0.05)


def test_two_processes_add_exactly_and_a_dead_one_is_kept_once(serving):
    name = "job"
    _record(name, 3)
    _diag.internal_error("test", RuntimeError("counted by the parent"))
    alive_pid, alive_w = _child(name, 5, errors=1, stay=True)
    dead_pid, dead_w = _child(name, 7, errors=2, stay=False)
    try:
        assert os.waitpid(dead_pid, 0)[1] == 0
        _until(lambda: _row(name)["count"] == 15, lambda: workers.processes())
        row = _row(name)
        assert (row["count"], row["errors"]) == (15, 3)
        procs = {p["pid"]: p for p in workers.processes()}
        assert procs[dead_pid]["alive"] is False and procs[alive_pid]["alive"] is True
        assert procs[os.getpid()]["serving"] is True

        # Counters add; what the children inherited at fork is the parent's.
        assert workers.counters()["internal_errors"] == pulsetrace.counters()["internal_errors"]

        # The alert evaluator judges the same application-wide figures.
        from pulsetrace.monitoring.alerts.engine import Manager
        from pulsetrace.monitoring.alerts.store import Store

        seen = Manager(Store(":memory:"), {}).snapshot(time.time()).operations
        (judged,) = [r for r in seen if r["name"] == name]
        assert (judged["count"], judged["errors"]) == (15, 3)

        # Read again, and again: the dead worker's copy is counted once.
        for _ in range(2):
            _fresh_view()
            assert _row(name)["count"] == 15
        # The exposition shows the same totals.
        body, _ = prometheus.exposition()
        assert _prometheus_total(body.decode(), name) == 15

        # A replacement (a new process) starts at zero: nothing added until
        # it records, then exactly what it recorded.
        new_pid, new_w = _child(name, 0, errors=0, stay=True)
        try:
            _until(lambda: new_pid in {p["pid"] for p in workers.processes()}, "the new child")
            assert _row(name)["count"] == 15
        finally:
            os.close(new_w)
            os.waitpid(new_pid, 0)
        _record(name, 2)
        _fresh_view()
        assert _row(name)["count"] == 17
    finally:
        os.close(alive_w)
        os.close(dead_w)
        os.waitpid(alive_pid, 0)


def test_a_single_process_reads_its_own_histograms(serving):
    """Nothing forked: the view is this process's own, as before."""
    _record("alone", 4)
    _fresh_view()
    assert workers.view() is None
    assert _row("alone")["count"] == 4
    assert [p["pid"] for p in workers.processes()] == [os.getpid()]


def test_a_corrupt_file_is_skipped_and_counted(serving, tmp_path):
    _record("job", 2)
    workers.publish(force=True)
    (app_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (app_dir / "12345-deadbeef.snap").write_bytes(b'{"pid":12345,"at":0,"counters":{}}\nnope')
    before = pulsetrace.counters()["internal_errors"]
    _fresh_view()
    assert _row("job")["count"] == 2
    assert pulsetrace.counters()["internal_errors"] > before


def test_a_worker_takes_over_when_the_serving_process_dies(tmp_path):
    """The serving process killed: a worker is elected and serves the same
    totals on the same address, the dead server listed as not alive."""
    mport = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        MONITORING_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{mport}",
        PULSETRACE_WORKERS_DIR=str(tmp_path / "workers"),
        PULSETRACE_ALERT_DIR=str(tmp_path / "alerts"),
        OTEL_TRACES_EXPORTER="none",
    )
    log = tmp_path / "app.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "workers_fork_app.py"), "25"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def status() -> dict:
        return json.loads(_get(mport, "/apm/status")[1])

    def total() -> int:
        ops = json.loads(_get(mport, "/health/metrics")[1])["operations"]
        return sum(r["count"] for r in ops if r["name"] == "job")

    try:
        _until(lambda: total() == 50, lambda: log.read_text())
        (server,) = [w["pid"] for w in status()["workers"] if w["serving"]]
        assert server == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _until(lambda: status()["workers"][0]["pid"] != proc.pid, "a new server")
        assert total() == 50
        seen = {w["pid"]: w for w in status()["workers"]}
        assert seen[proc.pid]["alive"] is False and len(seen) == 3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            proc.wait(10)


def test_dead_workers_are_folded_into_one_file_counted_once(serving, tmp_path):
    """The serving process folds dead workers' copies into ``dead.snap``
    (the number of files stays bounded as workers are replaced); totals do
    not change, and a folded copy that is still there is not read again."""
    name = "job"
    _record(name, 1)
    gone = []
    for n in (2, 4):
        pid, w = _child(name, n, errors=0, stay=False)
        os.close(w)
        assert os.waitpid(pid, 0)[1] == 0
        gone.append(pid)
    (app_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]

    def own_files() -> list[str]:
        pids = {str(pid) for pid in gone}
        return [p.name for p in app_dir.glob("*.snap") if p.name.split("-")[0] in pids]

    _until(lambda: _row(name)["count"] == 7, lambda: workers.processes())
    _until(lambda: (_fresh_view(), workers.view(), not own_files())[-1], own_files)
    header = json.loads((app_dir / "dead.snap").read_bytes().partition(b"\n")[0])
    assert sorted(d["pid"] for d in header["dead"]) == sorted(gone)
    _fresh_view()
    assert _row(name)["count"] == 7
    procs = {p["pid"]: p for p in workers.processes()}
    assert [procs[pid]["alive"] for pid in gone] == [False, False]

    # A fold interrupted before the folded files were removed: a file that
    # dead.snap names is not read again.
    workers.publish(force=True)
    mine = next(p for p in app_dir.glob("*.snap") if p.name.startswith(f"{os.getpid()}-"))
    (app_dir / f"{header['absorbed'][0]}.snap").write_bytes(mine.read_bytes())
    _fresh_view()
    assert _row(name)["count"] == 7

    # One more dead worker: folded with the others, once.
    pid, w = _child(name, 8, errors=0, stay=False)
    os.close(w)
    os.waitpid(pid, 0)
    gone.append(pid)
    _until(lambda: (_fresh_view(), _row(name)["count"] == 15)[-1], lambda: workers.processes())
    _until(lambda: (_fresh_view(), workers.view(), not own_files())[-1], own_files)
    _fresh_view()
    assert _row(name)["count"] == 15
    assert len(list(app_dir.glob("*.snap"))) == 2  # this process's and dead.snap


def test_an_earlier_runs_files_are_never_read(tmp_path):
    """A run with an id set by hand starts without the files an earlier run
    of it left; earlier runs' own directories are removed, not those of an
    application still running."""
    old = tmp_path / "unknown_service-fixed"
    old.mkdir(mode=0o700)
    (old / "111-aaaa.snap").write_bytes(b'{"pid":111,"at":0,"counters":{}}\nstale')
    (old / "111-aaaa.lock").touch()
    earlier, running = tmp_path / "unknown_service-auto-1", tmp_path / "other-auto-2"
    for d in (earlier, running):
        d.mkdir(mode=0o700)
        (d / "5-x.lock").touch()
        os.utime(d, (time.time() - 3600, time.time() - 3600))
    held = os.open(running / "5-x.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a process of that application lives
    prometheus.stop_server()
    workers.reset()
    try:
        fresh(workers_dir=str(tmp_path), app_id="fixed")
        assert workers.directory() == str(old)
        assert sorted(p.name for p in old.iterdir()) == []
        assert not earlier.exists() and running.exists()
    finally:
        os.close(held)
        workers.reset()
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)
