"""The Flask application of the pre-fork traces test, run as
``pulsetrace-run gunicorn -w 4 traces_app:app``: every setting comes from
the environment. Every response names the worker that served it and the
request's trace (``X-Pid``, ``X-Trace-Id``). ``/work`` records two nested
spans under the request's; ``/fail`` and ``/refuse`` raise (two error
groups); ``/order/<campaign>/<status>`` records custom and business
metrics (a counter, a histogram, a gauge set to 1 in every worker that
served one, and a message of the campaign); ``/ping`` tells that the
application is up. With
``ALERT_TEST_CLOCK`` the worker's alert manager reads its clock from that
file (the escalation's minutes pass at once)."""

import os
import time

import file_clock
from flask import Flask

import pulsetrace
from pulsetrace import metrics

app = Flask(__name__)
ORDERS = metrics.create_custom_counter("orders", "orders taken", ["kind"])
VALUES = metrics.create_custom_histogram("order_value", "an order's value", ["kind"])
SERVING = metrics.create_custom_gauge("serving_workers", "workers that served an order")


@app.after_request
def ids(response):
    response.headers["X-Pid"] = str(os.getpid())
    span = pulsetrace.current_span()
    if span is not None:
        response.headers["X-Trace-Id"] = f"{span.trace_id:032x}"
    return response


@app.get("/work")
def work():
    time.sleep(0.02)  # concurrent requests spread over workers
    with pulsetrace.start_span("load"):
        with pulsetrace.start_span("query"):
            pass
    return {"pid": os.getpid()}


@app.get("/fail")
def fail():
    time.sleep(0.02)
    raise KeyError("card")


@app.get("/refuse")
def refuse():
    time.sleep(0.02)
    raise ValueError("refused")


@app.get("/order/<campaign>/<status>")
def order(campaign, status):
    time.sleep(0.02)
    ORDERS.inc(kind="web")
    VALUES.observe(len(campaign) + (2.5 if status == "delivered" else 0.5), kind="web")
    SERVING.set(1)
    metrics.record_message(status, "sms", campaign_id=campaign)
    return {"pid": os.getpid()}


@app.get("/ping")
def ping():
    return {"pid": os.getpid()}


file_clock.install_from_env()  # this process's manager (a worker's own)
