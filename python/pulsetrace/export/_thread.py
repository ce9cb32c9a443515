"""The one export thread (see :mod:`pulsetrace._runtime`, which starts it
with the configuration in use and stops it, and :mod:`pulsetrace.export`)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from pulsetrace import _diag
from pulsetrace._native import Tracer

#: Hands kept traces to the exporters: ``(max_spans, batches)`` -> spans
#: handed over (every batch when ``batches`` is None).
HandOver = Callable[[int, Optional[int]], int]


class ExportThread(threading.Thread):
    """The one export thread: sleeps in the core, without the GIL, until a
    batch is ready (``batch_spans`` spans, or the oldest kept trace waited
    ``interval_s``, PULSETRACE_EXPORT_INTERVAL_MS), a flush asks for
    everything or it is stopped, then hands the kept traces to the
    exporters (``hand_over(max_spans, batches)``, the runtime's
    ``export_pending``). Nothing polls: with no trace kept it does not run
    at all."""

    def __init__(
        self, tracer: Tracer, interval_s: float, batch_spans: int, hand_over: HandOver
    ) -> None:
        super().__init__(name="pulsetrace-export", daemon=True)
        self.tracer = tracer
        self.interval_s = interval_s
        self.batch_spans = batch_spans
        self._hand_over = hand_over
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
        try:
            self._run()
        finally:
            with self._flushes:  # a flush waiting for this thread hands over itself
                self.stopping = True
                self._flushes.notify_all()

    def _run(self) -> None:
        while not self.stopping:
            try:
                wake = self.tracer.wait_export(self.interval_s, self.batch_spans)
            except Exception as exc:
                _diag.internal_error("export.wait", exc)
                return
            if self.stopping or wake == "stopped":
                return  # stopped, or the core was replaced (a new thread follows)
            with self._flushes:
                asked = self._asked
            if asked > self._done:
                # A flush: everything queued now, then it is told.
                self._hand_over(self.batch_spans, None)
                with self._flushes:
                    self._done = asked
                    self._flushes.notify_all()
                continue
            # One batch per wake-up: what is left waits until it is a batch
            # too, or its own delay ran out (so a burst makes few requests).
            if self._hand_over(self.batch_spans, 1) == 0 and wake == "ready":
                # Traces wait but none could be taken (an error, logged):
                # pause rather than spin on them.
                self._pause.wait(self.interval_s)
