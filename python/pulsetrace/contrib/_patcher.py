"""The one shape of an integration: what to wrap, with which wrapper, for
which versions; patching, unpatching and idempotence live here, once.

A module declares its :class:`Target` list and its ``SUPPORTED`` range and
gets ``patch()``/``unpatch()`` from a :class:`Patcher`::

    SUPPORTED = ">=5.0"
    _PATCHER = Patcher("redis", SUPPORTED, (
        Target("redis.client", "Redis.execute_command", _sync_command),
        Target("redis.asyncio.client", "Redis.execute_command", _async_command, optional=True),
    ))
    patch, unpatch = _PATCHER.patch, _PATCHER.unpatch

``SUPPORTED`` is a PEP 440 specifier checked against the installed
distribution's version (``importlib.metadata``); a standard-library module
declares ``None``. An installed version outside the range is left unpatched,
with one warning naming the library, its version and the supported range
(the ``pulsetrace`` logger), and counted (:func:`unsupported`).

:func:`twins` builds the sync and the async wrapper of one hook from one
description (start, done, fail), so the two cannot drift apart.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import wrapt

from pulsetrace import _diag

__all__ = ["Patcher", "Target", "patch_when_built", "twins", "unsupported"]

#: The attribute set on the owner of an integration's first target while it is patched.
MARK = "__pulsetrace_patched__"

Wrapper = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class Target:
    """One attribute to wrap: ``module`` imported, ``path`` looked up from it
    (``"connect"``, ``"Redis.execute_command"``), replaced by a ``wrapt``
    function wrapper calling ``wrapper(wrapped, instance, args, kwargs)``."""

    module: str
    path: str
    wrapper: Wrapper
    #: The module may be missing (an optional part of the library): skipped then.
    optional: bool = False


_lock = threading.Lock()
_unsupported: dict[str, str] = {}
#: Every patcher built so far, by integration name.
_patchers: dict[str, Patcher] = {}
#: What to run with an integration's patcher once its module has built it.
_waiting: dict[str, Callable[[Patcher], None]] = {}


def patch_when_built(name: str, then: Callable[[Patcher], None]) -> None:
    """Run ``then(patcher)`` with the patcher of integration ``name``: now if
    it exists, else as soon as its module builds it. For a library imported
    by its own hook module's import (``import pulsetrace.contrib.sqlite3``
    before ``sqlite3``): the lazy hook fires while that module is half
    executed, before its ``patch()`` exists."""
    with _lock:
        patcher = _patchers.get(name)
        if patcher is None:
            _waiting[name] = then
            return
    then(patcher)


def unsupported() -> dict[str, str]:
    """Integrations left unpatched because the installed version is outside
    their ``SUPPORTED`` range: name -> installed version."""
    with _lock:
        return dict(_unsupported)


def installed_version(distributions: tuple[str, ...]) -> Optional[str]:
    """The version of the first of ``distributions`` that is installed, or None."""
    from importlib import metadata

    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_supported(name: str, supported: Optional[str], distributions: tuple[str, ...]) -> bool:
    """Whether the installed version of ``name`` is in ``supported`` (a PEP 440
    specifier; None: the standard library, no check). An unknown version (no
    distribution metadata: a vendored copy) is given the benefit of the doubt.
    Outside the range: one warning, counted."""
    if supported is None:
        return True
    version = installed_version(distributions)
    if version is None:
        return True
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        ok = SpecifierSet(supported).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True  # not PEP 440: nothing to compare
    if ok:
        return True
    with _lock:
        first = name not in _unsupported
        _unsupported[name] = version
    if first:
        _diag.log.warning(
            "pulsetrace: %s %s is not supported (supported: %s); it is left uninstrumented",
            name,
            version,
            supported,
        )
    return False


def _resolve(target: Target) -> Optional[tuple[Any, str]]:
    """(owner, attribute name) of ``target``; None when its optional module is missing."""
    try:
        owner: Any = importlib.import_module(target.module)
    except ImportError:
        if target.optional:
            return None
        raise
    *parents, attr = target.path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, attr


class Patcher:
    """``patch()``/``unpatch()`` of one integration, from its targets.

    ``patch()`` checks the version, wraps every target (skipping one already
    wrapped by this patcher), runs ``on_patch`` and sets :data:`MARK` on the
    first target's owner; a second ``patch()`` does nothing. ``unpatch()``
    runs ``on_unpatch`` and puts every original back where this patcher's
    wrapper is still outermost (an attribute that was inherited is deleted
    again, so the class looks as before); a wrapper buried under someone
    else's stays, and ``on_unpatch`` must make it pass calls through.
    """

    def __init__(
        self,
        name: str,
        supported: Optional[str],
        targets: tuple[Target, ...],
        *,
        distributions: Optional[tuple[str, ...]] = None,
        on_patch: Optional[Callable[[], None]] = None,
        on_unpatch: Optional[Callable[[], None]] = None,
        mark: Optional[tuple[str, str]] = None,
    ) -> None:
        self.name = name
        #: (module, path) of the object that carries :data:`MARK`: the first
        #: target's owner unless given (an integration with no targets).
        self.mark = mark or (targets[0].module, targets[0].path.rpartition(".")[0])
        self.supported = supported
        self.targets = targets
        self.distributions = distributions if distributions is not None else (name,)
        self.on_patch = on_patch
        self.on_unpatch = on_unpatch
        self._lock = threading.RLock()
        #: Whether this patcher's instrumentation is in place: a plain flag a
        #: hook can read per call (callbacks wrapped before an unpatch pass
        #: through once it is False).
        self.active = False
        with _lock:
            _patchers[name] = self
            then = _waiting.pop(name, None)
        if then is not None:
            then(self)

    def _marked(self) -> Any:
        module, path = self.mark
        owner: Any = importlib.import_module(module)
        for part in path.split(".") if path else ():
            owner = getattr(owner, part)
        return owner

    @property
    def patched(self) -> bool:
        return bool(getattr(self._marked(), MARK, False))

    def ours(self, owner: Any, attr: str, wrapper: Wrapper) -> Any:
        """``owner.attr`` if it is this patcher's wrapper, else None."""
        current = vars(owner).get(attr)
        if isinstance(current, wrapt.FunctionWrapper) and current._self_wrapper is wrapper:
            return current
        return None

    def patch(self) -> bool:
        """Instrument the library (idempotent); False when its version is unsupported."""
        with self._lock:
            marked = self._marked()
            if getattr(marked, MARK, False):
                return True
            if not version_supported(self.name, self.supported, self.distributions):
                return False
            try:
                for target in self.targets:
                    found = _resolve(target)
                    if found is None:
                        continue
                    owner, attr = found
                    if self.ours(owner, attr, target.wrapper) is None:
                        inherited = isinstance(owner, type) and attr not in vars(owner)
                        wrapt.wrap_function_wrapper(owner, attr, target.wrapper)
                        if inherited:
                            vars(owner)[attr]._self_pulsetrace_inherited = True
                if self.on_patch is not None:
                    self.on_patch()
            except BaseException:
                self._restore()  # all or nothing
                raise
            setattr(marked, MARK, True)
            self.active = True
            return True

    def unpatch(self) -> None:
        """Remove the instrumentation (idempotent)."""
        with self._lock:
            marked = self._marked()
            if not getattr(marked, MARK, False):
                return
            self.active = False
            if self.on_unpatch is not None:
                self.on_unpatch()
            self._restore()
            delattr(marked, MARK)

    def _restore(self) -> None:
        for target in self.targets:
            found = _resolve(target)
            if found is None:
                continue
            owner, attr = found
            current = self.ours(owner, attr, target.wrapper)
            if current is None:
                continue
            if getattr(current, "_self_pulsetrace_inherited", False):
                delattr(owner, attr)
            else:
                setattr(owner, attr, current.__wrapped__)


def twins(
    start: Callable[[Any, Any, Any], Any],
    done: Callable[[Any, Any], None],
    fail: Callable[[Any, BaseException], None],
) -> tuple[Wrapper, Wrapper]:
    """The sync and the async ``wrapt`` wrapper of one hook.

    ``start(instance, args, kwargs)`` returns the call's state (a span), or
    None to pass the call through untraced; then ``done(state, result)`` or
    ``fail(state, exc)`` (the exception is re-raised unchanged). Each of
    the three catches its own failures.
    """

    def sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = start(instance, args, kwargs)
        if state is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            fail(state, exc)
            raise
        done(state, result)
        return result

    async def asynchronous(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        state = start(instance, args, kwargs)
        if state is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            fail(state, exc)
            raise
        done(state, result)
        return result

    return sync, asynchronous
