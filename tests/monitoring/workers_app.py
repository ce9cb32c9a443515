"""The Flask application of the pre-fork workers test, run as
``pulsetrace-run gunicorn -w 4 workers_app:app``: every setting comes from
the environment. ``/work`` answers with the pid of the worker that served
it, after a short pause so that concurrent requests spread over workers;
``/ping`` tells that the application is up."""

import os
import time

from flask import Flask

app = Flask(__name__)


@app.get("/work")
def work():
    time.sleep(0.02)
    return {"pid": os.getpid()}


@app.get("/ping")
def ping():
    return {"pid": os.getpid()}
