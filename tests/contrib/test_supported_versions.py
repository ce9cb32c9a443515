"""``SUPPORTED`` is enforced: an installed library whose version is outside
its integration's range is left unpatched, with one warning naming the
library, its version and the supported range, and counted. Each case runs
in a fresh interpreter; the out-of-range version is a real one as
``importlib.metadata`` reports it (a dist-info placed first on the path,
next to the real installed package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from pulsetrace.contrib import INTEGRATIONS, _patcher

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    logging.getLogger("pulsetrace").addHandler(Keep())
    import pulsetrace
    from pulsetrace import contrib
    config = pulsetrace.configure()
    out = {}
    if sys.argv[1] == "after_import":
        import requests
    out["chosen"] = contrib.instrument(config, ["requests"])
    import requests
    from pulsetrace.contrib import requests as hook
    out["patch"] = hook.patch()  # a direct call is refused alike, without a second warning
    out["wrapped"] = hasattr(vars(requests.Session)["send"], "__wrapped__")
    out["instrumented"] = contrib.instrumented()
    out["unsupported"] = contrib.unsupported()
    out["counter"] = pulsetrace.counters()["integrations_unsupported"]
    out["warnings"] = [m for m in records if "requests" in m]
    print(json.dumps(out))
    """
)


def run(site: Path, scenario: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PULSETRACE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["OTEL_TRACES_EXPORTER"] = "none"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, scenario], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fake_version(tmp_path: Path, dist: str, version: str) -> Path:
    """A site folder whose ``dist`` metadata says ``version`` (found first)."""
    info = tmp_path / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return tmp_path


@pytest.mark.parametrize("scenario", ["before_import", "after_import"])
def test_an_unsupported_version_is_left_unpatched_with_one_warning(tmp_path, scenario):
    site = fake_version(tmp_path, "requests", "1.2.3")
    out = run(site, scenario)
    assert out["chosen"] == ["requests"]  # enabled, but refused for its version
    assert out["patch"] is False
    assert not out["wrapped"]
    assert out["instrumented"] == []
    assert out["unsupported"] == {"requests": "1.2.3"}
    assert out["counter"] == 1
    assert out["warnings"] == [
        "pulsetrace: requests 1.2.3 is not supported (supported: >=2.0,<3); "
        "it is left uninstrumented"
    ]


def test_a_supported_version_is_patched_without_a_warning(tmp_path):
    site = fake_version(tmp_path, "requests", "2.99.0rc1")  # a pre-release in range
    out = run(site, "before_import")
    assert out["patch"] is True
    assert out["wrapped"]
    assert out["instrumented"] == ["requests"]
    assert out["unsupported"] == {}
    assert out["counter"] == 0
    assert out["warnings"] == []


def test_every_installed_library_is_in_its_declared_range():
    """The versions this suite runs against are ones the integrations claim."""
    from packaging.specifiers import SpecifierSet

    for integration in (i for i in INTEGRATIONS if i.wraps):
        patcher = __import__(integration.hook, fromlist=["_PATCHER"])._PATCHER
        assert patcher.supported is None or SpecifierSet(patcher.supported), integration.name
        version = _patcher.installed_version(patcher.distributions)
        if patcher.supported is None:
            assert version is None, f"{integration.name} is the standard library"
            continue
        assert version is not None, f"{integration.name}: no distribution found"
        assert SpecifierSet(patcher.supported).contains(version), (integration.name, version)


def test_unknown_or_unparsable_versions_get_the_benefit_of_the_doubt(tmp_path, monkeypatch):
    assert _patcher.version_supported("x", ">=1", ("no-such-distribution-here",))
    site = fake_version(tmp_path, "oddball", "not.a.version")
    monkeypatch.syspath_prepend(str(site))
    metadata_version = metadata.version("oddball")
    assert metadata_version == "not.a.version"
    assert _patcher.version_supported("oddball", ">=1", ("oddball",))
    assert _patcher.unsupported() == {}
