"""The Flask application of the alerting end-to-end tests, run as
``pulsetrace-run python alert_app.py <port>`` or under ``pulsetrace-run
gunicorn -w 2 alert_app:app``: every setting comes from the environment;
the only pulsetrace call moves the alert manager's clock to a file the test
writes (``ALERT_TEST_CLOCK``), so that the escalation's 15, 30 and 60
minutes pass at once."""

import os
import sys

from flask import Flask

app = Flask(__name__)


@app.get("/orders")
def orders():
    return {"orders": []}


@app.get("/pay")
def pay():
    return {"error": "card declined"}, 500


class FileClock:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> float:
        with open(self.path) as f:
            return float(f.read())


if os.environ.get("ALERT_TEST_CLOCK"):  # this process's manager (a worker's own)
    from pulsetrace.monitoring import alerts

    alerts.manager().clock = FileClock(os.environ["ALERT_TEST_CLOCK"])

if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
