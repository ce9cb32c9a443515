"""Custom metrics merged over processes keep what each process's copy
rebuilds to (``metrics_state.parsed``): a copy unchanged since the last read
is not rebuilt, a changed copy is (the merged view never shows stale
numbers), and a dead process's counts stay in the view once, also after
its copy is folded into ``dead.snap``. Forked children are the other
processes, publishing into the serving process's workers directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import prefork
import pytest
from test_workers_merge import _fresh_view, _until, serving  # noqa: F401 (a fixture)

import pulsetrace.metrics as metrics
from pulsetrace.monitoring import metrics_custom, metrics_state, workers


@pytest.fixture
def latency(serving):  # noqa: F811 (the fixture imported above)
    metrics_custom.clear()
    metrics_state.forget()
    try:
        yield metrics.create_custom_histogram("kept_seconds", "kept", ["route"])
    finally:
        metrics_custom.clear()
        metrics_state.forget()


def _count() -> int:
    """The merged view's number of observed values (a fresh view); -1
    while this process is alone."""
    _fresh_view()
    merged = metrics_custom.merged()
    if merged is None:
        return -1
    (m,) = metrics_custom.to_json(merged)
    return sum(s["count"] for s in m["series"])


def _snaps(tmp_path: Path, pid: int) -> list[str]:
    (app_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return [p.name for p in app_dir.glob(f"{pid}-*.snap")]


def test_a_changed_copy_is_rebuilt_an_unchanged_one_is_not_and_a_dead_one_counts_once(
    latency, tmp_path, monkeypatch
):
    latency.observe(0.1, route="/a")
    go_r, go_w = os.pipe()

    def changing() -> None:
        os.close(go_w)  # the read below ends when the test closes its end
        for _ in range(10):
            latency.observe(0.2, route="/a")
        workers.publish(force=True)
        os.read(go_r, 1)  # the test has read the first copy
        for _ in range(5):
            latency.observe(0.3, route="/b")
        workers.publish(force=True)

    def dying() -> None:
        for _ in range(100):
            latency.observe(0.4, route="/a")
        workers.publish(force=True)

    alive, alive_w = prefork.fork_child(changing, stay=True)
    dead, dead_w = prefork.fork_child(dying, stay=False)
    try:
        assert os.waitpid(dead, 0)[1] == 0
        _until(lambda: _count() == 111, _count)
        # The dead child's copy folded into dead.snap: still counted once.
        _until(lambda: not _snaps(tmp_path, dead), lambda: _snaps(tmp_path, dead))
        assert _count() == 111

        rebuilt: list[Any] = []
        parse = metrics_state.parse

        def counting(state: Any) -> Any:
            rebuilt.append(state)
            return parse(state)

        monkeypatch.setattr(metrics_state, "parse", counting)
        for _ in range(3):  # nothing changed: nothing rebuilt, the same numbers
            assert _count() == 111
        assert rebuilt == []

        os.write(go_w, b"g")  # the child records 5 more and publishes
        _until(lambda: _count() == 116, _count)
        # Only the changed copy was rebuilt (the merged state is kept too):
        # the child's, its 10 values of 0.2 s under /a (in thousandths; a
        # copy its own publisher wrote meanwhile may be rebuilt too).
        assert rebuilt
        for state in rebuilt:
            series = dict((tuple(k), v) for k, v in state["metrics"][0]["series"])
            assert series[("/a",)]["total"] == 10 * 200, series
        assert ("/b",) in series
        for _ in range(3):
            assert _count() == 116
    finally:
        os.close(go_w)
        os.close(go_r)
        os.close(alive_w)
        os.close(dead_w)
        os.waitpid(alive, 0)
