#!/usr/bin/env python3
"""Write ``rust/py/hot_symbols.txt``: the native functions a request runs,
which the linker places next to each other in the extension
(``rust/py/build.rs``).

A request runs about a hundred of the extension's functions once each, with
cold caches on a busy server: spread over the library they touch about 60
pages of code, placed together under 20, which costs fewer instruction-TLB
misses and lets the hardware prefetch the next lines.

The list is what callgrind sees the request thread execute in
``benchmarks/gate/harness.py`` (a span, a Flask ``/json`` request, the
``/sqlite_connect`` route), hottest first, as mangled symbol names. Those
names carry a hash of the crate's build (toolchain, dependencies, profile):
after changing any of these, run this again and commit the file
(``benchmarks/gate/run.py`` says how many listed symbols the built
extension still has).

    python scripts/hot_symbols.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE = ROOT / "benchmarks" / "gate"
OUT = ROOT / "rust" / "py" / "hot_symbols.txt"
HEADER = (
    "# The extension's functions a request runs, hottest first (written by\n"
    "# scripts/hot_symbols.py; build.rs hands the list to the linker).\n"
)


def executed(dump: Path) -> dict[str, int]:
    """Self instructions per function of the extension in one callgrind dump."""
    cost: dict[str, int] = defaultdict(int)
    names: dict[str, str] = {}
    obj = fn = None
    in_ext = False
    skip = False
    for line in dump.read_text(errors="replace").splitlines():
        m = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, ident, name = m.groups()
            if kind in ("ob", "fn"):
                key = f"{kind}{ident}"
                if name:
                    names[key] = name
                if kind == "ob":
                    obj = names.get(key)
                    in_ext = obj is not None and "_native" in obj
                else:
                    fn = names.get(key)
            elif name:  # cfn/cob define names too
                names[f"{kind[1:]}{ident}"] = name
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if not line or not (line[0].isdigit() or line[0] in "+-*"):
            continue
        if skip:
            skip = False
            continue
        if in_ext and fn:
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                cost[fn.split("'")[0]] += int(parts[1])
    return cost


def main() -> int:
    sys.path.insert(0, str(GATE))
    import run as gate  # the gate's harness, environment and callgrind options

    batches = {"span": 200, "flask_on": 20, "flask_off": 1, "sqlite_on": 20, "sqlite_off": 1}
    env = gate.environment()
    with tempfile.TemporaryDirectory(prefix="pulsetrace-hot-") as tmp:
        argv = gate.harness_argv(Path(tmp) / "callgrind", batches, 1, "--demangle=no")
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return 1
        total: dict[str, int] = defaultdict(int)
        for dump in Path(tmp).glob("callgrind.*-01"):  # the thread that runs the requests
            for name, ir in executed(dump).items():
                total[name] += ir
    hot = sorted(total, key=lambda n: -total[n])
    OUT.write_text(HEADER + "".join(f"{n}\n" for n in hot))
    print(f"{OUT.relative_to(ROOT)}: {len(hot)} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
