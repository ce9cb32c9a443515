"""The alerting endpoints (``/monitoring/*``), rows of the monitoring
endpoint table (:mod:`pulsetrace.monitoring.endpoints`): same token rules,
same JSON errors, same OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any

from pulsetrace._router import HttpError, Request, Response, json_response
from pulsetrace.monitoring.alerts import rules as _rules
from pulsetrace.monitoring.alerts.store import TEST_STEP

STATES = ("firing", "acknowledged", "resolved")


def _manager() -> Any:
    from pulsetrace.monitoring import alerts

    return alerts.manager()


def _alert_json(m: Any, row: dict[str, Any], full: bool = False) -> dict[str, Any]:
    out = dict(row)
    out["deliveries"] = [
        {k: d[k] for k in ("step", "channel", "status", "attempts", "error", "at")}
        for d in m.store.deliveries(row["id"])
    ]
    if full:
        out["history"] = m.store.history(row["id"])
    return out


def status(request: Request) -> Response:
    m = _manager()
    failed = [d for d in m.store.deliveries() if d["status"] == "failed"][-50:]
    return json_response(
        200,
        {
            "service": m.service,
            "counts": m.store.counts(),
            "rules": len(m.rules),
            "broken_rules": [{"id": r.id, "error": r.broken} for r in m.rules.values() if r.broken],
            "channels": sorted(m.channels),
            "evaluator": {
                "cycles": m.cycles,
                "last_cycle_at": m.last_cycle_at,
                "last_cycle_cpu_ms": round(m.last_cycle_cpu_s * 1000, 3),
            },
            "failed_deliveries": failed,
            # The delivery queue: held, retrying, its bound, deliveries
            # refused because it was full, channels failing now.
            "delivery": m.deliverer.stats(),
        },
    )


def list_alerts(request: Request) -> Response:
    q = request.query_params()
    state, severity = q.get("state"), q.get("severity")
    if state is not None and state not in STATES:
        raise HttpError(400, f"state {state[:50]!r} is not one of {', '.join(STATES)}")
    if severity is not None and severity not in _rules.SEVERITIES:
        sev = ", ".join(_rules.SEVERITIES)
        raise HttpError(400, f"severity {severity[:50]!r} is not one of {sev}")
    m = _manager()
    rows = m.store.alerts(state=state, severity=severity)
    return json_response(200, {"alerts": [_alert_json(m, r) for r in rows]})


def acknowledge(request: Request) -> Response:
    body = request.json() if request.body else {}
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    unknown = set(body) - {"by"}
    if unknown:
        raise HttpError(400, f"unknown field in the body: {sorted(unknown)[0][:50]!r}")
    by = body.get("by", "token holder")
    if not isinstance(by, str) or not 0 < len(by) <= 200:
        raise HttpError(400, "the field 'by' must be a string of 1 to 200 characters")
    m = _manager()
    alert = m.acknowledge(request.params["id"], by)
    if alert is None:
        raise HttpError(404, f"no alert with id {request.params['id'][:100]!r}")
    if alert["state"] == "resolved":
        raise HttpError(409, "the alert is resolved")
    return json_response(200, _alert_json(m, alert, full=True))


def list_rules(request: Request) -> Response:
    m = _manager()
    return json_response(200, {"rules": [r.to_json() for r in m.rules.values()]})


def test_rule(request: Request) -> Response:
    """Evaluate a rule now: what it sees and what would be sent; with
    ``?deliver=true`` a test notice goes to its first step's channels."""
    q = request.query_params()
    # Exactly as the OpenAPI document's enum writes it.
    deliver = q.get("deliver", "false")
    if deliver not in ("true", "false"):
        raise HttpError(400, "deliver must be true or false (lower case)")
    m = _manager()
    rule = m.rules.get(request.params["ruleId"])
    if rule is None:
        raise HttpError(404, f"no rule with id {request.params['ruleId'][:100]!r}")
    now = m.clock()
    try:
        verdict = rule.evaluate(m.snapshot(now))
        error = None
    except Exception as exc:
        verdict, error = _rules.Verdict(False), f"{type(exc).__name__}: {exc}"[:300]
    from pulsetrace.monitoring.alerts.engine import message

    alert = {
        "id": f"test-{rule.id}-{uuid.uuid4().hex[:8]}",
        "rule_id": rule.id,
        "name": rule.name,
        "severity": rule.severity,
        "message": message(rule, verdict),
        "operation": verdict.operation,
        "value": verdict.value,
        "threshold": verdict.threshold,
        "trace_id": verdict.trace_id,
        "fired_at": now,
    }
    chans = m._step_channels(rule, 0)
    notice = m.notice(alert, TEST_STEP, "test")
    out: dict[str, Any] = {
        "rule": rule.id,
        "active": verdict.active,
        "value": verdict.value,
        "threshold": verdict.threshold,
        "error": error,
        "would_send": {"channels": chans, "subject": notice["subject"], "text": notice["text"]},
        "delivered": False,
    }
    if deliver == "true":
        m.store.record_test(alert["id"], chans, now)
        for ch in chans:
            m.deliverer.submit(
                {
                    "alert_id": alert["id"],
                    "step": TEST_STEP,
                    "channel": ch,
                    "notice": m.notice(alert, TEST_STEP, ch),
                }
            )
        out["delivered"], out["test_id"] = True, alert["id"]
    return json_response(200, out)


