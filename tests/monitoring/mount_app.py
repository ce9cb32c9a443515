"""A Flask application with the monitoring endpoints mounted, served by
gunicorn in tests/monitoring/test_mount.py."""

import flask

import pulsetrace.auto  # noqa: F401  (the hooks, as pulsetrace-run would)
from pulsetrace.monitoring.mount import mount_flask

app = flask.Flask(__name__)


@app.route("/hello")
def hello() -> str:
    return "hello"


mount_flask(app)
