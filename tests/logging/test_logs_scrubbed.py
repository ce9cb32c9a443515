"""Personal data and secrets do not reach a log line: the message, the
``extra=`` values (nested ones too, and the ``repr`` of objects JSON cannot
hold) and the exception pass through pulsetrace's scrubber."""

from __future__ import annotations

import io
import json
import logging

import pulsetrace.logging as plog

from conftest import fresh

PHONE = "+5511987654321"
EMAIL = "jane.doe@example.com"
CARD = "4111111111111111"


class Customer:
    def __repr__(self) -> str:
        return f"Customer(email={EMAIL!r})"


def test_message_metadata_reprs_and_errors_are_scrubbed():
    fresh()
    buf = io.StringIO()
    plog.configure(stream=buf)
    try:
        log = logging.getLogger("messages")
        log.info(
            "sending to %s",
            PHONE,
            extra={
                "to": {"phone": PHONE, "emails": [EMAIL]},
                "password": "hunter2",
                "customer": Customer(),
                "campaignId": "camp_1",
            },
        )
        try:
            raise ValueError(f"card {CARD} declined")
        except ValueError:
            log.exception("payment failed for %s", EMAIL)
    finally:
        plog.unconfigure()
    text = buf.getvalue()
    for secret in (PHONE, EMAIL, CARD, "hunter2"):
        assert secret not in text, secret
    sent, failed = (json.loads(x) for x in text.splitlines())
    assert sent["message"].startswith("sending to +55")  # masked, shape kept
    meta = sent["metadata"]
    assert meta["password"] == "REDACTED"
    assert meta["to"]["phone"].startswith("+55") and meta["to"]["phone"] != PHONE
    assert meta["to"]["emails"][0].endswith("@example.com")
    assert meta["customer"].startswith("Customer(email=")
    assert meta["campaignId"] == "camp_1"  # an id is not personal data
    assert failed["error"]["message"].endswith("declined")
    assert CARD[-4:] in failed["error"]["message"]
