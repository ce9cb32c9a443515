"""Small helpers shared by the export benchmarks: statistics, the children's
environment, versions, memory readings from /proc."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent

#: Prefixes of variables that would change what is measured (kill switches,
#: samplers, exporters, limits of pulsetrace or of the OpenTelemetry SDK).
SCRUBBED_PREFIXES = ("OTEL_", "PULSETRACE_", "APM_")

VERSIONED = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-grpc",
    "grpcio",
    "protobuf",
)


def child_env() -> tuple[dict[str, str], list[str]]:
    """This environment without SCRUBBED_PREFIXES variables; and their names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    removed = sorted(k for k in os.environ if k.startswith(SCRUBBED_PREFIXES))
    return env, removed


def run_child(script: str, args: Sequence[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run ``HERE/script args --out out`` in a fresh interpreter with the scrubbed
    environment; its stdout/stderr pass through. Returns the JSON it wrote.
    Raises RuntimeError if it failed (a broken harness)."""
    env, _ = child_env()
    cmd = [sys.executable, str(HERE / script), *args, "--out", str(out)]
    try:
        rc = subprocess.run(cmd, env=env, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{script} {' '.join(args)} took more than {timeout:g} s") from exc
    if rc != 0:
        raise RuntimeError(f"{script} {' '.join(args)} exited with {rc}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def stats(values: Sequence[float]) -> dict[str, Any]:
    """median, p25, p75, min, max and the samples."""
    return {
        "median": statistics.median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": list(values),
    }


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }
    for name in ("pulsetrace", *VERSIONED):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def missing_modules(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported (without importing them)."""
    import importlib.util

    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(m)
    return missing


def loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- memory of this process, from /proc ------------------------------------------------


def proc_status_kib(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, ...), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux
    4.0+). False when this kernel or sandbox does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 64
