"""Shared helpers of the deploy/ tests: where the configuration lives, the
Prometheus tools, the PromQL expressions of the rules and dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
ALERTMANAGER = DEPLOY / "alertmanager"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/bin:/usr/bin")
    if path is None:
        pytest.fail(
            f"{name} is required (Debian packages prometheus, prometheus-alertmanager: "
            "make system-deps)"
        )
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_expressions() -> list[tuple[str, str]]:
    """(name, expr) of every recording and alerting rule in deploy/."""
    out = []
    for path in RULES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("record") or rule["alert"], rule["expr"]))
    return out


def alerting_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def dashboard_expressions() -> list[tuple[str, str]]:
    """(dashboard / panel, expr) of every Prometheus query in every dashboard
    panel and template variable."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in panels(board):
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((f"{path.name} / {p['title']}", t["expr"]))
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*), *\w+\)", text or "")
            if match:  # Grafana's own function; its selector is PromQL
                out.append((f"{path.name} / ${var['name']}", match.group(1)))
    return out


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends Prometheus for an expression: its variables
    replaced (every value selected: ``.*``; range variables: a duration)."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    expr = expr.replace("$__range", "5m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


# A metric name in a PromQL expression: an identifier not followed by "(" (a
# function), not a label name inside {...} or by (...), not a keyword.
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings out
    text = re.sub(r"\{[^}]*\}", "", text)  # selectors' label matchers out
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations out
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = m.group(0)
        after = text[m.end() :].lstrip()
        if after.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names
