"""The one export thread (see :mod:`pulsetrace._runtime`, which starts it
with the configuration in use and stops it, and :mod:`pulsetrace.export`)."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from pulsetrace import _diag
from pulsetrace._native import Tracer

#: Hands kept traces to the exporters: ``(max_spans, batches)`` -> spans
#: handed over (every batch when ``batches`` is None).
HandOver = Callable[[int, Optional[int]], int]

#: Has the exporters whose timed wake has come retry, and returns the next
#: one asked for (a :func:`time.monotonic` value), or None.
RetryDue = Callable[[], Optional[float]]

#: Shortest sleep before a timed wake: an exporter that asks for a wake in
#: the past again and again costs a wake-up every this many seconds, not a
#: spinning thread.
MIN_WAKE_S = 0.01

#: The export thread running in this process, if any (for :func:`wake`).
_running: Optional[ExportThread] = None


def _forget_running() -> None:
    global _running
    _running = None  # a forked child: the parent's thread is not here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_running)


def wake() -> None:
    """Have the export thread look at the exporters' ``next_wake`` again now
    (an exporter's request ended off that thread, and it has more to send
    or a retry to time). Does nothing when no export thread runs; never
    raises."""
    thread = _running
    if thread is None or thread.stopping:
        return
    try:
        thread.tracer.kick_export()
    except Exception as exc:
        _diag.internal_error("export.kick", exc)


class ExportThread(threading.Thread):
    """The one export thread: sleeps in the core, without the GIL, until a
    batch is ready (``batch_spans`` spans, or the oldest kept trace waited
    ``interval_s``, PULSETRACE_EXPORT_INTERVAL_MS), a flush asks for
    everything or it is stopped, then hands the kept traces to the
    exporters (``hand_over(max_spans, batches)``, the runtime's
    ``export_pending``). An exporter that keeps a failed request for
    later asks for a timed wake (``retry_due``, the exporters'
    ``next_wake``/``retry``): the sleep ends then too, whether or not a
    trace came. Nothing polls: with no trace kept and no retry asked for
    it does not run at all. An exporter that sends without waiting for
    the answer has the thread look at ``next_wake`` again when a request
    ends (:func:`wake`)."""

    def __init__(
        self,
        tracer: Tracer,
        interval_s: float,
        batch_spans: int,
        hand_over: HandOver,
        retry_due: Optional[RetryDue] = None,
    ) -> None:
        super().__init__(name="pulsetrace-export", daemon=True)
        self.tracer = tracer
        self.interval_s = interval_s
        self.batch_spans = batch_spans
        self._hand_over = hand_over
        self._retry_due = retry_due
        self.stopping = False
        self._pause = threading.Event()
        # Flushes asked for and done: a flush waits until ``_done`` reaches
        # the number it was given.
        self._flushes = threading.Condition(threading.Lock())
        self._asked = 0
        self._done = 0

    def flush(self, timeout: float) -> Optional[bool]:
        """Have this thread hand everything queued now to the exporters and
        wait for it: True once done, False if ``timeout`` passed first, None
        if the thread stopped before (the caller hands it over itself)."""
        with self._flushes:
            self._asked += 1
            ticket = self._asked
        try:
            self.tracer.kick_export()
        except Exception as exc:
            _diag.internal_error("export.kick", exc)
            return None
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._flushes:
            while self._done < ticket:
                remaining = deadline - time.monotonic()
                if not self.is_alive() or self.stopping:
                    return None
                if remaining <= 0:
                    return False
                # Woken when a flush is done, or the thread stops.
                self._flushes.wait(remaining)
        return True

    def stop(self) -> None:
        self.stopping = True
        self._pause.set()
        with self._flushes:
            self._flushes.notify_all()
        try:
            self.tracer.kick_export()
        except Exception as exc:
            _diag.internal_error("export.kick", exc)

    def run(self) -> None:
        global _running
        _running = self
        try:
            self._run()
        finally:
            if _running is self:
                _running = None
            with self._flushes:  # a flush waiting for this thread hands over itself
                self.stopping = True
                self._flushes.notify_all()

    def _next_wake(self) -> Optional[float]:
        """Retries that are due, then the seconds until the next one asked
        for (None: sleep until a batch, a flush or a stop)."""
        if self._retry_due is None:
            return None
        try:
            at = self._retry_due()
        except Exception as exc:
            _diag.internal_error("export.retry", exc)
            return None
        return None if at is None else max(at - time.monotonic(), MIN_WAKE_S)

    def _run(self) -> None:
        # A retry asked for before this thread started (it replaced one:
        # a new exporter, a new configuration) is not forgotten.
        timeout = self._next_wake()
        while not self.stopping:
            try:
                wake = self.tracer.wait_export(self.interval_s, self.batch_spans, timeout)
            except Exception as exc:
                _diag.internal_error("export.wait", exc)
                return
            if self.stopping or wake == "stopped":
                return  # stopped, or the core was replaced (a new thread follows)
            self._hand_over_for(wake)
            timeout = self._next_wake()

    def _hand_over_for(self, wake: str) -> None:
        if wake == "timeout":
            return  # an exporter's timed wake only: its retry follows
        with self._flushes:
            asked = self._asked
        if wake == "kicked" and asked <= self._done:
            return  # woken to look at the exporters' next_wake (wake()): it follows
        if asked > self._done:
            # A flush: everything queued now, then it is told.
            self._hand_over(self.batch_spans, None)
            with self._flushes:
                self._done = asked
                self._flushes.notify_all()
            return
        # One batch per wake-up: what is left waits until it is a batch
        # too, or its own delay ran out (so a burst makes few requests).
        if self._hand_over(self.batch_spans, 1) == 0 and wake == "ready":
            # Traces wait but none could be taken (an error, logged):
            # pause rather than spin on them.
            self._pause.wait(self.interval_s)