# --- the rows of the endpoint table -----------------------------------------------

_ID = {"type": "string", "minLength": 1, "maxLength": 200}


def _obj(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _OBJECT}}}


def _err(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OBJECT: dict[str, Any] = {"type": "object"}


def endpoints(endpoint: Any) -> list[Any]:
    """The alerting rows, made with the table's ``Endpoint`` class."""

    def query(name: str, values: tuple[str, ...]) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": {"type": "string", "enum": list(values)}}

    return [
        endpoint(
            "GET",
            "/monitoring/status",
            status,
            "Alerting status: alert counts, broken rules, channels, failed deliveries,"
            " the delivery queue",
            {200: _obj("the status")},
        ),
        endpoint(
            "GET",
            "/monitoring/alerts",
            list_alerts,
            "Alerts (newest first), with their deliveries",
            {200: _obj("the alerts"), 400: _err("an unknown state or severity")},
            parameters=[query("state", STATES), query("severity", _rules.SEVERITIES)],
        ),
        endpoint(
            "POST",
            "/monitoring/alerts/{id}/acknowledge",
            acknowledge,
            "Acknowledge an alert: its escalation stops",
            {
                200: _obj("the alert, acknowledged (the first acknowledgement is kept)"),
                400: _err("the body is not of the documented shape"),
                404: _err("no alert with that id"),
                409: _err("the alert is resolved"),
                413: _err("the body is too large"),
                415: _err("the body is not JSON"),
            },
            parameters=[{"name": "id", "in": "path", "required": True, "schema": _ID}],
            body={
                "type": "object",
                "additionalProperties": False,
                "properties": {"by": {"type": "string", "minLength": 1, "maxLength": 200}},
            },
        ),
        endpoint(
            "GET",
            "/monitoring/rules",
            list_rules,
            "Alert rules (never a channel's URL, key or password)",
            {200: _obj("the rules")},
        ),
        endpoint(
            "POST",
            "/monitoring/test/{ruleId}",
            test_rule,
            "Evaluate a rule now (a dry run; ?deliver=true sends a test notice)",
            {
                200: _obj("the verdict and what would be sent"),
                400: _err("deliver is not true or false"),
                404: _err("no rule with that id"),
            },
            parameters=[
                {"name": "ruleId", "in": "path", "required": True, "schema": _ID},
                query("deliver", ("true", "false")),
            ],
        ),
    ]
