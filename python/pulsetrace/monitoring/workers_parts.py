"""Parts: what a process publishes for the other processes of its
application beside its histograms and counters
(:mod:`pulsetrace.monitoring.workers` describes the design; the kept
traces and error groups are one part, :mod:`pulsetrace.monitoring.traces_merge`).

A part is registered in every process under one name with three functions:

- ``state()``: this process's state, a JSON-able value (or
  :class:`Encoded`: its JSON, for a state built of pieces encoded once); or
  :data:`UNCHANGED` when it has not changed since ``state()`` last returned
  a value (nothing is encoded or written again then; a new value equal to
  the last is taken as unchanged too, but a large state should not pay for
  that comparison);
- ``merge(states)``: one value from several processes' states (the serving
  process's live state first, then every other process's last published
  one, the dead processes' folded state among them);
- ``fold(states)`` (default: ``merge``): one state from dead processes'
  states, written into ``dead.snap`` (it is merged again later, so it must
  be of the same form as a state). Dead processes' states reach ``merge``
  only through ``fold`` (also in the moment before the serving process
  writes them into ``dead.snap``), so a fold that leaves out what only a
  live process has (a level, such as a gauge) is exact.

A process's parts travel in its ``.snap`` file, between the header line and
the histograms: one atomic rename carries the whole of a process's state,
so the rules the histograms rely on hold for every part with no more
machinery: a reader never pairs one part with another moment's histograms,
a dead worker is folded into ``dead.snap`` (its histograms and every part)
in one write, and so counted exactly once. The cost of sharing a file is
kept small: a part unchanged since the last copy is neither encoded again
by its publisher (its bytes are kept) nor decoded again by a reader (each
part carries a generation number, and readers keep what they decoded).
A state read from a copy is :class:`Published`: its ``version`` names that
copy (file, part, generation), so a part's ``merge`` can keep what it
builds from a state (its metrics rebuilt, say) for as long as the copy is
unchanged, and build it again when the version changes.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from typing import Any, Callable, Optional

from pulsetrace import _diag

__all__ = [
    "UNCHANGED",
    "Encoded",
    "Part",
    "Published",
    "get",
    "publishable",
    "register_part",
]

#: ``state()``'s answer when nothing changed since its last value.
UNCHANGED: Any = type("Unchanged", (), {"__repr__": lambda self: "UNCHANGED"})()
#: A stored part's kinds: one state, or a list of states (the dead
#: processes' states of a part the folding process had not registered,
#: kept for a process that has).
STATE, STATES = "state", "states"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_serials = itertools.count(1)


class Encoded:
    """A state ``state()`` returns already encoded (JSON bytes): written as
    it is; decoded only when this process merges its own state. For a large
    state built from pieces encoded once each."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Encoded) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


class Published(dict):  # type: ignore[type-arg]
    """A state (a JSON object) as read from one process's copy, never
    changed after: ``version`` names the copy (the process's file, the
    part, its generation, the state's place in it), so equal versions mean
    the same state. A new copy is a new object with a new version."""

    __slots__ = ("version",)

    def __init__(self, state: dict[str, Any], version: tuple[Any, ...]) -> None:
        super().__init__(state)
        self.version = version


def published(state: Any, version: tuple[Any, ...]) -> Any:
    """``state`` as :class:`Published` with ``version`` (a state that is not
    a JSON object is returned as it is: it has no version)."""
    return Published(state, version) if isinstance(state, dict) else state


