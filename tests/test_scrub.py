"""The scrubber as Python code sees it (``pulsetrace.scrub``): the corpus
through the binding, ``scrub_value`` on log-record shapes, the modes and
fields from the configuration, and the fail-closed path."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import pulsetrace
from pulsetrace import _diag
from pulsetrace._native import inject_panic
from pulsetrace.scrub import REDACTED, scrub_text, scrub_value

CORPUS = Path(__file__).resolve().parent.parent / "rust/core/tests/data/scrub_corpus.tsv"


def corpus() -> list[tuple[bool, str, str]]:
    cases = []
    for line in CORPUS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        sign, text, *want = line.split("\t")
        cases.append((sign == "+", text, want[0] if want else text))
    return cases


@pytest.fixture(autouse=True)
def default_config():
    pulsetrace.configure(pulsetrace.Config())
    yield
    pulsetrace.configure(pulsetrace.Config())


@pytest.mark.parametrize(("positive", "text", "want"), corpus(), ids=lambda v: str(v)[:40])
def test_corpus(positive, text, want):
    assert scrub_text(text) == want
    assert scrub_text(want) == want, "idempotent"


def test_the_leaked_query_string_keeps_nothing_sensitive():
    q = "email=a@b.com&ssn=123-45-6789&credit_card=4111111111111111&pass=shortpass"
    out = scrub_text(q)
    for secret in ("a@b.com", "123-45-6789", "4111111111111111", "shortpass"):
        assert secret not in out
    assert out.startswith("email=") and "&pass=REDACTED" in out


def test_scrub_value_recurses_into_log_record_shapes():
    record = {
        "message": "sent to +5511987654321",
        "password": "hunter2",
        "Authorization": ["Bearer abc"],
        "metadata": {"user": {"email": "ana@example.org", "age": 41}, "tags": ("camp_1",)},
        "count": 3,
        "ok": True,
        "none": None,
    }
    out = scrub_value(record)
    assert out == {
        "message": "sent to +55*********21",
        "password": REDACTED,
        "Authorization": REDACTED,
        "metadata": {"user": {"email": "a**@example.org", "age": 41}, "tags": ("camp_1",)},
        "count": 3,
        "ok": True,
        "none": None,
    }
    assert record["password"] == "hunter2", "the caller's dict is not changed"


def test_scrub_value_survives_cycles_and_odd_objects():
    a: list = ["a@b.com"]
    a.append(a)
    out = scrub_value(a)
    assert isinstance(out, list) and out[0] == "*@b.com"
    obj = object()
    assert scrub_value(obj) is obj
    assert scrub_value({1: "a@b.com", (2, 3): "x"}) == {1: "*@b.com", (2, 3): "x"}


def test_redact_mode_and_configured_fields():
    pulsetrace.configure(pulsetrace.Config(), scrub_mode="redact", scrub_fields=("cpf",))
    assert scrub_text("to +5511987654321, a@b.com") == "to REDACTED, REDACTED"
    assert scrub_text("customer_cpf=12345678900") == "customer_cpf=REDACTED"
    assert scrub_value({"CPF": "123"}) == {"CPF": REDACTED}


def test_off_mode_changes_nothing():
    pulsetrace.configure(pulsetrace.Config(), scrub_mode="off")
    assert scrub_text("a@b.com password=x") == "a@b.com password=x"


def test_a_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="scrub_mode"):
        pulsetrace.configure(pulsetrace.Config(), scrub_mode="hide")


def test_a_failing_scrubber_fails_closed_and_never_raises():
    _diag.reset()
    try:
        inject_panic("scrub.text")
        assert scrub_text("a@b.com") == REDACTED
        assert scrub_value(["a@b.com"]) == REDACTED
        assert scrub_value({"m": "a@b.com"}) == REDACTED  # a dict: one native call too
    finally:
        inject_panic(None)
    errors = _diag.internal_errors()
    assert errors.get("scrub.scrub_text") == 1 and errors.get("scrub.scrub_value") == 2
    assert scrub_text("a@b.com") == "*@b.com"


def test_random_text_never_raises_and_is_idempotent():
    rng = random.Random(14)
    alphabet = "ab@.+-() 0123456789=:&;\"'%\n\u00e9\ud7ff"
    pieces = ["a@b.com", "+5511987654321", "4111111111111111", "password=", "Bearer ", "camp_1"]
    for _ in range(2000):
        parts = [
            rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet)
            for _ in range(rng.randrange(0, 40))
        ]
        text = "".join(parts)
        once = scrub_text(text)
        assert scrub_text(once) == once, text
        assert len(once) <= 3 * len(text) + 8


def test_before_the_agent_is_configured_the_environment_applies(tmp_path):
    code = (
        "from pulsetrace.scrub import scrub_text\n"
        "print(scrub_text('to +5511987654321 cpf=123'))\n"
    )
    env = {**os.environ, "PULSETRACE_SCRUB_MODE": "redact", "PULSETRACE_SCRUB_FIELDS": "cpf"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "to REDACTED cpf=REDACTED"
