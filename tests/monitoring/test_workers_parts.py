"""Published parts (``pulsetrace.monitoring.workers_parts``): what a process
publishes beside its histograms, merged over the application by the
serving process, with forked children as the other processes: a dead
child's state is folded once, a part the folding process had not
registered is kept for a process that has, an unchanged part is not
written again, and a bad registration is refused with a clear error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import prefork
import pytest
from test_workers_merge import _fresh_view, _until, serving  # noqa: F401 (a fixture)

from pulsetrace.monitoring import workers, workers_parts

TALLY = {"n": 0}


def _state() -> dict[str, int]:
    return {"n": TALLY["n"]}


def _sum(states: list[Any]) -> dict[str, int]:
    return {"n": sum(s["n"] for s in states)}


@pytest.fixture
def tally(serving):  # noqa: F811 (the fixture imported above)
    TALLY["n"] = 0
    workers.register_part("tally", _state, _sum)
    try:
        yield serving
    finally:
        for name in ("tally", "extra"):
            workers_parts._parts.pop(name, None)


def _child(n: int, stay: bool, extra: Optional[int] = None) -> tuple[int, int]:
    """Fork a child whose tally is ``n`` (and, with ``extra``, that
    registers a part this process has not); it publishes, and with
    ``stay`` lives until the returned descriptor is closed."""

    def work() -> None:
        TALLY["n"] = n
        if extra is not None:
            workers.register_part("extra", lambda: {"n": extra}, _sum)
        workers.publish(force=True)

    return prefork.fork_child(work, stay)


def _merged(name: str = "tally") -> Optional[int]:
    _fresh_view()
    got = workers.merged_part(name)
    return None if got is None else got["n"]


def _app_dir(tmp_path: Path) -> Path:
    (app_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return app_dir


def _own_snaps(app_dir: Path, pids: list[int]) -> list[str]:
    return [p.name for p in app_dir.glob("*.snap") if p.name.split("-")[0] in map(str, pids)]


def _dead_parts(app_dir: Path) -> dict[str, list[Any]]:
    """``dead.snap``'s parts: {name: [generation, kind, length]}."""
    head = (app_dir / "dead.snap").read_bytes().partition(b"\n")[0]
    return json.loads(head)["parts"]


def test_a_part_merges_over_processes_and_a_dead_ones_is_folded_once(tally, tmp_path):
    TALLY["n"] = 1
    assert workers.merged_part("tally") is None  # alone: callers use their own
    alive, alive_w = _child(10, stay=True)
    dead, dead_w = _child(100, stay=False)
    try:
        assert os.waitpid(dead, 0)[1] == 0
        _until(lambda: _merged() == 111, lambda: _merged())
        # The serving process's own state is live, not its last copy.
        TALLY["n"] = 2
        assert _merged() == 112
        app_dir = _app_dir(tmp_path)
        _until(lambda: not _own_snaps(app_dir, [dead]), lambda: _own_snaps(app_dir, [dead]))
        assert _dead_parts(app_dir)["tally"][1] == "state"
        for _ in range(3):  # read again and again: the dead child's state once
            assert _merged() == 112
    finally:
        os.close(alive_w)
        os.close(dead_w)
        os.waitpid(alive, 0)
    # Now dead too: folded with the first, once.
    _until(lambda: not _own_snaps(app_dir, [alive]), lambda: _own_snaps(app_dir, [alive]))
    assert _merged() == 112


