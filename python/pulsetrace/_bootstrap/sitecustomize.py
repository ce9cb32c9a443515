"""Loaded by Python at start-up when ``pulsetrace-run`` put this folder on
PYTHONPATH: runs the application's own ``sitecustomize`` (if any, further
along the path), then ``import pulsetrace.auto``."""

import os
import sys


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _chain()
finally:
    try:
        import pulsetrace.auto  # noqa: F401
    except Exception as exc:
        sys.stderr.write(f"pulsetrace: not started: {exc!r}\n")
