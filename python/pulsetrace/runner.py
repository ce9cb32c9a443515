"""``pulsetrace-run <command> [args...]``: run a command with pulsetrace
switched on, without changing its code (``pulsetrace-run gunicorn app:app``,
``pulsetrace-run python app.py``, ``pulsetrace-run uvicorn app:app``).

It puts pulsetrace's ``sitecustomize`` first on ``PYTHONPATH`` (which chains
to the application's own) and replaces itself with the command, so signals,
exit status and the process id are the command's own.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

USAGE = """usage: pulsetrace-run <command> [args...]

Runs <command> with pulsetrace instrumenting every Python process it starts.
Settings come from the environment (see the README), for example:
    PULSETRACE_SAMPLE_RATE=1 OTEL_SERVICE_NAME=api pulsetrace-run gunicorn app:app
"""


def bootstrap_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        return 0 if args else 2
    command = args[0]
    path = shutil.which(command)
    if path is None:
        sys.stderr.write(f"pulsetrace-run: {command}: command not found\n")
        return 127
    env = dict(os.environ)
    current = env.get("PYTHONPATH", "")
    boot = bootstrap_dir()
    parts = [p for p in current.split(os.pathsep) if p and p != boot]
    env["PYTHONPATH"] = os.pathsep.join([boot, *parts])
    try:
        os.execve(path, args, env)
    except OSError as exc:
        sys.stderr.write(f"pulsetrace-run: {command}: {exc.strerror}\n")
        return 126
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    raise SystemExit(main())
