"""One process of a pre-fork application, for the merge tests of custom
and business metrics: runs the Python code it is given on stdin (with
``metrics`` = ``pulsetrace.metrics`` and ``time`` in scope), then prints
``{"custom": metrics_custom.state(), "business": metrics_business.state()}``
as JSON on stdout, with ``child``: what the code set it to (the states a
forked child printed, say)."""

from __future__ import annotations

import json
import sys
import time

import pulsetrace.metrics as metrics
from pulsetrace.monitoring import metrics_business, metrics_custom

scope = {"metrics": metrics, "time": time, "child": None}
exec(sys.stdin.read(), scope)
out = {"custom": metrics_custom.state(), "business": metrics_business.state()}
json.dump(dict(out, child=scope["child"]), sys.stdout)
