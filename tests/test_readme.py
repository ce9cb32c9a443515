"""The README as a user reads it: rendered as Markdown, its configuration
tables hold a row for every environment variable pulsetrace reads."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from markdown_it import MarkdownIt

from pulsetrace import config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "pulsetrace"
# A whole variable name with one of the prefixes pulsetrace's settings use.
VARIABLE = re.compile(r"^(?:PULSETRACE|OTEL|APM|PROMETHEUS)_[A-Z0-9_]*[A-Z0-9]$")


class Recording(Mapping[str, str]):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_read() -> set[str]:
    """What the configuration readers look up, plus every variable name
    written out in the package's code (modules that read ``os.environ``
    themselves: query redaction, the OpenTelemetry bridge)."""
    env = Recording()
    config.from_env(env)
    names = set(env.read)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and VARIABLE.match(node.value):
                names.add(node.value)
    return names


def table_rows(markdown: str) -> list[list[str]]:
    """The rows of every table as rendered (CommonMark with GFM tables):
    per row, the code spans of its first cell; a cell saying "`_TRACES_`
    form too" also documents the ``OTEL_EXPORTER_OTLP_TRACES_*`` form."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows = []
    for i, tok in enumerate(tokens):
        if tok.type != "tr_open":
            continue
        first = next(t for t in tokens[i:] if t.type == "inline")
        names = [c.content for c in first.children or [] if c.type == "code_inline"]
        if "_TRACES_" in names:
            names.remove("_TRACES_")
            names += [
                n.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1)
                for n in names
                if n.startswith("OTEL_EXPORTER_OTLP_")
            ]
        rows.append(names)
    return rows


def test_every_variable_read_is_a_row_of_a_rendered_table():
    documented = {n for row in table_rows((ROOT / "README.md").read_text()) for n in row}
    read = variables_read()
    # The configuration readers were found (the scan is not vacuous).
    assert {"PULSETRACE_SAMPLE_RATE", "LOG_LEVEL", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} <= read
    missing = sorted(read - documented)
    assert missing == [], f"not a row of a README table: {missing}"
