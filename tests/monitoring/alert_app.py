"""The Flask application of the alerting end-to-end tests, run as
``pulsetrace-run python alert_app.py <port>`` or under ``pulsetrace-run
gunicorn -w 2 alert_app:app``: every setting comes from the environment;
the only pulsetrace call moves the alert manager's clock to a file the test
writes (``ALERT_TEST_CLOCK``), so that the escalation's 15, 30 and 60
minutes pass at once."""

import sys

import file_clock
from flask import Flask

app = Flask(__name__)


@app.get("/orders")
def orders():
    return {"orders": []}


@app.get("/pay")
def pay():
    return {"error": "card declined"}, 500


file_clock.install_from_env()  # this process's manager (a worker's own)

if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
