"""The scrubber's rules written with Python's ``re``, for the benchmark only:
the baseline the native scrubber (``rust/core/src/scrub``) is measured
against. The benchmark checks that both give the same output on the corpus,
so the comparison is of one set of rules in two engines. pulsetrace itself
never uses this module.
"""

from __future__ import annotations

import re
from typing import Optional

REDACTED = "REDACTED"
SECRET_WORDS = (
    "password passwd secret token apikey accesskey privatekey credential "
    "authorization cookie sessionid creditcard cardnumber cvv"
).split()
SECRET_SEGMENTS = {"pass", "pwd", "pin", "ssn", "cvc", "otp", "sig", "auth", "session", "jwt"}
TRIGGERS = [
    "@", "%40", "eyj", "bearer", "basic", "sk_", "sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "xox", "akia", "eaa", "api", "access", "private", "credit", "card", "passw", "api_key",
    "private_key", "access_key", "credit_card",
    *SECRET_WORDS, *SECRET_SEGMENTS,
]  # fmt: skip
PREFILTER = re.compile("|".join(map(re.escape, TRIGGERS)), re.I)
DIGIT = re.compile(r"[0-9]")

# Each pattern on one line, as in rust/core/src/scrub/rules.rs, to compare them.
HEADER = r"\b(?P<hkey>(?:proxy-)?authorization|set-cookie|cookie)(?P<hq>[\x22'])?[ \t]*[:=][ \t]*(?P<hval>\x22(?:[^\x22\\\r\n]|\\.)*\x22|[^\s\x22][^\r\n\x22]*)"  # noqa: E501
KV = r"\b(?P<kkey>[A-Za-z][A-Za-z0-9_.\-]{0,63})(?P<kq>[\x22'])?[ \t]*[:=][ \t]*(?P<kval>\x22(?:[^\x22\\\r\n]|\\.)*\x22|'[^'\r\n]*'|[^\s&,;\x22'<>{}\[\]]+)"  # noqa: E501
JWT = r"(?P<jwt>eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)"
BEARER = r"\b(?P<bscheme>(?i:bearer|basic)[ ]+)(?P<bval>[A-Za-z0-9\-._~+/]{8,}=*)"
APIKEY = r"(?P<apikey>(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|sk-[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|EAA[A-Za-z0-9]{30,})"  # noqa: E501
EMAIL = r"(?P<elocal>[A-Za-z0-9._%+\-*]{1,64})(?P<eat>@|%40)(?P<edomain>[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24})"  # noqa: E501
IBAN = r"(?P<iban>[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?)"
CARD = r"(?P<card>[0-9](?:[ \-]?[0-9]){12,18})"
SSN = r"(?P<ssn>[0-9]{3}-[0-9]{2}-[0-9]{4})"
PHONE = r"(?P<phone>\+[0-9](?:[ .\-]?\(?[0-9]\)?){6,16}|\([0-9]{2,4}\)[ .\-]?[0-9]{3,5}[ .\-]?[0-9]{4}|[0-9]{2,4}[ .\-][0-9]{3,5}[ .\-][0-9]{4}|0[0-9]{2,4}[ \-][0-9]{6,8})"  # noqa: E501
COMBINED = re.compile(
    "|".join([f"(?i:{HEADER})", KV, JWT, BEARER, APIKEY, EMAIL, IBAN, CARD, SSN, PHONE])
)
SHAPES = {"iban": IBAN, "card": CARD, "ssn": SSN, "phone": PHONE}
SINGLE = {k: re.compile(v) for k, v in SHAPES.items()}


def _word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def bounded(text: str, start: int, end: int) -> bool:
    return (start == 0 or not _word(text[start - 1])) and (end >= len(text) or not _word(text[end]))


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(s: str) -> bool:
    d = "".join(c for c in s if c.isdigit())
    if not 13 <= len(d) <= 19 or (" " in s and "-" in s):
        return False
    p2, p4 = int(d[:2]), int(d[:4])
    issuer = (
        d[0] == "4"
        or 51 <= p2 <= 55
        or 2221 <= p4 <= 2720
        or p2 in (34, 35, 36, 37, 38, 65)
        or 300 <= p4 // 10 <= 305
        or p4 == 6011
        or 644 <= p4 // 10 <= 649
    )
    return issuer and luhn(d)


