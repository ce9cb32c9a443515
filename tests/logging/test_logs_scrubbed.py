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


def test_scrub_value_walks_a_record_s_metadata_in_one_call():
    from collections import OrderedDict

    from pulsetrace.scrub import REDACTED, scrub_value

    cycle: list = []
    cycle.append(cycle)
    original = {
        "api_key": "sk_live_abc",
        "token": None,  # nothing to hide
        "nested": {"password": 5, "ids": ("camp_1", EMAIL)},
        3: PHONE,
        "ordered": OrderedDict(email=EMAIL),
        "cycle": cycle,
        "count": 1500,
    }
    got = scrub_value(original)
    assert got["api_key"] == REDACTED and got["token"] is None
    assert got["nested"]["password"] == REDACTED
    ids = got["nested"]["ids"]
    assert isinstance(ids, tuple) and ids[0] == "camp_1" and EMAIL not in ids[1]
    assert got[3] != PHONE and got[3].startswith("+55")
    assert got["ordered"] == {"email": scrub_value(EMAIL)} and EMAIL not in str(got)
    assert got["count"] == 1500
    assert REDACTED in str(got["cycle"])  # followed 16 levels deep, then cut
    assert original["api_key"] == "sk_live_abc"  # new containers, the input untouched
    assert scrub_value("camp_1") == "camp_1" and scrub_value(None) is None


def test_a_reconfigured_scrubber_judges_keys_afresh():
    # Verdicts on keys are remembered per scrubber: a new configuration
    # (PULSETRACE_SCRUB_FIELDS) must not see the previous one's.
    from pulsetrace.scrub import REDACTED, scrub_value

    fresh()
    assert scrub_value({"campaignId": "camp_1"}) == {"campaignId": "camp_1"}
    fresh(scrub_fields=("campaign",))
    assert scrub_value({"campaignId": "camp_1"}) == {"campaignId": REDACTED}
    fresh()
    assert scrub_value({"campaignId": "camp_1"}) == {"campaignId": "camp_1"}
