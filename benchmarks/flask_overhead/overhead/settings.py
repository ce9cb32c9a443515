"""The configurations measured (agents and their environment), the modes, the
routes, the load settings and the targets of the Flask overhead benchmark."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: The benchmark's folder (benchmarks/flask_overhead).
HERE = Path(__file__).resolve().parent.parent
RESULTS = HERE.parent / "results"
DEFAULT_JSON = RESULTS / "flask_overhead.json"
DEFAULT_PNG = RESULTS / "flask_overhead.png"
LUA = HERE / "latency.lua"
HOST = "127.0.0.1"

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "rounds": 2,
        "duration": 3,
        "warmup": 1,
        "configs": ["none", "pulsetrace", "otel"],
    },
    "full": {
        "rounds": 5,
        "duration": 10,
        "warmup": 2,
        "configs": ["none", "pulsetrace", "pulsetrace_keep_all", "otel"],
    },
}
ROUTES = ["/json", "/sqlite", "/outbound", "/redis"]
#: What /redis reads (app.py's REDIS_KEY), set by the harness once redis-server is up.
REDIS_KEY = "bench:key"
REDIS_VALUE = '{"id": 42, "name": "bench", "tags": ["a", "b", "c"]}'
THREADS = 2
CONNECTIONS = 4
#: Targets, on the medians: pulsetrace's loss on /json, and its loss as a share
#: of OpenTelemetry's on every route.
TARGET_JSON_LOSS_PCT = 5.0
TARGET_LOSS_RATIO = 0.25

NOTE_EXPORT = (
    "every agent gets the same exporter settings, OTLP/gRPC to a local receiver that "
    "discards (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER=otlp): figures include "
    "batching and encoding in the worker; spans received are counted per server"
)
NOTE_NO_EXPORT = (
    "pulsetrace sent nothing to the receiver: this build has no network exporter, so its "
    "kept traces stayed in a bounded in-process queue (dropped and counted once full) and "
    "its figures cover the request path only, while OpenTelemetry's include its export"
)


@dataclass
class Config:
    name: str
    description: str
    agent: str  # "none" | "pulsetrace" | "pulsetrace_off" | "otel": what /_bench/info must show
    launcher: list[str] = field(default_factory=list)  # executables put before gunicorn
    env: dict[str, str] = field(default_factory=dict)


def venv_bin(name: str) -> Optional[str]:
    """An executable of this interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def make_configs(receiver_port: Optional[int]) -> dict[str, Config]:
    """The configurations; without a receiver (``None``) exporters are off."""
    # The same exporter settings for every agent (the OpenTelemetry variables, which
    # pulsetrace reads too): an agent that exports pays for it in the worker, as in
    # production, and the receiver shows what each one sent.
    export_env = {
        "OTEL_SERVICE_NAME": "flask-overhead",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{receiver_port or 0}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    if receiver_port is None:
        export_env["OTEL_TRACES_EXPORTER"] = "none"
    return {
        "none": Config("none", "plain gunicorn, no agent", "none"),
        "none_threaded": Config(
            "none_threaded",
            "plain gunicorn, no agent, one idle thread in the worker (optional, not in a "
            "mode: what any second thread costs a single-threaded worker, before any agent)",
            "none",
            env={"BENCH_IDLE_THREAD": "1"},
        ),
        "pulsetrace": Config(
            "pulsetrace",
            "pulsetrace-run gunicorn, default settings (PULSETRACE_SAMPLE_RATE unset: 0.1)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            export_env,
        ),
        "pulsetrace_keep_all": Config(
            "pulsetrace_keep_all",
            "pulsetrace-run gunicorn, PULSETRACE_SAMPLE_RATE=1 (every trace kept)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "PULSETRACE_SAMPLE_RATE": "1"},
        ),
        "pulsetrace_disabled": Config(
            "pulsetrace_disabled",
            "pulsetrace-run gunicorn, APM_ENABLED=false (kill switch; optional, not in a mode)",
            "pulsetrace_off",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "APM_ENABLED": "false"},
        ),
        "pulsetrace_no_export": Config(
            "pulsetrace_no_export",
            "pulsetrace-run gunicorn, OTEL_TRACES_EXPORTER=none (tracing without an exporter; "
            "optional, not in a mode: splits the export's share out)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "OTEL_TRACES_EXPORTER": "none"},
        ),
        "pulsetrace_no_flask": Config(
            "pulsetrace_no_flask",
            "pulsetrace-run gunicorn, PULSETRACE_FLASK_ENABLED=false, no exporter (the agent "
            "loaded but no request traced; optional, not in a mode: splits the request "
            "path's share from the rest of the agent)",
            "pulsetrace",
            [str(venv_bin("pulsetrace-run"))],
            {**export_env, "OTEL_TRACES_EXPORTER": "none", "PULSETRACE_FLASK_ENABLED": "false"},
        ),
        "otel": Config(
            "otel",
            "opentelemetry-instrument gunicorn (distro: SDK, BatchSpanProcessor, OTLP/gRPC)",
            "otel",
            [str(venv_bin("opentelemetry-instrument"))],
            export_env,
        ),
    }
