"""Integrations: one module per instrumented library, one registry.

Each module has the same shape (:mod:`pulsetrace.contrib._patcher`):
user-facing docs in its docstring, ``SUPPORTED`` (a PEP 440 range checked
against the installed version: outside it the library is left unpatched,
with one warning), the attributes it wraps and with what, and ``patch()`` /
``unpatch()`` made from them, idempotent. A hook only starts and
ends spans through the span API; it never calls an exporter and does not
know how it was switched on.

``instrument()`` registers every enabled integration lazily with
``wrapt.when_imported``: a library is touched only when the application
imports it, whatever the import order. Third-party packages add
integrations through the ``pulsetrace.integrations`` entry-point group (an
entry point names a module with ``patch()``/``unpatch()``; ``patch()``
returning False means "not patched").
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import wrapt

from pulsetrace import _diag
from pulsetrace.config import Config
from pulsetrace.contrib._patcher import patch_when_built, unsupported

__all__ = [
    "INTEGRATIONS",
    "Integration",
    "instrument",
    "instrumented",
    "uninstrument",
    "unsupported",
]


@dataclass(frozen=True)
class Integration:
    #: The toggle name: ``PULSETRACE_<NAME>_ENABLED``, ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``.
    name: str
    #: The module whose import triggers the patch.
    module: str
    #: The pulsetrace module with ``patch()`` / ``unpatch()``.
    hook: str
    #: Whether the hook wraps the library's calls (a ``_PATCHER`` of
    #: ``contrib._patcher``); the logging integration installs a handler.
    wraps: bool = True


#: Every built-in integration, in one place.
INTEGRATIONS: tuple[Integration, ...] = (
    Integration("flask", "flask", "pulsetrace.contrib.flask"),
    Integration("django", "django.core.handlers.base", "pulsetrace.contrib.django"),
    Integration("starlette", "starlette.applications", "pulsetrace.contrib.starlette"),
    Integration("redis", "redis", "pulsetrace.contrib.redis"),
    Integration("requests", "requests.sessions", "pulsetrace.contrib.requests"),
    Integration("urllib3", "urllib3.poolmanager", "pulsetrace.contrib.urllib3"),
    Integration("httpx", "httpx", "pulsetrace.contrib.httpx"),
    Integration("urllib", "urllib.request", "pulsetrace.contrib.urllib"),
    Integration("aiohttp", "aiohttp.client", "pulsetrace.contrib.aiohttp"),
    Integration("sqlite3", "sqlite3", "pulsetrace.contrib.sqlite3"),
    Integration("psycopg", "psycopg", "pulsetrace.contrib.psycopg"),
    Integration("psycopg2", "psycopg2", "pulsetrace.contrib.psycopg2"),
    Integration("pymysql", "pymysql", "pulsetrace.contrib.pymysql"),
    Integration("sqlalchemy", "sqlalchemy", "pulsetrace.contrib.sqlalchemy"),
    Integration("pika", "pika", "pulsetrace.contrib.pika"),
    Integration("aio_pika", "aio_pika", "pulsetrace.contrib.aio_pika"),
    Integration("celery", "celery", "pulsetrace.contrib.celery"),
    Integration("logging", "logging", "pulsetrace.logging", wraps=False),
)

_registered: set[str] = set()
_patched: dict[str, str] = {}


def _on_import(integration: Integration) -> Callable[[ModuleType], None]:
    """The hook that patches ``integration`` when its module is imported (if
    it is still registered then)."""

    def hook(_module: ModuleType) -> None:
        if integration.name in _registered:
            _patch(integration)

    return hook


def _third_party() -> list[Integration]:
    try:
        from importlib.metadata import entry_points

        if sys.version_info >= (3, 10):
            group = entry_points(group="pulsetrace.integrations")
        else:  # a dict of groups before 3.10
            group = entry_points().get("pulsetrace.integrations", [])
        return [Integration(ep.name, ep.name, ep.value) for ep in group]
    except Exception as exc:
        _diag.internal_error("contrib.entry_points", exc)
        return []


def _patch(integration: Integration) -> None:
    try:
        if integration in INTEGRATIONS and integration.wraps and _executing(integration.hook):
            # The hook module's own import imported the library (the
            # application imported pulsetrace's hook module first): it has
            # no patch() yet; its patcher (every built-in hook has one,
            # named as its integration) patches as soon as it is built.
            patch_when_built(integration.name, lambda p: _patch_with(integration, p.patch))
            return
        hook = importlib.import_module(integration.hook)
        _patch_with(integration, hook.patch)
    except Exception as exc:
        _diag.internal_error(f"contrib.{integration.name}.patch", exc)


def _executing(module_name: str) -> bool:
    """Whether ``module_name`` is being imported right now (its code is
    still running, further up this thread's stack)."""
    module = sys.modules.get(module_name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def _patch_with(integration: Integration, patch: Callable[[], object]) -> None:
    try:
        if patch() is not False:  # False: an unsupported version, left alone
            _patched[integration.name] = integration.hook
    except Exception as exc:
        _diag.internal_error(f"contrib.{integration.name}.patch", exc)


def instrument(config: Config, names: Optional[list[str]] = None) -> list[str]:
    """Register the enabled integrations (all, or ``names``); returns their names."""
    chosen = []
    for integration in (*INTEGRATIONS, *_third_party()):
        if names is not None and integration.name not in names:
            continue
        if not config.integration_enabled(integration.name):
            continue
        chosen.append(integration.name)
        if integration.name in _registered:
            continue
        _registered.add(integration.name)
        if integration.module in sys.modules:
            _patch(integration)
        else:
            wrapt.register_post_import_hook(_on_import(integration), integration.module)
    return chosen


def uninstrument(names: Optional[list[str]] = None) -> None:
    """Remove the patches (all, or ``names``); pending lazy hooks are disarmed."""
    for name in list(_registered):
        if names is not None and name not in names:
            continue
        _registered.discard(name)
        hook = _patched.pop(name, None)
        if hook is not None:
            try:
                importlib.import_module(hook).unpatch()
            except Exception as exc:
                _diag.internal_error(f"contrib.{name}.unpatch", exc)


def instrumented() -> list[str]:
    """Names of the integrations patched so far."""
    return sorted(_patched)
