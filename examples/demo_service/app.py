"""The demo service: the API of a small WhatsApp-style messaging SaaS.

Contacts, message templates, campaigns and messages, stored in SQLite;
sending a message calls the messaging provider over HTTP (``requests``).
The provider is a stub served by this same application under
``/provider``: it answers in a few milliseconds most of the time, slowly
now and then, rejects a few recipients and sometimes hangs past the
client's timeout, so the service answers 504 (an upstream timeout).

The module does not set up tracing: ``pulsetrace-run gunicorn ...``
instruments Flask, sqlite3 and requests. What it adds through pulsetrace's
API is in :mod:`observability` (checks, rules, metrics, logs) and in the
routes below (business metrics, the company of each request, log lines).

Run it with ``python examples/demo_service/run.py`` (``make demo``).
"""

from __future__ import annotations

import os
import random
import re
import time
from typing import Any

import observability
import requests
import store
from flask import Flask, Response, jsonify, request

import pulsetrace
import pulsetrace.logging
import pulsetrace.metrics

#: How long the service waits for the provider before answering 504.
PROVIDER_TIMEOUT_S = 0.8
PHONE = re.compile(r"^\+[1-9][0-9]{9,14}$")

app = Flask("messaging-demo")
log = observability.log
_port = os.environ.get("DEMO_PORT", "8000")
PROVIDER_URL = f"http://127.0.0.1:{_port}/provider/v1/messages"


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


@app.get("/")
def index() -> Any:
    """What the service is, and which gunicorn worker answered (the
    monitoring endpoints show every worker's requests together)."""
    routes = sorted(
        f"{m} {r.rule}"
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
        for m in sorted(r.methods or ())
        if m not in ("HEAD", "OPTIONS")
    )
    return jsonify(service="messaging-demo", worker_pid=os.getpid(), routes=routes)


# --- contacts -------------------------------------------------------------------


@app.get("/contacts")
def list_contacts() -> Any:
    company = request.args.get("company", "comp_acme")
    limit = min(int(request.args.get("limit", "20")), 100)
    pulsetrace.set_company(company)
    found = store.rows(
        "SELECT id, name, phone, opted_in FROM contacts WHERE company_id = ? ORDER BY id LIMIT ?",
        (company, limit),
    )
    return jsonify(contacts=found)


@app.get("/contacts/<int:contact_id>")
def get_contact(contact_id: int) -> Any:
    found = store.row("SELECT * FROM contacts WHERE id = ?", (contact_id,))
    if found is None:
        return error(404, f"no contact {contact_id}")
    return jsonify(found)


@app.post("/contacts")
def create_contact() -> Any:
    data = body()
    name, phone = data.get("name"), data.get("phone")
    company = data.get("company_id", "comp_acme")
    if not isinstance(name, str) or not name.strip():
        return error(400, "name: a non-empty string is required")
    if not isinstance(phone, str) or not PHONE.match(phone):
        return error(400, "phone: an E.164 number (+5511987654321) is required")
    if store.row("SELECT id FROM companies WHERE id = ?", (company,)) is None:
        return error(400, f"company_id: no company {company!r}")
    pulsetrace.set_company(company)
    new_id = store.write(
        "INSERT INTO contacts (company_id, name, phone) VALUES (?, ?, ?)", (company, name, phone)
    )
    total = store.row("SELECT count(*) AS n FROM contacts WHERE company_id = ?", (company,))
    pulsetrace.metrics.record_contacts(1, company_id=company)
    observability.CONTACTS.set(total["n"] if total else 0, company=company)
    log.info("contact created", extra={"contactId": new_id})
    return jsonify(id=new_id), 201


# --- templates and campaigns ------------------------------------------------------


@app.get("/templates")
def list_templates() -> Any:
    return jsonify(templates=store.rows("SELECT name, body, message_type FROM templates"))


