"""A pre-fork program for the takeover test, run as ``python
workers_fork_app.py <n>``: the parent starts the application's monitoring
server (``PULSETRACE_METRICS_ADDR``, from the environment) and forks two
workers that each record ``n`` SERVER spans named ``job``, then wait to be
killed; the parent records nothing."""

import os
import sys
import time

import pulsetrace
from pulsetrace import prometheus

assert prometheus.start_server(pulsetrace.get_config().metrics_addr) is not None
n = int(sys.argv[1])
for _ in range(2):
    if os.fork() == 0:
        for _ in range(n):
            with pulsetrace.start_span("job", kind="server"):
                pass
        while True:
            time.sleep(1)
while True:
    time.sleep(1)
