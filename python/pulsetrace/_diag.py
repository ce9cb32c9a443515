"""pulsetrace's own diagnostics: internal errors are caught, counted and
logged once per place (then at most once a minute), never raised into the
host application."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger("pulsetrace")

_lock = threading.Lock()
_errors: Counter[str] = Counter()
_last_logged: dict[str, float] = {}
_INTERVAL_S = 60.0


def internal_error(where: str, exc: BaseException) -> None:
    """Count an exception pulsetrace caused at ``where``; log it rate-limited."""
    try:
        now = time.monotonic()
        with _lock:
            _errors[where] += 1
            last = _last_logged.get(where)
            due = last is None or now - last >= _INTERVAL_S
            if due:
                _last_logged[where] = now
            count = _errors[where]
        if due:
            log.warning(
                "pulsetrace internal error in %s (%d so far): %r", where, count, exc, exc_info=exc
            )
    except Exception:
        pass


def internal_errors() -> dict[str, int]:
    """Internal errors counted so far, by place."""
    with _lock:
        return dict(_errors)


def reset() -> None:
    with _lock:
        _errors.clear()
        _last_logged.clear()
