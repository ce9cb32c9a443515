"""One view across pre-fork workers: under gunicorn ``-w N`` (or any
server that forks workers) the monitoring endpoints and the Prometheus
exposition show the whole application, not the process that serves them.

How it works:

- **The application.** The first process that starts the application's
  metrics server (at ``PULSETRACE_METRICS_ADDR``) picks an application id
  and puts it in the environment (``PULSETRACE_APP_ID``); the workers it
  forks inherit it. Its files live in
  ``<PULSETRACE_WORKERS_DIR>/<service>-<id>/`` (default: a private ``0700``
  directory ``pulsetrace-<uid>`` under the system's temporary directory). A
  new run has a new id, so an earlier run's files are never read;
  directories of earlier runs that no living process holds a lock in are
  removed when a run starts. An id the agent set itself is not taken over
  by a program that merely inherits the environment (a subprocess started
  with ``exec`` starts its own application); an id set by hand
  (``PULSETRACE_APP_ID=api``) is shared by every process that has it, for
  applications whose workers each start pulsetrace themselves (the files
  an earlier run left in its directory are removed when no process of it
  is left).
- **One server.** The process that serves the endpoints is elected with the
  alert evaluator's file lock (``server.lock`` in that directory): the first
  process to take it serves until it exits (under ``pulsetrace-run gunicorn``,
  the master); every other process retries every second and one takes over
  when the holder dies.
- **Publishing.** Every process writes a copy of its native histograms
  (each key's HdrHistogram V2 encoding with its exact sum, min and max:
  ``pulsetrace_core::state``) and its counters to ``<pid>-<nonce>.snap``
  about every second when something changed, on a daemon thread (never on
  the request path), and once more at exit; each write goes to a
  temporary file renamed over the old one, so a reader never sees half a
  file. While alive a process holds
  an exclusive lock on its ``<pid>-<nonce>.lock``: the serving process
  tells live from dead workers by trying that lock.
- **Merging.** The serving process adds its own live histograms and every
  other process's last copy into one registry (the core's exact addition:
  counts, sums, errors add; percentiles are read from the merged
  histogram). Each process is one file, so a dead worker's last counts stay
  in the totals, are counted once, and a replacement (a new pid and nonce)
  starts at zero. The serving process folds dead workers' copies into one
  ``dead.snap`` (``workers_files``), so replaced workers do not pile up
  files. Counters add up (a forked worker's own, not those it inherited);
  levels (open traces, queue fill, registry keys) add up over live
  processes only. A worker killed with
  SIGKILL loses what it recorded since its last copy (at most about a
  second).
- **Parts.** Beside the histograms a process publishes *parts*
  (:func:`register_part`: a state, how states merge, how dead processes'
  states fold), such as its kept traces and error groups
  (:mod:`pulsetrace.monitoring.traces_merge`); :func:`merged_part` reads
  one over the whole application. They travel in the same ``.snap`` file,
  so one atomic rename carries a process's whole state and a dead worker
  is folded (histograms and parts) in one write, counted once
  (:mod:`pulsetrace.monitoring.workers_parts` says why, and what keeps an
  unchanged part from being encoded or decoded again).
- **A single process** (nothing forked) has no other file: it reads its
  own histograms (and its own parts) as before.

``processes()`` lists what was seen (``/apm/status``'s ``workers``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import tempfile
import threading
import time
from typing import Any, Optional

from pulsetrace import _diag, _native, _runtime
from pulsetrace._suppress import suppressed
from pulsetrace.monitoring import workers_parts
from pulsetrace.monitoring.workers_files import LEVELS, Directory, View, clear_if_stale, sweep
from pulsetrace.monitoring.workers_parts import UNCHANGED, register_part

__all__ = ["UNCHANGED", "merged_part", "register_part"]

#: Seconds between two copies a process publishes.
PUBLISH_INTERVAL_S = 1.0
#: Seconds a merged view is reused (a probe storm reads the files once).
VIEW_TTL_S = 0.5
APP_ID_VAR = "PULSETRACE_APP_ID"
#: The prefix of an id the agent chose itself (see the module doc).
_AUTO = "auto-"

_lock = threading.RLock()
_app_id: Optional[str] = None
_dir: Optional[Directory] = None
_me: Optional[str] = None  # this process's file name, "<pid>-<nonce>"
_lock_fd: Optional[int] = None
_thread: Optional[threading.Thread] = None
_stop = threading.Event()
#: The server this process stands for: (addr, monitoring), or None.
_wish: Optional[tuple[str, Optional[bool]]] = None
_election: Any = None
#: Compresses only the histograms recorded since the last copy.
_encoder = _native.StateEncoder()
#: What was last published: (histograms' fingerprint, counters, state,
#: parts' generations).
_last: Optional[tuple[int, dict[str, int], bytes, dict[str, int]]] = None
#: In a forked worker: the counters it inherited from its parent (those
#: kept outside the native core, which starts afresh), not its own counts.
_inherited: dict[str, int] = {}


def app_id() -> str:
    """The application's id (chosen, and put in the environment, on first use)."""
    global _app_id
    if _app_id is None:
        given = _runtime.config().app_id or ""
        if given and not given.startswith(_AUTO):
            _app_id = given
        else:
            _app_id = _AUTO + secrets.token_hex(8)
            os.environ[APP_ID_VAR] = _app_id
    return _app_id


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "_"


