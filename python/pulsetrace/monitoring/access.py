"""Who may call a monitoring endpoint (``PULSETRACE_MONITORING_TOKEN``):
the rules ``pulsetrace.monitoring.endpoints`` puts in front of each route.

- A mutating endpoint (``POST``) needs ``Authorization: Bearer <token>``
  and refuses every request while no token is configured.
- When the server is bound beyond loopback, every endpoint but the public
  ones (``/health/live``, ``/health/ready``) needs it too.
- The token is compared in constant time; a refusal is the 401
  ``HttpError`` (a JSON error and ``WWW-Authenticate: Bearer``).
- An admitted request's handler runs under pulsetrace's suppression
  context (nothing it calls is traced).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import TYPE_CHECKING, Callable, Optional

from pulsetrace._router import HttpError, Request, Response
from pulsetrace._suppress import suppressed

if TYPE_CHECKING:
    from pulsetrace.monitoring.endpoints import Endpoint


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token_of(request: Request) -> Optional[str]:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def guarded(
    endpoint: Endpoint, token: Optional[str], loopback: bool
) -> Callable[[Request], Response]:
    """The endpoint's handler behind its access rule, run under pulsetrace's
    suppression context."""
    admit = _access_rule(endpoint, token, loopback)

    def handle(request: Request) -> Response:
        if admit is not None:
            admit(request)
        with suppressed():
            return endpoint.handler(request)

    return handle


def guarded_quick(
    endpoint: Endpoint, token: Optional[str], loopback: bool
) -> Optional[Callable[[Request], Optional[Response]]]:
    """The endpoint's quick answer behind its access rule (None if it has none)."""
    quick = endpoint.quick
    if quick is None:
        return None
    admit = _access_rule(endpoint, token, loopback)
    if admit is None:
        return quick

    def answer(request: Request) -> Optional[Response]:
        admit(request)
        return quick(request)

    return answer


def _access_rule(
    endpoint: Endpoint, token: Optional[str], loopback: bool
) -> Optional[Callable[[Request], None]]:
    """Raises the 401 ``HttpError`` for a request the endpoint refuses;
    None when it needs no token."""
    if not (endpoint.mutating or not (loopback or endpoint.public)):
        return None
    expected = token.encode() if token else None
    challenge = ("WWW-Authenticate", "Bearer")

    def admit(request: Request) -> None:
        if expected is None:
            raise HttpError(
                401,
                "this endpoint needs a token and none is configured "
                "(set PULSETRACE_MONITORING_TOKEN)",
                challenge,
            )
        given = _token_of(request)
        if given is None:
            raise HttpError(401, "missing Authorization: Bearer <token>", challenge)
        # The header's bytes as sent (the server decodes heads as latin-1).
        if not hmac.compare_digest(given.encode("latin-1", "replace"), expected):
            raise HttpError(401, "wrong token", challenge)

    return admit
