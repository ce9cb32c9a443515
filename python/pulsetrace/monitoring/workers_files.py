"""The files of an application's workers directory
(:mod:`pulsetrace.monitoring.workers` describes the design):

- ``<pid>-<nonce>.snap``: one process's copy, a JSON header line (pid,
  time, counters, and each part's generation, kind and length), then its
  parts' JSON (:mod:`pulsetrace.monitoring.workers_parts`) one after the
  other, then its histograms (``_native.StateEncoder``), replaced
  atomically (written to ``.tmp``, renamed);
- ``<pid>-<nonce>.lock``: held (``flock``) by that process while it lives;
- ``dead.snap``: the dead processes' copies folded into one by the serving
  process; its header also names the files it holds (``absorbed``: readers
  skip them while they still exist, so a fold interrupted before they were
  removed counts nothing twice) and lists the dead processes; each part is
  the dead processes' states folded into one (or kept as a list for a part
  the folding process had not registered).

:meth:`Directory.merge` reads them into one view.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pulsetrace import _diag, _native
from pulsetrace.monitoring import workers_parts
from pulsetrace.monitoring.workers_parts import STATE, STATES

#: Counters that are levels of a process, not counts: only live processes add.
LEVELS = frozenset(
    {
        "metric_keys",
        "open_spans",
        "open_traces",
        "export_queue_spans",
        "export_queue_traces",
        "integrations_unsupported",
    }
)
SUFFIX = ".snap"
#: The dead workers' copies folded into one file by the serving process.
DEAD = "dead"
#: Dead processes listed by ``processes()`` at most (their counts all stay).
MAX_DEAD_LISTED = 100


def sweep(base: str, keep: str, older_than_s: float = 60.0) -> None:
    """Remove the directories of earlier runs under ``base`` (an ``auto-``
    id, no lock held by a living process, untouched for ``older_than_s``);
    ``keep`` is this run's."""
    import shutil

    now = time.time()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for e in entries:
        try:
            if (
                e.path != keep
                and "-auto-" in e.name
                and e.is_dir(follow_symlinks=False)
                and now - e.stat(follow_symlinks=False).st_mtime > older_than_s
                and not Directory(e.path).in_use()
            ):
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            continue


def clear_if_stale(path: str) -> None:
    """An application directory reused by a new run (an id set by hand)
    whose processes are all gone: its files are an earlier run's, removed."""
    d = Directory(path)
    if d.in_use():
        return
    for f in os.listdir(path):
        if f.endswith((SUFFIX, ".lock", ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, f))


@dataclass
class Seen:
    """One file as last read."""

    key: tuple[int, int]  # (mtime_ns, size) of the file read
    pid: int
    at: float
    counters: dict[str, int]
    state: Any  # _native.WorkerState
    #: dead.snap only: the files it holds, the dead processes ({"pid", "at"}).
    absorbed: frozenset[str] = frozenset()
    dead: tuple[dict[str, Any], ...] = ()
    parts: dict[str, Stored] = field(default_factory=dict)
    #: The process's CPU seconds and resident bytes at that copy.
    process: dict[str, float] = field(default_factory=dict)


#: A stored part: (generation, kind, JSON).
Stored = tuple[int, str, bytes]


@dataclass
class View:
    """The application's histograms, counters and processes."""

    merged: Any  # _native.MergedView
    counters: dict[str, int]
    processes: list[dict[str, Any]]
    #: The files merged (other processes', ``dead.snap``), for their parts:
    #: (name, as read, whether its process is alive).
    sources: list[tuple[str, Seen, bool]] = field(default_factory=list)
    #: Parts merged from this view (``workers.merged_part``).
    parts: dict[str, Any] = field(default_factory=dict)


def add(into: dict[str, int], counters: dict[str, int], alive: bool) -> None:
    """``counters`` added into ``into`` (levels only from a live process)."""
    for k, v in counters.items():
        if k not in LEVELS or alive:
            into[k] = into.get(k, 0) + v