def test_dead_processes_states_reach_merge_only_folded(tally, tmp_path):
    """A level (say a gauge) is the live processes' only: the fold leaves it
    out, also before the dead process's copy is written into dead.snap."""

    def merge(states: list[Any]) -> dict[str, int]:
        return {k: sum(s[k] for s in states) for k in ("n", "level")}

    def fold(states: list[Any]) -> dict[str, int]:
        return {"n": sum(s["n"] for s in states), "level": 0}

    workers.register_part("extra", lambda: {"n": TALLY["n"], "level": TALLY["n"]}, merge, fold)
    TALLY["n"] = 1
    alive, alive_w = _child(10, stay=True)
    dead, dead_w = _child(100, stay=False)
    try:
        assert os.waitpid(dead, 0)[1] == 0
        app_dir = _app_dir(tmp_path)
        # The dead child's own file, not folded yet: the first read sees it
        # (unless a background read of this process folded it first).
        _until(
            lambda: _own_snaps(app_dir, [alive])
            and (_own_snaps(app_dir, [dead]) or (app_dir / "dead.snap").exists()),
            "the children's copies",
        )
        _fresh_view()
        assert workers.merged_part("extra") == {"n": 111, "level": 11}
        _until(lambda: not _own_snaps(app_dir, [dead]), lambda: _own_snaps(app_dir, [dead]))
        _fresh_view()
        assert workers.merged_part("extra") == {"n": 111, "level": 11}
    finally:
        os.close(alive_w)
        os.close(dead_w)
        os.waitpid(alive, 0)


def test_a_part_the_folding_process_has_not_registered_is_kept(tally, tmp_path):
    pid, w = _child(5, stay=False, extra=7)
    os.close(w)
    assert os.waitpid(pid, 0)[1] == 0
    app_dir = _app_dir(tmp_path)
    _until(lambda: _merged() == 5, lambda: _merged())
    _until(lambda: not _own_snaps(app_dir, [pid]), lambda: _own_snaps(app_dir, [pid]))
    assert _dead_parts(app_dir)["extra"][1] == "states"  # its states, unfolded
    with pytest.raises(ValueError, match="no part named 'extra'"):
        workers.merged_part("extra")
    workers.register_part("extra", lambda: {"n": 1}, _sum)
    assert _merged("extra") == 8  # this process's 1 and the dead child's 7
    # A second dead child: now folded with the kept state, each once.
    pid, w = _child(0, stay=False, extra=30)
    os.close(w)
    os.waitpid(pid, 0)
    _until(lambda: _merged("extra") == 38, lambda: _merged("extra"))
    _until(lambda: not _own_snaps(app_dir, [pid]), lambda: _own_snaps(app_dir, [pid]))
    assert _dead_parts(app_dir)["extra"][1] == "state"
    assert _merged("extra") == 38 and _merged() == 5


def test_an_unchanged_part_is_not_written_again(tally):
    version = {"v": 0, "seen": None}

    def state() -> Any:
        if version["seen"] == version["v"]:
            return workers.UNCHANGED
        version["seen"] = version["v"]
        return {"v": version["v"]}

    workers.register_part("extra", state, lambda states: states[0])
    assert workers.publish(force=True) is True
    assert workers.publish() is False  # nothing recorded, nothing changed
    version["v"] = 1
    assert workers.publish() is True
    assert workers.publish() is False
    assert workers_parts.get("extra").current() == (2, {"v": 1})


def test_a_part_whose_state_fails_keeps_its_last_copy(tally):
    calls = {"n": 0}

    def state() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("broken")
        return {"n": 3}

    workers.register_part("extra", state, _sum)
    assert workers.publish(force=True) is True
    time.sleep(0.01)
    assert workers.publish(force=True) is True  # the histograms still published
    me = workers._identity()
    head = Path(workers.directory(), me + ".snap").read_bytes().partition(b"\n")[0]
    assert json.loads(head)["parts"]["extra"][0] == 1  # the first state, kept


@pytest.mark.parametrize(
    "args, message",
    [
        (("Traces", _state, _sum), "lowercase identifier"),
        (("", _state, _sum), "lowercase identifier"),
        (("x" * 41, _state, _sum), "lowercase identifier"),
        (("ok", None, _sum), "state must be callable"),
        (("ok", _state, "sum"), "merge must be callable"),
        (("ok", _state, _sum, 3), "fold must be callable"),
    ],
)
def test_a_bad_registration_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        workers.register_part(*args)
    assert "ok" not in workers_parts._parts


def test_a_state_that_is_not_json_is_refused_when_encoded():
    with pytest.raises(ValueError, match="not JSON"):
        workers_parts.encode({"x": object()})
