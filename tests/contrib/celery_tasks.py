"""The Celery application of test_messaging_celery.py: the worker process
runs it (``celery -A celery_tasks worker``, after ``import pulsetrace.auto``),
the test process sends its tasks. The broker comes from ``CELERY_BROKER``."""

from __future__ import annotations

import os

from celery import Celery

import pulsetrace

app = Celery("shop", broker=os.environ.get("CELERY_BROKER", "memory://"))
app.conf.update(
    task_default_queue="shop-tasks",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def add(x: int, y: int) -> int:
    with pulsetrace.start_span("sum"):
        return x + y


@app.task(bind=True, max_retries=3)
def flaky(self) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=ConnectionError("warehouse busy"))
    return "ok"


@app.task
def noop() -> None:
    return None


@app.task
def broken() -> None:
    raise ValueError("no such order")