class Directory:
    """An application's workers directory, with what was read from it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: dict[str, Seen] = {}
        #: (file, part) -> (generation, its states), decoded.
        self._decoded: dict[tuple[str, str], tuple[int, list[Any]]] = {}

    def forget(self) -> None:
        self._seen.clear()
        self._decoded.clear()

    def of(self, name: str, suffix: str = SUFFIX) -> str:
        return os.path.join(self.path, name + suffix)

    def alive(self, name: str) -> bool:
        """Whether the process ``name`` still holds its liveness lock."""
        try:
            fd = os.open(self.of(name, ".lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def in_use(self) -> bool:
        """Whether a living process holds a lock in it (a process's own, or
        the server's election lock)."""
        try:
            locks = [f for f in os.listdir(self.path) if f.endswith(".lock")]
        except FileNotFoundError:
            return False
        return any(self.alive(f[: -len(".lock")]) for f in locks)

    def read(self, name: str) -> Optional[Seen]:
        """The file ``name`` (decoded again only when it changed); None if
        it is gone or unreadable (counted as an internal error)."""
        try:
            st = os.stat(self.of(name))
            key = (st.st_mtime_ns, st.st_size)
            seen = self._seen.get(name)
            if seen is not None and seen.key == key:
                return seen
            with open(self.of(name), "rb") as f:
                head, _, blob = f.read().partition(b"\n")
            header = json.loads(head)
            parts, blob = _parts_of(header.get("parts", {}), blob)
            seen = Seen(
                key,
                int(header["pid"]),
                float(header["at"]),
                {str(k): int(v) for k, v in header["counters"].items()},
                _native.WorkerState(blob),
                frozenset(str(n) for n in header.get("absorbed", ())),
                tuple({"pid": int(d["pid"]), "at": float(d["at"])} for d in header.get("dead", ())),
                parts,
                {
                    str(k): float(v)
                    for k, v in header.get("process", {}).items()
                    if k in ("cpu_seconds", "rss_bytes")
                },
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _diag.internal_error("workers.read", exc)
            return None
        self._seen[name] = seen
        return seen

    def write(
        self, name: str, header: dict[str, Any], state: bytes, parts: dict[str, Stored]
    ) -> None:
        """``<name>.snap``, replaced atomically (a temporary file renamed)."""
        path = self.of(name)
        tmp = path + ".tmp"
        header = dict(header, parts={n: [g, k, len(b)] for n, (g, k, b) in parts.items()})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
            for _, _, b in parts.values():
                f.write(b)
            f.write(state)
        os.replace(tmp, path)

    def states(self, name: str, seen: Seen, part: str) -> list[Any]:
        """The states of ``part`` in the file ``name`` as ``seen`` (decoded
        again only when its generation changed); [] when it has none."""
        stored = seen.parts.get(part)
        if stored is None:
            return []
        gen, kind, raw = stored
        key = (name, part)
        have = self._decoded.get(key)
        if have is not None and have[0] == gen:
            return have[1]
        states = workers_parts.decode(kind, raw, (self.path, name, part, gen))
        self._decoded[key] = (gen, states)
        return states

    def part_states(self, v: View, part: str) -> tuple[list[Any], list[Any], bool]:
        """The states of ``part`` in ``v``'s files: the live processes', the
        dead ones', and whether the dead ones' are ``dead.snap``'s single
        folded state (else a dead process was not folded yet, or the part
        was not registered when they were)."""
        live: list[Any] = []
        dead: list[Any] = []
        folded = True
        for name, seen, alive in v.sources:
            got = self.states(name, seen, part)
            if alive:
                live += got
            elif got:
                dead += got
                folded = folded and name == DEAD and seen.parts[part][1] == STATE
        return live, dead, folded and len(dead) <= 1

    def fold(
        self,
        tracer: Any,
        old: Optional[Seen],
        dead: list[tuple[str, Seen]],
        folds: dict[str, Callable[[list[Any]], Any]],
    ) -> None:
        """Fold the dead workers' copies into ``dead.snap`` (each part with
        its ``folds`` entry), then remove their files (and those an
        interrupted fold left)."""
        parts = self._fold_parts(old, dead, folds)
        acc = _native.MergedView(tracer)
        counters: dict[str, int] = {}
        absorbed: list[str] = []
        listed: list[dict[str, Any]] = []
        if old is not None:
            acc.absorb(old.state)
            add(counters, old.counters, False)
            absorbed = [n for n in old.absorbed if os.path.exists(self.of(n))]
            listed = list(old.dead)
        for name, seen in dead:
            acc.absorb(seen.state)
            add(counters, seen.counters, False)
            absorbed.append(name)
            listed.append({"pid": seen.pid, "at": seen.at})
        header = {
            "pid": 0,
            "at": time.time(),
            "counters": counters,
            "absorbed": absorbed,
            "dead": listed[-MAX_DEAD_LISTED:],
        }
        self.write(DEAD, header, acc.encode(), parts)
        for name in absorbed:
            for suffix in (SUFFIX, ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.of(name, suffix))

    def _fold_parts(
        self,
        old: Optional[Seen],
        dead: list[tuple[str, Seen]],
        folds: dict[str, Callable[[list[Any]], Any]],
    ) -> dict[str, Stored]:
        """Each part of ``old`` (``dead.snap``) and the ``dead`` files, folded;
        ValueError when a fold fails (nothing is folded then)."""
        sources = ([(DEAD, old)] if old is not None else []) + dead
        names = sorted({p for _, seen in sources for p in seen.parts})
        gen = time.time_ns()
        out: dict[str, Stored] = {}
        for part in names:
            states = [st for name, seen in sources for st in self.states(name, seen, part)]
            fold = folds.get(part)
            if fold is None:
                out[part] = (gen, STATES, workers_parts.encode(states))
                continue
            try:
                value = fold(states)
            except Exception as exc:
                raise ValueError(f"the part {part!r} could not be folded: {exc!r}") from exc
            out[part] = (gen, STATE, workers_parts.encode(value))
        return out

    def merge(
        self,
        me: str,
        own: dict[str, int],
        tracer: Any,
        leading: Callable[[], bool],
        folds: Optional[dict[str, Callable[[list[Any]], Any]]] = None,
    ) -> Optional[View]:
        """This process's live histograms and counters (``own``) with every
        other process's copy; None when no other process published. With
        ``leading()`` (the elected process: one writer), dead workers'
        copies are folded into ``dead.snap``."""
        names = sorted(
            f[: -len(SUFFIX)]
            for f in os.listdir(self.path)
            if f.endswith(SUFFIX) and f[0].isdigit()
        )
        has_dead = os.path.exists(self.of(DEAD))
        folded = self.read(DEAD) if has_dead else None
        skip = folded.absorbed if folded is not None else frozenset()
        others = [n for n in names if n != me and n not in skip]
        if not others and folded is None:
            return None
        merged = _native.MergedView(tracer)
        merged.absorb_tracer(tracer)
        counters = dict(own)
        now = time.time()
        processes = [{"pid": os.getpid(), "alive": True, "snapshot_age_s": 0.0, "serving": True}]
        sources: list[tuple[str, Seen, bool]] = []

        def listed(
            pid: int, alive: bool, at: float, process: Optional[dict[str, float]] = None
        ) -> dict[str, Any]:
            age = round(max(0.0, now - at), 3)
            row = {"pid": pid, "alive": alive, "snapshot_age_s": age, "serving": False}
            return dict(row, **(process or {}))

        if folded is not None:
            try:
                merged.absorb(folded.state)
                add(counters, folded.counters, False)
                processes += [listed(d["pid"], False, d["at"]) for d in folded.dead]
                sources.append((DEAD, folded, False))
            except ValueError as exc:  # recorded with another histogram config
                _diag.internal_error("workers.absorb", exc)
                folded = None
        dead: list[tuple[str, Seen]] = []
        for name in others:
            seen = self.read(name)
            if seen is None:
                continue
            alive = self.alive(name)
            try:
                merged.absorb(seen.state)
            except ValueError as exc:  # recorded with another histogram config
                _diag.internal_error("workers.absorb", exc)
                continue
            add(counters, seen.counters, alive)
            processes.append(listed(seen.pid, alive, seen.at, seen.process))
            sources.append((name, seen, alive))
            if not alive:
                dead.append((name, seen))
        for gone in set(self._seen) - set(others) - {DEAD}:
            del self._seen[gone]
        for key in [k for k in self._decoded if k[0] not in self._seen]:
            del self._decoded[key]
        # A dead.snap that cannot be read is never overwritten (its counts
        # would be lost).
        if dead and (folded is not None or not has_dead) and leading():
            try:
                self.fold(tracer, folded, dead, folds or {})
            except (OSError, ValueError) as exc:
                _diag.internal_error("workers.fold", exc)
        return View(merged, counters, processes, sources)


def _parts_of(meta: Any, blob: bytes) -> tuple[dict[str, Stored], bytes]:
    """The parts at the start of ``blob`` as the header's ``parts`` lists
    them ({name: [generation, kind, length]}), and the rest (histograms)."""
    if not isinstance(meta, dict):
        raise ValueError("the header's parts are not an object")
    parts: dict[str, Stored] = {}
    at = 0
    for name, (gen, kind, length) in meta.items():
        if kind not in (STATE, STATES) or not 0 <= int(length) <= len(blob) - at:
            raise ValueError(f"the part {name!r} is not of the form the header gives")
        parts[str(name)] = (int(gen), str(kind), blob[at : at + int(length)])
        at += int(length)
    return parts, blob[at:]