class Part:
    """One registered part, with this process's last state and its bytes."""

    def __init__(
        self,
        name: str,
        state: Callable[[], Any],
        merge: Callable[[list[Any]], Any],
        fold: Callable[[list[Any]], Any],
        forked: Optional[Callable[[], None]] = None,
    ) -> None:
        self.name, self.state, self.merge, self.fold = name, state, merge, fold
        self.forked = forked
        #: Unique to this registration (its states' versions name it).
        self.serial = next(_serials)
        self._lock = threading.Lock()
        self._has = False
        self._value: Any = None
        self._gen = 0
        self._bytes: Optional[bytes] = None
        #: The generation whose :class:`Encoded` state was decoded, and it.
        self._decoded: tuple[int, Any] = (0, None)

    def current(self) -> tuple[int, Any]:
        """(generation, this process's state); generation 0: no state yet."""
        with self._lock:
            self._refresh()
            if not isinstance(self._value, Encoded):
                return self._gen, self._value
            if self._decoded[0] != self._gen:
                self._decoded = (self._gen, json.loads(self._value.data))
            return self._decoded

    def encoded(self) -> Optional[tuple[int, bytes]]:
        """(generation, the state's JSON), None when there is no state."""
        with self._lock:
            self._refresh()
            if not self._has:
                return None
            if self._bytes is None:
                v = self._value
                self._bytes = v.data if isinstance(v, Encoded) else encode(v)
            return self._gen, self._bytes

    def _refresh(self) -> None:
        value = self.state()
        if value is UNCHANGED or (self._has and value is not self._value and value == self._value):
            return  # an equal value (a new object: one returned again may have been changed)
        self._has, self._value, self._bytes = True, value, None
        self._gen += 1

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._has, self._value, self._bytes, self._decoded = False, None, None, (0, None)
        if self.forked is not None:
            try:
                self.forked()
            except Exception as exc:
                _diag.internal_error(f"workers.part.{self.name}.fork", exc)


_lock = threading.Lock()
_parts: dict[str, Part] = {}


def register_part(
    name: str,
    state: Callable[[], Any],
    merge: Callable[[list[Any]], Any],
    fold: Optional[Callable[[list[Any]], Any]] = None,
    *,
    after_fork: Optional[Callable[[], None]] = None,
) -> None:
    """Publish ``state()`` beside this process's histograms under ``name``
    (a lowercase identifier, at most 40 characters); registering a name
    again replaces it. See the module doc for the three functions;
    ``after_fork`` is called in a forked child before it publishes (to
    forget what the state holds of the parent's)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"a part's name is a lowercase identifier of at most 40 characters, not {name!r}"
        )
    for what, fn in (
        ("state", state),
        ("merge", merge),
        ("fold", fold),
        ("after_fork", after_fork),
    ):
        if not callable(fn) and not (what in ("fold", "after_fork") and fn is None):
            raise ValueError(f"the part {name!r}: {what} must be callable, not {fn!r}")
    with _lock:
        _parts[name] = Part(name, state, merge, merge if fold is None else fold, after_fork)


def get(name: str) -> Part:
    """The registered part ``name``; ValueError if there is none."""
    part = _parts.get(name)
    if part is None:
        raise ValueError(f"no part named {name!r} is registered (register_part)")
    return part


def folds() -> dict[str, Callable[[list[Any]], Any]]:
    """Each registered part's fold."""
    with _lock:
        return {n: p.fold for n, p in _parts.items()}


def publishable() -> dict[str, tuple[int, bytes]]:
    """Each part's (generation, JSON) now; a part whose ``state()`` raises
    keeps its last copy (the error is counted)."""
    with _lock:
        parts = list(_parts.values())
    out = {}
    for p in parts:
        try:
            got = p.encoded()
        except Exception as exc:
            _diag.internal_error(f"workers.part.{p.name}", exc)
            with p._lock:
                got = None if p._bytes is None else (p._gen, p._bytes)
        if got is not None:
            out[p.name] = got
    return out


def encode(value: Any) -> bytes:
    """A state's bytes in a file (JSON; ValueError if it is not JSON-able)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a part's state is not JSON: {exc}") from None


def decode(kind: str, raw: bytes, version: tuple[Any, ...] = ()) -> list[Any]:
    """The states stored as ``raw`` (one, or a list when ``kind`` is
    :data:`STATES`); with ``version`` (the copy's), each :class:`Published`
    with it and its place in the list."""
    value = json.loads(raw)
    if kind == STATES:
        if not isinstance(value, list):
            raise ValueError("a list of states expected")
    else:
        value = [value]
    if version:
        value = [published(v, (*version, i)) for i, v in enumerate(value)]
    return value


def after_fork() -> None:
    """In a forked child: no state yet (the parent's is the parent's)."""
    global _lock
    _lock = threading.Lock()
    for p in _parts.values():
        p.after_fork()
