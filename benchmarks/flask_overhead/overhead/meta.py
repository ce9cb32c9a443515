"""Versions of everything measured, and which pulsetrace checkout is measured."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from overhead.procs import wrk_version
from overhead.settings import HERE


def versions(wrk: Optional[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "pulsetrace",
        "flask",
        "werkzeug",
        "gunicorn",
        "requests",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-distro",
        "opentelemetry-instrumentation",
        "opentelemetry-instrumentation-flask",
        "opentelemetry-instrumentation-requests",
        "opentelemetry-instrumentation-sqlite3",
        "opentelemetry-instrumentation-redis",
        "redis",
        "opentelemetry-exporter-otlp-proto-grpc",
        "grpcio",
        "protobuf",
        "matplotlib",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if wrk:
        out["wrk"] = wrk_version(wrk)
    return out


def provenance() -> dict[str, Any]:
    """Which pulsetrace is measured: where it is imported from (the venv's editable
    install may point at another checkout) and this checkout's commit."""
    repo = HERE.parent.parent
    spec = importlib.util.find_spec("pulsetrace")
    origin = str(Path(spec.origin).resolve().parent) if spec and spec.origin else None
    native = importlib.util.find_spec("pulsetrace._native") if origin else None
    git = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "pulsetrace_imported_from": origin,
        "pulsetrace_native": native.origin if native else None,
        "from_this_checkout": bool(origin) and Path(str(origin)).is_relative_to(repo.resolve()),
        "checkout": str(repo),
        "commit": git.stdout.strip() or None,
        "uncommitted_changes": bool(dirty.stdout.strip()) if git.returncode == 0 else None,
    }