def is_iban(s: str) -> bool:
    c = s.replace(" ", "")
    if not 15 <= len(c) <= 34 or not c.isalnum():
        return False
    moved = c[4:] + c[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def is_phone(s: str) -> bool:
    n = sum(c.isdigit() for c in s)
    if not 8 <= n <= 15 or re.search(r"[ .\-]{2}", s):
        return False
    return s.count("(") == s.count(")")


def _segments(key: str) -> list[str]:
    out = []
    for part in re.split(r"[_.\- ]", key):
        out += re.findall(r"[^A-Z]+|[A-Z][^A-Z]*", re.sub(r"([a-z])([A-Z])", r"\1 \2", part))
    return [p.strip() for p in out if p.strip()]


def is_secret_key(key: str, fields: tuple[str, ...] = ()) -> bool:
    lower = key.lower()
    if any(f in lower for f in fields):
        return True
    norm = re.sub(r"[_.\- ]", "", lower)
    if any(w in norm for w in SECRET_WORDS):
        return True
    return any(seg.lower() in SECRET_SEGMENTS for seg in _segments(key))


def _mask(s: str, head: int, tail: int, keep: str = "digit") -> str:
    test = str.isdigit if keep == "digit" else str.isalnum
    total = sum(1 for c in s if c.isascii() and test(c))
    seen, out = 0, []
    for c in s:
        if not (c.isascii() and test(c)):
            out.append(c)
            continue
        seen += 1
        out.append(c if seen <= head or seen > total - tail else "*")
    return "".join(out)


def _quoted(v: str) -> str:
    if len(v) >= 2 and v[0] in "\"'" and v[-1] == v[0]:
        return f"{v[0]}{REDACTED}{v[0]}"
    return REDACTED


def _check(text: str, kind: str, start: int, end: int) -> Optional[tuple[int, str]]:
    cand = text[start:end]
    if kind == "phone":
        while cand.endswith(")") and cand.count("(") < cand.count(")"):
            cand, end = cand[:-1], end - 1
        ok = is_phone(cand)
    elif kind == "card":
        ok = is_card(cand)
    elif kind == "ssn":
        ok = True
    else:
        ok = is_iban(cand)
        if not ok and " " in cand:
            cut = cand.rfind(" ")
            if is_iban(cand[:cut]):
                cand, end, ok = cand[:cut], start + cut, True
    if not ok or not bounded(text, start, end):
        return None
    rep = {
        "card": lambda: _mask(cand, 0, 4),
        "ssn": lambda: _mask(cand, 0, 0),
        "phone": lambda: _mask(cand, 2, 2),
        "iban": lambda: _mask(cand, 2, 2, "alnum"),
    }[kind]()
    return end, rep


def _scan(text: str) -> str:
    out: list[str] = []
    last = pos = 0
    while pos <= len(text):
        m = COMBINED.search(text, pos)
        if m is None:
            break
        g = m.groupdict()
        rep: Optional[tuple[int, int, str]] = None
        if g["hval"] is not None:
            rep = (m.start("hval"), m.end("hval"), _quoted(g["hval"]))
        elif g["kkey"] is not None:
            if is_secret_key(g["kkey"]):
                rep = (m.start("kval"), m.end("kval"), _quoted(g["kval"]))
            else:
                pos = m.start("kval")
                continue
        elif g["jwt"] or g["bval"] or g["apikey"]:
            name = "jwt" if g["jwt"] else "bval" if g["bval"] else "apikey"
            rep = (m.start(name), m.end(name), REDACTED)
        elif g["elocal"] is not None:
            local = g["elocal"]
            masked = "*" if len(local) == 1 else local[0] + "*" * (len(local) - 1)
            rep = (m.start("elocal"), m.end("edomain"), masked + g["eat"] + g["edomain"])
        else:
            kind = next(k for k in SHAPES if g[k] is not None)
            found = _check(text, kind, m.start(kind), m.end(kind))
            if found is None:
                for other, rx in SINGLE.items():
                    if other == kind:
                        continue
                    f = rx.match(text, m.start())
                    found = f and _check(text, other, m.start(), f.end())
                    if found:
                        break
            if found:
                rep = (m.start(), found[0], found[1])
            else:
                pos = m.end()
                continue
        out.append(text[last : rep[0]])
        out.append(rep[2])
        last = rep[1]
        pos = max(rep[1], m.start() + 1)
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def scrub(text: str) -> str:
    if len(DIGIT.findall(text)) < 8 and not PREFILTER.search(text):
        return text
    out = _scan(text)
    for _ in range(3):
        again = _scan(out)
        if again == out:
            break
        out = again
    return out
