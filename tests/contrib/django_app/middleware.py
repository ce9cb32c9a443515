"""A middleware inside the chain: answers some paths itself, fails on one."""

from __future__ import annotations

from django.http import HttpResponseForbidden
from django.utils.deprecation import MiddlewareMixin


class MiddlewareError(RuntimeError):
    pass


class ShortCircuitMiddleware(MiddlewareMixin):
    def process_request(self, request):
        if request.path == "/blocked/":
            return HttpResponseForbidden("blocked")
        if request.path == "/mw-boom/":
            raise MiddlewareError("middleware failed")
        return None
