"""Alert state survives processes: an escalation interrupted by SIGKILL
mid-delivery, an acknowledgement made by a process killed right after, and
a restarted process that neither loses the acknowledgement nor sends a
step twice. One evaluator per application: the election lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alert_support import Receiver

from pulsetrace.monitoring.alerts.engine import Election
from pulsetrace.monitoring.alerts.store import Store

HERE = Path(__file__).resolve().parent
T0 = 1_800_000_000.0

# One process of the application: a manager over the shared SQLite file, a
# critical rule that is active, the clock at argv[3]; then argv[4]:
# "cycle" (evaluate, deliver, exit) or "ack <alert id>".
CHILD = """
import sys, time
sys.path.insert(0, {here!r})
from alert_support import Clock, http_channels
from pulsetrace.monitoring.alerts.engine import Manager
from pulsetrace.monitoring.alerts.rules import Verdict, make_rule
from pulsetrace.monitoring.alerts.store import Store

db, url, now, action = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
m = Manager(Store(db), http_channels(url), clock=Clock(now), backoff_s=0.01)
m.add(make_rule("err", "Errors", lambda s: Verdict(True, 0.3, 0.05, "GET /x"),
                severity="critical"))
if action == "cycle":
    m.cycle()
    print("cycled", flush=True)
    m.deliverer.wait_idle(60)
else:
    alert = m.acknowledge(sys.argv[5], "bob")
    print("acked", alert["state"], flush=True)
    time.sleep(60)  # killed here
"""


def _run(db, url, minutes, *action):
    script = CHILD.format(here=str(HERE))
    return subprocess.Popen(
        [sys.executable, "-c", script, db, url, str(T0 + minutes * 60), *action],
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def _done(proc):
    code = proc.wait(60)
    proc.stdout.close()
    return code


def _wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def test_killed_mid_escalation_and_after_an_ack_nothing_is_lost_or_sent_twice(tmp_path, rx):
    db = str(tmp_path / "alerts.db")
    # Fires: step 0.
    assert _done(_run(db, rx.url, 0, "cycle")) == 0
    assert sorted(rx.paths()) == ["/slack", "/webhook"]
    # 15 minutes on: step 1 decided; PagerDuty hangs and the process is killed.
    rx.hang["/pagerduty"] = 30.0
    proc = _run(db, rx.url, 15, "cycle")
    _wait_for(lambda: any(g["path"] == "/pagerduty" for g in rx.got))
    _kill(proc)
    (alert,) = Store(db).alerts()
    assert alert["step"] == 1
    # Acknowledged by a process killed right after answering.
    proc = _run(db, rx.url, 20, "ack", alert["id"])
    assert proc.stdout.readline().split() == ["acked", "acknowledged"]
    _kill(proc)
    # Restarted two hours on: the interrupted delivery is sent again (same
    # delivery key, for the receiver to drop the repeat); no step after it.
    assert _done(_run(db, rx.url, 120, "cycle")) == 0
    store = Store(db)
    (alert,) = store.alerts()
    assert alert["state"] == "acknowledged" and alert["acked_by"] == "bob"
    assert alert["acked_at"] == T0 + 20 * 60 and alert["step"] == 1
    keys = [
        g["headers"].get("X-Pulsetrace-Delivery") for g in rx.got if "pagerduty" not in g["path"]
    ]
    assert len(keys) == len(set(keys)) == 3  # slack, webhook, sms: once each
    assert sorted(p for p in rx.paths() if p != "/pagerduty") == ["/slack", "/sms", "/webhook"]
    # The one delivery in flight at the kill is repeated by the restarted
    # evaluator (only: the acknowledging process sends nothing), same key.
    pd = [g for g in rx.got if g["path"] == "/pagerduty"]
    assert len(pd) == 2 and {g["json"]["dedup_key"] for g in pd} == {alert["id"]}
    assert [(d["step"], d["channel"], d["status"]) for d in store.deliveries(alert["id"])] == [
        (0, "slack", "sent"),
        (0, "webhook", "sent"),
        (1, "pagerduty", "sent"),
        (1, "sms", "sent"),
    ]
    escalated = [
        json.loads(h["detail"])["step"]
        for h in store.history(alert["id"])
        if h["event"] == "escalated"
    ]
    assert escalated == [0, 1]


def test_one_evaluator_per_application_and_another_takes_over(tmp_path):
    lock = str(tmp_path / "evaluator.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pulsetrace.monitoring.alerts.engine import Election;"
            f"e = Election({lock!r}); print(e.leader(), flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        here = Election(lock)
        assert here.leader() is False
    finally:
        _kill(holder)
    assert here.leader() is True  # the leader died: this process takes over
    # A worker forked from the leader does not inherit the leadership, and
    # its exit does not release the leader's lock.
    pid = os.fork()
    if pid == 0:
        os._exit(0 if here.leader() is False else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert here.leader() is True and Election(lock).leader() is False


LEADER_THEN_FORK = """
import os, sys, time
from pulsetrace.monitoring.alerts.engine import Election
e = Election(sys.argv[1])
assert e.leader()
pid = os.fork()
if pid == 0:  # a worker that outlives the leader
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
"""


def test_a_worker_outliving_the_leader_does_not_keep_the_leadership(tmp_path):
    lock = str(tmp_path / "evaluator.lock")
    out = subprocess.run(
        [sys.executable, "-c", LEADER_THEN_FORK, lock], capture_output=True, text=True, timeout=30
    )
    worker = int(out.stdout.strip())
    try:
        assert Election(lock).leader() is True  # the leader exited; its worker lives on
    finally:
        os.kill(worker, signal.SIGKILL)
