#!/usr/bin/env python3
"""The native scrubber against the same rules in Python's ``re``, in one run.

    python benchmarks/scrub/run.py [--seconds 1.0]

Two workloads, each scrubbed by both in interleaved rounds: ``corpus`` (the
scrubber's test corpus, rust/core/tests/data/scrub_corpus.tsv: every line
holds or nearly holds personal data) and ``attributes`` (what exported spans
mostly carry: routes, SQL, URLs, user agents, one value in ten with personal
data). Prints MB/s of input for each and the ratio, after checking that both
give the same output on every line (the same rules, two engines).

Figures, not a test: exits 0 whatever they are; non-zero only when the two
disagree on an output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pyrules  # noqa: E402

import pulsetrace  # noqa: E402
from pulsetrace.scrub import scrub_text  # noqa: E402

CORPUS = HERE.parent.parent / "rust/core/tests/data/scrub_corpus.tsv"

CLEAN = [
    "GET /api/v1/messages/{id}",
    "SELECT id, status FROM messages WHERE campaign_id = ? AND sent_at > ?",
    "/api/v1/campaigns/camp_1/messages",
    "page=2&per_page=50&sort=-created_at",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "HGET template:order_update_v2 ?",
    "http://api.internal:8080/v2/templates/order_update_v2?lang=pt_BR",
    "worker finished batch 1733384400 in 12.5 ms",
    "POST /webhooks/whatsapp",
]
DIRTY = [
    "to=%2B5511987654321&template=order_update_v2",
    "sending to +55 11 98765-4321 for maria.silva@example.com",
]


def corpus_lines() -> list[str]:
    lines = []
    for line in CORPUS.read_text().splitlines():
        if line and not line.startswith("#"):
            lines.append(line.split("\t")[1])
    return lines


def attribute_lines() -> list[str]:
    # Nine clean values to one with personal data, as exported spans carry them.
    out = []
    for i in range(200):
        out.append(DIRTY[i % 2] if i % 10 == 9 else CLEAN[i % len(CLEAN)])
    return out


def throughput(fn, lines: list[str], seconds: float) -> float:
    """MB/s of input over repeated passes of ``lines`` for about ``seconds``."""
    size = sum(len(s.encode()) for s in lines)
    passes = 0
    start = time.perf_counter()
    while True:
        for s in lines:
            fn(s)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return size * passes / elapsed / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per workload, engine and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pulsetrace.configure(pulsetrace.Config())

    workloads = {"corpus": corpus_lines(), "attributes": attribute_lines()}
    differ = [
        (s, scrub_text(s), pyrules.scrub(s))
        for lines in workloads.values()
        for s in lines
        if scrub_text(s) != pyrules.scrub(s)
    ]
    for s, native, python in differ:
        print(f"DIFFER {s!r}\n  native {native!r}\n  python {python!r}")

    print(f"{'workload':<12}{'bytes':>8}{'native MB/s':>14}{'python re MB/s':>16}{'ratio':>8}")
    for name, lines in workloads.items():
        native, python = [], []
        for _ in range(args.rounds):
            native.append(throughput(scrub_text, lines, args.seconds))
            python.append(throughput(pyrules.scrub, lines, args.seconds))
        n, p = sorted(native)[len(native) // 2], sorted(python)[len(python) // 2]
        size = sum(len(s.encode()) for s in lines)
        print(f"{name:<12}{size:>8}{n:>14.1f}{p:>16.1f}{n / p:>7.1f}x")
    print("(median of rounds; one pulsetrace.scrub.scrub_text call per line)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
