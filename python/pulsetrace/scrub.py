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

from typing import TYPE_CHECKING, Any

from pulsetrace import _diag
from pulsetrace._native import scrub_configure as _configure
from pulsetrace._native import scrub_text as _scrub_text
from pulsetrace._native import scrub_value as _scrub_value

if TYPE_CHECKING:
    from pulsetrace.config import Config

__all__ = ["REDACTED", "configure", "scrub_json", "scrub_text", "scrub_value"]

REDACTED = "REDACTED"


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


def scrub_json(v: Any) -> Any:
    """A JSON-shaped value (what an endpoint or an alert sends) with every
    string in it, keys included, scrubbed by :func:`scrub_text`; numbers,
    booleans and the shape stay as they are (no value is redacted for its
    key's name: the endpoints' own field names are not secrets)."""
    if isinstance(v, str):
        return scrub_text(v)
    if isinstance(v, dict):
        return {scrub_text(k) if isinstance(k, str) else k: scrub_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [scrub_json(x) for x in v]
    return v


def scrub_value(v: object) -> object:
    """``v`` scrubbed: a string by :func:`scrub_text`; a dict's values
    (all of a value ``REDACTED`` when its key names a secret), a list's or
    tuple's items, recursively (16 levels deep; deeper values and cycles
    are ``REDACTED``), into new containers; anything else as it is."""
    try:
        if not _configured:
            _from_environment()
        return _scrub_value(v)  # one native call for the whole value
    except Exception as exc:
        _diag.internal_error("scrub.scrub_value", exc)
        return REDACTED
