"""A pre-fork server forks its workers while the monitoring server may be
serving: a worker must not inherit a lock one of its parent's threads held
at that moment (that thread does not exist in the worker, so the lock would
stay held for ever, and the worker, once elected to serve, would hang on
its first ``/health/metrics`` or ``/apm/transactions``)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import pytest

from pulsetrace.monitoring import apm, endpoints, metrics_state

LOCKS: dict[str, Callable[[], Any]] = {
    "endpoints metrics rendering": lambda: endpoints._metrics_lock,
    "apm transactions rendering": lambda: apm._transactions_lock,
    "apm ring install": lambda: apm._install_lock,
    "kept metric rebuilds": lambda: metrics_state._kept.lock,
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.parametrize("name", sorted(LOCKS))
def test_a_forked_worker_does_not_inherit_a_held_lock(name):
    lock = LOCKS[name]()
    with lock:  # held by this process's thread at the fork, as a rendering would
        pid = os.fork()
        if pid == 0:  # the worker: the lock it finds must be free
            code = 0 if LOCKS[name]().acquire(timeout=2) else 3
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{name}: the worker found it held"
