"""``pip install pulsetrace`` and nothing else, as a first-time user meets it:
the wheel built from this tree in a fresh virtual environment (only the
wheel and its declared dependencies, no OpenTelemetry package), an
application started with ``pulsetrace-run python app.py`` and no protocol
setting, its spans arriving at a real OTLP/gRPC receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_receivers import GrpcReceiver, start_grpc_receiver

ROOT = Path(__file__).resolve().parents[2]

APP = """
import sqlite3

db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
db.execute("INSERT INTO users VALUES (1, 'ada')")
print(db.execute("SELECT name FROM users WHERE id = 1").fetchone()[0])
"""


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    r = start_grpc_receiver()
    yield r
    r.stop()


def run(*cmd: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs
    )


def plain_venv(folder: Path) -> Path:
    """A fresh virtual environment with the wheel of this tree installed by
    pip (its declared dependencies from the package index); its bin folder."""
    wheels = folder / "wheel"
    maturin = Path(sys.executable).with_name("maturin")
    built = run(maturin, "build", "--release", "--quiet", "-o", wheels, cwd=ROOT)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("pulsetrace-*.whl")
    venv = folder / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    installed = run(bin_dir / "python", "-m", "pip", "install", "-q", wheel)
    assert installed.returncode == 0, installed.stderr
    return bin_dir


@pytest.mark.slow
def test_a_plain_install_exports_over_grpc_with_no_setting(grpc_receiver, tmp_path):
    bin_dir = plain_venv(tmp_path)
    packages = run(bin_dir / "python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(packages.stdout)}
    assert "pulsetrace" in names
    # The optional OpenTelemetry API is absent, as in a plain install.
    assert not {n for n in names if n.startswith("opentelemetry")}, names

    (tmp_path / "app.py").write_text(APP)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PULSETRACE_", "OTEL_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        OTEL_SERVICE_NAME="first-app",
        OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.endpoint,  # no protocol: the default
        PULSETRACE_SAMPLE_RATE="1",
    )
    r = run("pulsetrace-run", "python", "app.py", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ada\n"
    # Nothing to say: no internal error, no warning about a missing package.
    assert r.stderr == ""
    spans = grpc_receiver.wait_for_spans(3, timeout=10)
    assert len(spans) == 3, spans
    requests = grpc_receiver.requests()
    services = {
        a.value.string_value
        for req in requests
        for rs in req.resource_spans
        for a in rs.resource.attributes
        if a.key == "service.name"
    }
    assert services == {"first-app"}
    statements = sorted(
        a.value.string_value
        for req in requests
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        for a in s.attributes
        if a.key == "db.query.text"
    )
    assert len(statements) == 3 and statements[0].startswith("CREATE TABLE users"), statements