@app.get("/campaigns")
def list_campaigns() -> Any:
    found = store.rows(
        "SELECT c.id, c.name, c.company_id, c.template, count(m.id) AS messages"
        " FROM campaigns c LEFT JOIN messages m ON m.campaign_id = c.id"
        " GROUP BY c.id ORDER BY c.id"
    )
    return jsonify(campaigns=found)


@app.get("/campaigns/<int:campaign_id>/stats")
def campaign_stats(campaign_id: int) -> Any:
    campaign = store.row("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
    if campaign is None:
        return error(404, f"no campaign {campaign_id}")
    counts = {
        r["status"]: r["n"]
        for r in store.rows(
            "SELECT status, count(*) AS n FROM messages WHERE campaign_id = ? GROUP BY status",
            (campaign_id,),
        )
    }
    done = counts.get("delivered", 0) + counts.get("read", 0) + counts.get("failed", 0)
    ok = done - counts.get("failed", 0)
    return jsonify(campaign=campaign, messages=counts, success_rate=ok / done if done else None)


@app.post("/campaigns/<int:campaign_id>/send")
def send_campaign(campaign_id: int) -> Any:
    """Send the campaign's template to a small batch of its company's contacts."""
    campaign = store.row("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
    if campaign is None:
        return error(404, f"no campaign {campaign_id}")
    pulsetrace.set_company(campaign["company_id"])
    batch = store.rows(
        "SELECT id FROM contacts WHERE company_id = ? AND opted_in = 1 ORDER BY random() LIMIT 3",
        (campaign["company_id"],),
    )
    results = [send(c["id"], campaign["template"], campaign_id)[0]["status"] for c in batch]
    observability.CAMPAIGN_BATCHES.inc(campaign=campaign["name"])
    pulsetrace.logging.log_business_metric(
        "campaign_batch_sent", len(results), "messages", {"campaignId": campaign_id}
    )
    return jsonify(campaign=campaign_id, results=results)


# --- messages ----------------------------------------------------------------------


def send(contact_id: int, template: str, campaign_id: Any = None) -> tuple[dict[str, Any], int]:
    """Store the message, hand it to the provider, record its outcome.
    Returns (the message, the HTTP status to answer)."""
    contact = store.row("SELECT * FROM contacts WHERE id = ?", (contact_id,))
    tpl = store.row("SELECT * FROM templates WHERE name = ?", (template,))
    if contact is None or tpl is None:
        what = f"contact_id: no contact {contact_id}" if contact is None else "template"
        return {"error": f"{what}: not found", "status": "rejected"}, 400
    company = contact["company_id"]
    campaign = str(campaign_id) if campaign_id is not None else None
    pulsetrace.set_company(company)
    text = tpl["body"].format(name=contact["name"].split()[0], company=company)
    kind = tpl["message_type"]
    pulsetrace.metrics.record_template_use(template)
    observability.BODY_BYTES.observe(len(text.encode()), message_type=kind)
    msg_id = store.write(
        "INSERT INTO messages (contact_id, campaign_id, template, status, created_at)"
        " VALUES (?, ?, ?, 'queued', ?)",
        (contact_id, campaign_id, template, time.time()),
    )
    started = time.perf_counter()
    try:
        reply = requests.post(
            PROVIDER_URL,
            json={"to": contact["phone"], "type": kind, "text": text},
            timeout=PROVIDER_TIMEOUT_S,
        )
        reply.raise_for_status()
        answer = reply.json()
    except requests.Timeout:
        took = time.perf_counter() - started
        pulsetrace.metrics.record_api_call("whatsapp", "send_message", took, ok=False)
        pulsetrace.metrics.record_message("failed", kind, campaign, company)
        store.write(
            "UPDATE messages SET status = 'failed', error = 'provider timeout' WHERE id = ?",
            (msg_id,),
        )
        # An ERROR line inside the request keeps its trace, with the ids.
        log.error("provider timed out", extra={"messageId": msg_id, "timeoutS": took})
        return {"id": msg_id, "status": "failed", "error": "provider timed out"}, 504
    except requests.RequestException as exc:
        took = time.perf_counter() - started
        pulsetrace.metrics.record_api_call("whatsapp", "send_message", took, ok=False)
        pulsetrace.metrics.record_message("failed", kind, campaign, company)
        store.write(
            "UPDATE messages SET status = 'failed', error = ? WHERE id = ?",
            (type(exc).__name__, msg_id),
        )
        log.error("provider failed", extra={"messageId": msg_id, "error": str(exc)})
        return {"id": msg_id, "status": "failed", "error": "provider error"}, 502
    took = time.perf_counter() - started
    pulsetrace.metrics.record_api_call("whatsapp", "send_message", took, ok=True)
    pulsetrace.metrics.record_message("sent", kind, campaign, company)
    status = "delivered" if answer.get("status") == "delivered" else "failed"
    pulsetrace.metrics.record_message(status, kind, campaign, company)
    store.write(
        "UPDATE messages SET status = ?, provider_id = ?, error = ? WHERE id = ?",
        (status, answer.get("id"), answer.get("error"), msg_id),
    )
    log.info("message %s", status, extra={"messageId": msg_id, "providerMs": took * 1e3})
    return {"id": msg_id, "status": status}, 201


@app.post("/messages")
def send_message() -> Any:
    data = body()
    contact_id, template = data.get("contact_id"), data.get("template")
    if not isinstance(contact_id, int) or isinstance(contact_id, bool):
        return error(400, "contact_id: an integer is required")
    if not isinstance(template, str):
        return error(400, "template: a template name is required")
    campaign_id = data.get("campaign_id")
    message, status = send(contact_id, template, campaign_id)
    return jsonify(message), status


@app.get("/messages/<int:message_id>")
def get_message(message_id: int) -> Any:
    found = store.row(
        "SELECT id, contact_id, campaign_id, template, status, error FROM messages WHERE id = ?",
        (message_id,),
    )
    if found is None:
        return error(404, f"no message {message_id}")
    return jsonify(found)


@app.post("/webhooks/read")
def message_read() -> Any:
    """The provider's read receipt."""
    message_id = body().get("message_id")
    found = store.row(
        "SELECT m.id, t.message_type, m.campaign_id, c.company_id FROM messages m"
        " JOIN templates t ON t.name = m.template JOIN contacts c ON c.id = m.contact_id"
        " WHERE m.id = ? AND m.status = 'delivered'",
        (message_id if isinstance(message_id, int) else -1,),
    )
    if found is None:
        return error(404, "no delivered message with that message_id")
    store.write("UPDATE messages SET status = 'read' WHERE id = ?", (found["id"],))
    campaign = found["campaign_id"]
    pulsetrace.metrics.record_message(
        "read",
        found["message_type"],
        None if campaign is None else str(campaign),
        found["company_id"],
    )
    return jsonify(id=found["id"], status="read")


# --- the messaging provider (a stub, served by the same application) --------------


@app.post("/provider/v1/messages")
def provider_send() -> Any:
    """Accepts a message the way a messaging API would, with its variety:
    mostly fast, sometimes slow, a few recipients rejected, now and then
    hanging past the caller's timeout."""
    draw = random.random()
    if draw < 0.05:
        time.sleep(PROVIDER_TIMEOUT_S + 0.7)  # the caller has given up by now
    elif draw < 0.15:
        time.sleep(random.uniform(0.15, 0.4))
    else:
        time.sleep(random.uniform(0.004, 0.03))
    provider_id = f"wamid.{random.getrandbits(48):012x}"
    if random.random() < 0.05:
        return jsonify(id=provider_id, status="failed", error="recipient is not on WhatsApp")
    return jsonify(id=provider_id, status="delivered")


@app.get("/provider/health")
def provider_health() -> Any:
    return jsonify(status="ok")


observability.setup(os.environ[store.DB_ENV], f"http://127.0.0.1:{_port}/provider/health")
