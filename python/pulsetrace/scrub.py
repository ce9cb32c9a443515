"""Personal data and secrets out of what pulsetrace writes: one scrubber,
native (``pulsetrace._native``, rules in ``rust/core/src/scrub``), shared by
span export, logs and endpoint output.

What it finds: e-mail addresses, phone numbers (E.164 and common national
formats), payment card numbers (Luhn checked), IBANs, US social security
numbers, JWTs and ``Bearer``/``Basic`` credentials, well-known API key
shapes, ``Authorization``/``Cookie``/``Set-Cookie`` values, and the values
of secret-named keys (``password``, ``token``, ``api_key``, ``pass``, ...,
plus ``PULSETRACE_SCRUB_FIELDS``) in ``key=value``, ``key: value`` and
JSON forms.

``PULSETRACE_SCRUB_MODE=mask`` (the default) keeps the shape of personal
data (``+55*********21``, ``j***@example.com``); ``redact`` replaces it with
``REDACTED``. Secret values are ``REDACTED`` in both modes. ``off`` turns
the scrubber off.

Neither function raises: if the native scrubber fails, the text is replaced
by ``REDACTED`` (nothing unscrubbed leaves) and the error is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pulsetrace import _diag
from pulsetrace._native import scrub_configure as _configure
from pulsetrace._native import scrub_is_secret_key as _is_secret_key
from pulsetrace._native import scrub_keyed as _scrub_keyed
from pulsetrace._native import scrub_text as _scrub_text

if TYPE_CHECKING:
    from pulsetrace.config import Config

__all__ = ["REDACTED", "configure", "scrub_text", "scrub_value"]

REDACTED = "REDACTED"

#: How deep ``scrub_value`` follows nested containers; deeper values (and
#: cycles) are replaced by ``REDACTED``.
MAX_DEPTH = 16


_configured = False


def configure(cfg: Config) -> None:
    """Apply ``cfg``'s scrubber settings (mode, fields, on/off) to the
    process's scrubber (``pulsetrace.configure`` calls this)."""
    global _configured
    on = cfg.scrub_mode != "off"
    _configure(on, cfg.scrub_mode if on else "mask", list(cfg.scrub_fields))
    _configured = True


def _from_environment() -> None:
    """Before the agent is configured (a log record written at import
    time), the environment's settings apply."""
    from pulsetrace.config import environment

    configure(environment())


def scrub_text(s: str) -> str:
    """``s`` with personal data and secrets replaced."""
    try:
        if not _configured:
            _from_environment()
        return _scrub_text(s)
    except Exception as exc:
        _diag.internal_error("scrub.scrub_text", exc)
        return REDACTED


def scrub_value(v: object) -> object:
    """``v`` scrubbed: a string by :func:`scrub_text`; a dict's values
    (all of a value ``REDACTED`` when its key names a secret), a list's or
    tuple's items, recursively, into new containers; anything else as it
    is."""
    try:
        if not _configured:
            _from_environment()
        return _value(v, 0)
    except Exception as exc:
        _diag.internal_error("scrub.scrub_value", exc)
        return REDACTED


def _value(v: object, depth: int) -> object:
    if isinstance(v, str):
        return _scrub_text(v)
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if depth >= MAX_DEPTH:
        return REDACTED
    if isinstance(v, Mapping):
        out: dict[object, object] = {}
        for k, item in v.items():
            if not isinstance(k, str):
                out[k] = _value(item, depth + 1)
            elif isinstance(item, str):
                out[k] = _scrub_keyed(k, item)  # one native call: key and content
            elif item is not None and _is_secret_key(k):
                out[k] = REDACTED
            else:
                out[k] = _value(item, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        items = [_value(item, depth + 1) for item in v]
        return items if isinstance(v, list) else tuple(items)
    return v
