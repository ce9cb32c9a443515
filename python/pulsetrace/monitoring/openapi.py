"""The OpenAPI 3 document of the monitoring endpoints, built from their
table (``pulsetrace.monitoring.endpoints.ENDPOINTS``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pulsetrace._server_framing import MAX_HEAD_BYTES

if TYPE_CHECKING:
    from pulsetrace.monitoring.endpoints import Endpoint

_NUMBER = {"type": "number"}
_STATUS = {"type": "string", "enum": ["pass", "fail", "timeout"]}

_CHECK_RESULT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "status", "critical", "latency_ms", "checked_at"],
    "properties": {
        "name": {"type": "string"},
        "status": _STATUS,
        "critical": {"type": "boolean"},
        "latency_ms": _NUMBER,
        "checked_at": _NUMBER,
        "error": {"type": "string"},
        "details": {"type": "object"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    },
    "CheckResult": _CHECK_RESULT,
    "Report": {
        "type": "object",
        "required": ["status", "checks", "service", "timestamp"],
        "properties": {
            "status": {"type": "string", "enum": ["pass", "degraded", "fail"]},
            "checks": {"type": "array", "items": {"$ref": "#/components/schemas/CheckResult"}},
            "service": {"type": "string"},
            "timestamp": _NUMBER,
        },
    },
    "Live": {
        "type": "object",
        "required": ["status", "pid", "uptime_s"],
        "properties": {
            "status": {"type": "string", "enum": ["pass"]},
            "pid": {"type": "integer"},
            "uptime_s": _NUMBER,
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "failing", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["pass", "fail"]},
            "failing": {"type": "array", "items": {"type": "string"}},
            "checks": {"type": "array", "items": {"$ref": "#/components/schemas/CheckResult"}},
        },
    },
    "Metrics": {
        "type": "object",
        "required": ["service", "timestamp", "operations", "counters", "process"],
        "properties": {
            "service": {"type": "string"},
            "timestamp": _NUMBER,
            "operations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "kind", "count", "errors"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "count": {"type": "integer"},
                        "errors": {"type": "integer"},
                        **{
                            k: {"type": "number", "nullable": True}
                            for k in ("min", "mean", "p50", "p90", "p99", "p999", "max")
                        },
                    },
                },
            },
            "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "process": {"type": "object", "additionalProperties": _NUMBER},
            "queues": {
                "type": "array",
                "description": "RabbitMQ queues: depth and consumers (pulsetrace.messaging)",
                "items": {
                    "type": "object",
                    "required": ["queue", "vhost", "messages", "messages_ready", "consumers"],
                    "properties": {
                        "queue": {"type": "string"},
                        "vhost": {"type": "string"},
                        "messages": {"type": "integer"},
                        "messages_ready": {"type": "integer"},
                        "consumers": {"type": "integer"},
                    },
                },
            },
        },
    },
}

_UNAUTHORIZED = {
    "description": "no token, a wrong one, or none configured (PULSETRACE_MONITORING_TOKEN)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


#: What the monitoring server answers, whatever the endpoint, to a request
#: whose line and headers pass its bound (``pulsetrace._server_framing``).
_HEAD_TOO_LARGE = {
    "description": f"request line and headers larger than {MAX_HEAD_BYTES} bytes",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``endpoints``."""
    from pulsetrace import __version__

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        plain = ep.path.replace("/", "_").replace("{", "").replace("}", "")
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}{plain}",
            "responses": {str(code): spec for code, spec in sorted(ep.responses.items())},
        }
        if ep.parameters:
            op["parameters"] = ep.parameters
        if ep.body is not None:
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": ep.body}},
            }
        if not ep.public:
            op["security"] = [{"bearer": []}] if ep.mutating else [{}, {"bearer": []}]
            op["responses"]["401"] = _UNAUTHORIZED
        op["responses"]["431"] = _HEAD_TOO_LARGE
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pulsetrace monitoring endpoints",
            "version": __version__,
            "description": (
                "Health, readiness and metrics of the application pulsetrace runs in. "
                "Endpoints other than /health/live and /health/ready need a bearer token "
                "(PULSETRACE_MONITORING_TOKEN) when the server is bound beyond loopback; "
                "mutating ones always do."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