def _private(path: str) -> str:
    """Create ``path`` (mode 0700) unless it exists; refuse one that is a
    link, belongs to another user or is open to others."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user")
    if st.st_mode & 0o077:
        raise OSError(f"{path} is open to other users (mode {st.st_mode & 0o777:o})")
    return path


def directory() -> str:
    """This application's directory (created, private)."""
    return _files().path


def _files() -> Directory:
    global _dir
    if _dir is None:
        cfg = _runtime.config()
        base = cfg.workers_dir
        if base is None:
            base = _private(os.path.join(tempfile.gettempdir(), f"pulsetrace-{os.getuid()}"))
        else:
            os.makedirs(base, 0o700, exist_ok=True)
        path = os.path.join(base, f"{_safe(cfg.service_name)}-{_safe(app_id())}")
        existed = os.path.isdir(path)
        _private(path)
        if existed:
            clear_if_stale(path)  # a new run with an id set by hand
        sweep(base, keep=path)  # earlier runs' directories
        _dir = Directory(path)
    return _dir


# --- publishing ---------------------------------------------------------------


def _identity() -> str:
    """This process's name in the directory, holding its liveness lock."""
    global _me, _lock_fd
    if _me is None:
        me = f"{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(
            os.path.join(directory(), me + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(fd, fcntl.LOCK_EX)
        _me, _lock_fd = me, fd
    return _me


def _own_counters() -> dict[str, int]:
    """This process's counters, without what it inherited at fork."""
    import pulsetrace

    return {
        k: v if k in LEVELS else max(0, v - _inherited.get(k, 0))
        for k, v in pulsetrace.counters().items()
    }


def process_figures() -> dict[str, float]:
    """This process's CPU time (user and system, seconds) and resident
    memory (bytes), as ``processes()`` lists them."""
    from pulsetrace.monitoring.checks import rss_bytes

    t = os.times()
    out = {"cpu_seconds": round(t.user + t.system, 3)}
    rss = rss_bytes()
    if rss is not None:
        out["rss_bytes"] = float(rss)
    return out


def publish(force: bool = False) -> bool:
    """Write this process's copy now (skipped when nothing changed since
    the last one, unless ``force``). Returns whether it wrote."""
    global _last
    with _lock:
        me = _identity()
        counters = _own_counters()
        last = None if force else _last
        # Compressing every histogram only when something was recorded.
        fingerprint, state = _encoder.encode(_runtime.tracer(), None if last is None else last[0])
        parts = workers_parts.publishable()
        gens = {n: g for n, (g, _) in parts.items()}
        if state is None and last is not None:
            if counters == last[1] and gens == last[3]:
                return False
            state = last[2]
        assert state is not None
        header = {
            "pid": os.getpid(),
            "at": time.time(),
            "counters": counters,
            "process": process_figures(),
        }
        stored = {n: (g, workers_parts.STATE, b) for n, (g, b) in parts.items()}
        _files().write(me, header, state, stored)
        _last = (fingerprint, counters, state, gens)
        return True


def _final() -> None:
    """At exit: the last copy (what this process recorded in its last second)."""
    if _thread is None:
        return
    try:
        with suppressed():
            publish(force=True)
    except Exception as exc:
        _diag.internal_error("workers.publish_at_exit", exc)


def _run(stop: threading.Event) -> None:
    with suppressed():
        while True:
            try:
                publish()
            except Exception as exc:
                _diag.internal_error("workers.publish", exc)
            try:
                _stand()
            except Exception as exc:
                _diag.internal_error("workers.election", exc)
            if stop.wait(PUBLISH_INTERVAL_S):
                return


def _start_thread() -> None:
    global _thread, _stop
    t = _thread
    if t is not None and t.is_alive():
        return
    _stop = threading.Event()
    _thread = threading.Thread(target=_run, args=(_stop,), name="pulsetrace-workers", daemon=True)
    _thread.start()


# --- the election -------------------------------------------------------------


def _elected() -> bool:
    global _election
    if _election is None:
        from pulsetrace.monitoring.alerts.engine import Election

        _election = Election(os.path.join(directory(), "server.lock"))
    return bool(_election.leader())


def claim(addr: str, monitoring: Optional[bool]) -> bool:
    """This process wants to serve the application's endpoints on
    ``addr``: start publishing, and return whether it is the one to serve
    (elected); if not, it takes over when the serving process exits."""
    global _wish
    with _lock:
        _wish = (addr, monitoring)
        directory()
        _identity()
        _start_thread()
        return _elected()


def release() -> None:
    """This process no longer wants to serve (``stop_server``)."""
    global _wish
    _wish = None


#: Seconds before an elected process that could not bind tries again.
RETRY_S = 30.0
_retry_at = 0.0


def _stand() -> None:
    """Once a second: if this process wants to serve and is now elected
    (the previous server exited), start serving."""
    global _retry_at
    wish = _wish
    if wish is None or time.monotonic() < _retry_at or not _elected():
        return
    from pulsetrace import prometheus

    if prometheus.serving() is None and prometheus.start_server(*wish) is None:
        _retry_at = time.monotonic() + RETRY_S  # cannot bind (warned): not every second


# --- reading ------------------------------------------------------------------


_view_lock = threading.Lock()
_view: Optional[tuple[float, Optional[View]]] = None


def _merge() -> Optional[View]:
    """The application's view, or None when no other process published."""
    if _me is None or _dir is None:
        return None
    return _dir.merge(_me, _own_counters(), _runtime.tracer(), _leading, workers_parts.folds())


def _leading() -> bool:
    return _election is not None and bool(_election.leader())


def view() -> Optional[View]:
    """The merged view, at most ``VIEW_TTL_S`` old; None when this process
    is alone (or publishes nothing)."""
    global _view
    with _view_lock:
        now = time.monotonic()
        if _view is not None and now - _view[0] < VIEW_TTL_S:
            return _view[1]
        try:
            v = _merge()
        except Exception as exc:  # the endpoints fall back to this process
            _diag.internal_error("workers.merge", exc)
            v = None
        _view = (now, v)
        return v


def merged_part(name: str) -> Optional[Any]:
    """The part ``name`` (:func:`register_part`) merged over the whole
    application: this process's live state, every other live process's
    last copy and the dead ones' folded into one (by the part's ``fold``:
    so a part can leave a dead process's levels out), from the view (at
    most ``VIEW_TTL_S`` old);
    None when this process is alone, or when merging failed (counted):
    callers fall back to their own data. ValueError for an unregistered
    name."""
    part = workers_parts.get(name)
    v = view()
    if v is None or _dir is None:
        return None
    with _view_lock:
        if name in v.parts:
            return v.parts[name]
        try:
            gen, own = part.current()
            own = workers_parts.published(own, ("self", os.getpid(), part.serial, gen))
            live, dead, folded = _dir.part_states(v, name)
            if not folded:  # dead processes' states reach merge only folded
                dead = [part.fold(dead)]
            value = part.merge(([own] if gen else []) + live + dead)
        except Exception as exc:
            _diag.internal_error(f"workers.merge.{name}", exc)
            value = None
        v.parts[name] = value
        return value


def snapshots() -> list[Any]:
    """Rows of ``histogram_snapshots``, over the whole application."""
    v = view()
    if v is None:
        return list(_native.histogram_snapshots(_runtime.tracer()))
    return list(v.merged.snapshots())


def latency() -> list[dict[str, Any]]:
    """``pulsetrace.latency()``, over the whole application."""
    import pulsetrace

    v = view()
    return pulsetrace.latency() if v is None else list(v.merged.latency())


def counters() -> dict[str, int]:
    """``pulsetrace.counters()``, over the whole application."""
    import pulsetrace

    v = view()
    return pulsetrace.counters() if v is None else dict(v.counters)


def render_metrics(accept: str, extra: list[Any], labels: dict[str, str]) -> tuple[bytes, str]:
    """The tracer's ``render_metrics``, over the whole application."""
    tracer = _runtime.tracer()
    v = view()
    if v is None:
        body, content_type = tracer.render_metrics(accept, extra, labels)
    else:
        body, content_type = v.merged.render_metrics(tracer, accept, extra, labels, v.counters)
    return bytes(body), str(content_type)


def processes() -> list[dict[str, Any]]:
    """The processes seen: pid, alive, age of its last copy, serving, and
    ``cpu_seconds`` and ``rss_bytes`` (as of its last copy; the serving
    process's now; none for a dead process)."""
    v = view()
    if v is None:
        rows = [{"pid": os.getpid(), "alive": True, "snapshot_age_s": 0.0, "serving": True}]
    else:
        rows = [dict(p) for p in v.processes]
    for row in rows:
        if row["serving"]:
            row.update(process_figures())  # now; the others' as of their last copy
    return rows


def reset() -> None:
    """Forget this process's application directory, name and reads, and
    stop publishing (tests; the next ``claim`` starts afresh)."""
    global _app_id, _dir, _me, _lock_fd, _thread, _view, _wish, _election, _last
    with _lock:
        _stop.set()
        t = _thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        if _lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(_lock_fd)
        _app_id, _dir, _me, _lock_fd, _thread, _view = None, None, None, None, None, None
        _wish, _election, _last = None, None, None


# --- fork and exit ------------------------------------------------------------


def _after_fork_in_child() -> None:
    """A forked worker: its own name, lock and thread (standing for the
    election too, if its parent did); none of its parent's reads."""
    global _lock, _view_lock, _encoder, _me, _lock_fd, _thread, _view, _last
    _lock = threading.RLock()
    _view_lock = threading.Lock()
    _encoder = _native.StateEncoder()  # the parent's may be locked by its thread
    if _lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_lock_fd)  # the parent's descriptor keeps the parent's lock
    _me, _lock_fd, _thread, _view, _last = None, None, None, None, None
    workers_parts.after_fork()  # before this child's first copy
    if _dir is not None:
        _dir.forget()
    if _wish is None:
        return
    try:
        import pulsetrace

        # Counted by the parent, which publishes them itself.
        _inherited.clear()
        _inherited.update(pulsetrace.counters())
        _identity()
        _start_thread()
    except Exception as exc:
        _diag.internal_error("workers.fork", exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
_runtime.on_shutdown(_final)
