"""The evaluator and escalation.

One process per application evaluates (elected by an exclusive
``fcntl.flock`` on ``<PULSETRACE_ALERT_DIR>/evaluator.lock``: the first
process to take it keeps it until it exits, then another worker takes
over), on a thread of its own, every ``PULSETRACE_ALERT_INTERVAL_MS``:
never on a request's path. Any process may acknowledge: the state is the
shared SQLite file (:mod:`.store`, whose module doc states how a step is
sent exactly once).

Escalation, per the alert's severity (``rules.RESPONSE_S``): step 0 at
once (Slack, the generic webhook, e-mail); then, once the severity's
response time has passed unacknowledged, step 1 after 15 minutes more
(PagerDuty, SMS), step 2 after 30 (phone), step 3 after 60 (managers'
e-mail). A critical alert's response time is 0: 15, 30, 60 minutes from
firing. Acknowledging stops it; resolution sends a resolved notice to the
channels that were notified; the rule firing again within its cooldown of
the last resolution is deduplicated (noted in the history, not sent).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any, Callable, Optional

from pulsetrace import _diag
from pulsetrace._suppress import suppressed
from pulsetrace.monitoring.alerts import rules as _rules
from pulsetrace.monitoring.alerts.channels import QUEUE_SIZE, Channel, Deliverer
from pulsetrace.monitoring.alerts.store import RESOLVED_STEP, TEST_STEP, Store
from pulsetrace.monitoring.alerts.windowed import View
from pulsetrace.monitoring.apm_windows import Windows
from pulsetrace.scrub import scrub_text

#: (minutes after the response time, channel types) per escalation step.
LADDER: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.0, ("slack", "webhook", "email")),
    (15.0, ("pagerduty", "sms")),
    (30.0, ("phone",)),
    (60.0, ("managers",)),
)
#: Samples kept per operation for windowed rates (at the default interval,
#: an hour).
HISTORY = 360
#: The gauge conditions read the process's resident memory from (bytes;
#: read at each evaluation unless the application sets it).
RSS_GAUGE = "process.rss_bytes"


def step_due(severity: str, step: int) -> float:
    """Seconds after firing at which ``step`` is due."""
    if step == 0:
        return 0.0
    return _rules.RESPONSE_S[severity] + LADDER[step][0] * 60.0


class Manager:
    """Rules, channels, the store and the evaluation cycle."""

    def __init__(
        self,
        store: Store,
        channels: dict[str, Channel],
        clock: Callable[[], float] = time.time,
        service: str = "unknown_service",
        link_base: Optional[str] = None,
        backoff_s: float = 1.0,
        windows: Optional[Windows] = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.store, self.clock, self.service, self.link_base = store, clock, service, link_base
        self.rules: dict[str, _rules.Rule] = {}
        self.gauges: dict[str, float] = {}
        self.health_fn: Callable[[], dict[str, bool]] = _health_now
        #: operation -> the id (hex) of an example kept trace of it, or None:
        #: the alert's message links to ``<link_base>/apm/traces/<id>``.
        self.example_trace: Optional[Callable[[str], Optional[str]]] = None
        #: Gauges from what pulsetrace records (the application's own,
        #: ``gauges``, take precedence): ``builtin.derived_gauges`` in an
        #: application.
        self.derive_gauges: Optional[Callable[[], dict[str, float]]] = None
        self.history: dict[str, deque[tuple[float, int, int, int]]] = {}
        #: The kept histogram copies that windowed conditions read (the
        #: monitoring server's, in an application); the evaluation takes
        #: copies itself when no thread does.
        self.windows = windows if windows is not None else Windows(clock=lambda: self.clock())
        self._last_snapshot_at: Optional[float] = None
        self.deliverer = Deliverer(channels, self._delivered, backoff_s, queue_size)
        self.cycles = 0
        self.last_cycle_cpu_s = 0.0
        self.last_cycle_at: Optional[float] = None
        self._lock = threading.Lock()
        self._recovered = False

    @property
    def channels(self) -> dict[str, Channel]:
        return self.deliverer.channels

    def add(self, rule: _rules.Rule) -> None:
        with self._lock:
            self.rules[rule.id] = rule

    # -- evaluation ------------------------------------------------------------

    def snapshot(self, now: float) -> _rules.Snapshot:
        # The whole application: under a pre-fork server, every worker's
        # histograms and counters merged (pulsetrace.monitoring.workers); a
        # single process's own.
        from pulsetrace.monitoring import workers

        ops = workers.latency()
        counters = workers.counters()
        # Each operation, every operation of its kind ("*server"), all ("*").
        per_name: dict[str, tuple[int, int, int]] = {}
        per_kind: dict[str, list[int]] = {}
        for op in ops:
            name, kind = op["name"], op["kind"]
            count, errors = op["count"], op["errors"]
            # 429 responses of the server spans (rate-limit violations).
            limited = op.get("rate_limited", 0) if kind == "server" else 0
            v = per_name.get(name)
            if v is None:
                per_name[name] = (count, errors, limited)
            else:
                per_name[name] = (v[0] + count, v[1] + errors, v[2] + limited)
            k = per_kind.get(kind)
            if k is None:
                per_kind[kind] = [count, errors, limited]
            else:
                k[0], k[1], k[2] = k[0] + count, k[1] + errors, k[2] + limited
        every = [0, 0, 0]
        for kind, (count, errors, limited) in per_kind.items():
            per_name["*" + kind] = (count, errors, limited)
            every = [every[0] + count, every[1] + errors, every[2] + limited]
        if ops:
            per_name["*"] = (every[0], every[1], every[2])
        for name, value in counters.items():
            per_name["counter:" + name] = (int(value), 0, 0)
        for name, (count, errors, limited) in per_name.items():
            h = self.history.get(name)
            if h is None:
                h = self.history[name] = deque(maxlen=HISTORY)
                # Not there at the last snapshot: nothing was counted then. At
                # the first one, what the histograms counted since the process
                # started is judged as one sample (failures before the first
                # evaluation are not lost).
                h.append((self._last_snapshot_at or now, 0, 0, 0))
            h.append((now, count, errors, limited))
        self._last_snapshot_at = now
        gauges = dict(self.gauges)
        if self.derive_gauges is not None:
            try:
                for gauge, level in self.derive_gauges().items():
                    gauges.setdefault(gauge, level)  # the application's own first
            except Exception as exc:
                _diag.internal_error("alert gauges", exc)
        if RSS_GAUGE not in gauges:
            rss = _rss_bytes()
            if rss is not None:
                gauges[RSS_GAUGE] = float(rss)
        ticked = False
        try:
            ticked = self.windows.tick_if_due()
        except Exception as exc:
            _diag.internal_error("alert windows", exc)
        view = View(self.windows, ticked)
        return _rules.Snapshot(
            now, ops, counters, gauges, self.health_fn, self.history, windows=view
        )

    def cycle(self) -> None:
        """One evaluation of every rule, then escalation. Never raises."""
        cpu = time.thread_time()
        with suppressed():
            try:
                if not self._recovered:
                    # The first cycle of a newly elected evaluator: the
                    # deliveries a dead one decided but did not finish.
                    self._recovered = True
                    for row in self.store.pending():
                        self._requeue(row)
                now = self.clock()
                snap = self.snapshot(now)
                for rule in list(self.rules.values()):
                    if rule.enabled:
                        self._judge(rule, snap, now)
                self.escalate(now)
            except Exception as exc:
                _diag.internal_error("alert evaluation", exc)
        self.cycles += 1
        self.last_cycle_cpu_s = time.thread_time() - cpu
        self.last_cycle_at = self.clock()

    def _judge(self, rule: _rules.Rule, snap: _rules.Snapshot, now: float) -> None:
        try:
            verdict = rule.evaluate(snap)
        except Exception as exc:
            if rule.broken is None:
                _diag.log.warning("pulsetrace: alert rule %s is broken: %r", rule.id, exc)
            rule.broken = f"{type(exc).__name__}: {exc}"[:300]
            return
        rule.broken, rule.last_verdict = None, verdict
        if not verdict.known:
            return
        if not verdict.active:
            rule.active_since = None
            alert = self.store.open_alert(rule.id)
            if alert is not None:
                self.resolve(alert, now)
            return
        if rule.active_since is None:
            rule.active_since = now
        if now - rule.active_since >= rule.for_s:
            self.fire(rule, verdict, now)

    def fire(self, rule: _rules.Rule, verdict: _rules.Verdict, now: float) -> Optional[str]:
        """Open an alert for ``rule`` (None: one is open, or deduplicated)."""
        if self.store.open_alert(rule.id) is not None:
            return None
        last = self.store.last_resolved_at(rule.id)
        if last is not None and now - last < rule.cooldown:
            return None
        alert_id = f"{rule.id}-{int(now)}-{uuid.uuid4().hex[:6]}"
        trace_id = verdict.trace_id or self._example(verdict.operation)
        alert = {
            "id": alert_id,
            "rule_id": rule.id,
            "name": rule.name,
            "severity": rule.severity,
            "state": "firing",
            "message": message(rule, verdict),
            "value": verdict.value,
            "threshold": verdict.threshold,
            "operation": verdict.operation,
            "trace_id": trace_id,
            "fired_at": now,
        }
        if not self.store.fire(alert):
            return None
        self.escalate(now)
        return alert_id

    def escalate(self, now: float) -> None:
        """Decide and send every step now due of every firing alert."""
        for alert in self.store.firing():
            rule = self.rules.get(alert["rule_id"])
            for step in range(alert["step"] + 1, len(LADDER)):
                if now - alert["fired_at"] < step_due(alert["severity"], step):
                    break
                chans = self._step_channels(rule, step)
                if not self.store.advance(alert["id"], step, chans, now):
                    break  # acknowledged, resolved, or decided by another process
                if not alert["trace_id"]:  # kept traces reach the store after a moment
                    alert["trace_id"] = self._example(alert["operation"])
                    if alert["trace_id"]:
                        self.store.set_trace(alert["id"], alert["trace_id"])
                for ch in chans:
                    self._send(alert, step, ch)

    def _example(self, operation: Optional[str]) -> Optional[str]:
        if not operation or self.example_trace is None:
            return None
        try:
            return self.example_trace(operation)
        except Exception as exc:
            _diag.internal_error("alert example trace", exc)
            return None

    def _step_channels(self, rule: Optional[_rules.Rule], step: int) -> list[str]:
        wanted = LADDER[step][1]
        allowed = set(rule.channels) if rule is not None and rule.channels else None
        return [c for c in wanted if c in self.channels and (allowed is None or c in allowed)]

    def resolve(self, alert: dict[str, Any], now: float) -> None:
        sent = sorted(
            {d["channel"] for d in self.store.deliveries(alert["id"]) if d["step"] < RESOLVED_STEP}
        )
        if self.store.resolve(alert["id"], now, sent):
            resolved = self.store.get(alert["id"]) or alert
            for ch in sent:
                self._send(resolved, RESOLVED_STEP, ch)

    def acknowledge(self, alert_id: str, by: str) -> Optional[dict[str, Any]]:
        return self.store.acknowledge(alert_id, by, self.clock())

    # -- delivery --------------------------------------------------------------

    def _send(self, alert: dict[str, Any], step: int, channel: str) -> None:
        item = {"alert_id": alert["id"], "step": step, "channel": channel}
        item["notice"] = self.notice(alert, step, channel)
        self.deliverer.submit(item)

    def _requeue(self, row: dict[str, Any]) -> None:
        alert = self.store.get(row["alert_id"])
        if alert is not None and row["step"] != TEST_STEP:
            self._send(alert, row["step"], row["channel"])

    def _delivered(self, item: dict[str, Any], ok: bool, attempts: int, err: Optional[str]) -> None:
        self.store.delivered(item["alert_id"], item["step"], item["channel"], ok, attempts, err)

    def notice(self, alert: dict[str, Any], step: int, channel: str) -> dict[str, Any]:
        kind = {RESOLVED_STEP: "resolved", TEST_STEP: "test"}.get(step, "firing")
        trace_url = None
        if alert.get("trace_id") and self.link_base:
            trace_url = f"{self.link_base}/apm/traces/{alert['trace_id']}"
        head = {"resolved": "RESOLVED", "test": "TEST"}.get(kind, alert["severity"].upper())
        text = f"[{head}] {alert['name']}: {alert['message']}"
        if trace_url:
            text += f" (example trace: {trace_url})"
        rule = self.rules.get(alert["rule_id"])
        # An operation's name, and so a message, can carry personal data.
        text, operation = scrub_text(text), alert.get("operation")
        if isinstance(operation, str):
            operation = scrub_text(operation)
        return {
            "kind": kind,
            "alert_id": alert["id"],
            "rule_id": alert["rule_id"],
            "delivery": f"{alert['id']}:{step}:{channel}",
            "step": step,
            "severity": alert["severity"],
            "team": rule.team if rule is not None else None,
            "service": self.service,
            "subject": f"[{head}] {alert['name']} ({self.service})",
            "text": text,
            "operation": operation,
            "value": alert.get("value"),
            "threshold": alert.get("threshold"),
            "trace_url": trace_url,
            "fired_at": alert["fired_at"],
        }


def message(rule: _rules.Rule, v: _rules.Verdict) -> str:
    """The operation, the figure against its threshold."""
    parts = [rule.description or rule.name]
    if v.operation:
        parts.append(f"operation {v.operation}")
    if v.value is not None:
        figure = f"{v.value:.4g}"
        if v.threshold is not None:
            figure += f" against a threshold of {v.threshold:.4g}"
        parts.append(figure)
    if v.detail:
        parts.append(v.detail)
    return "; ".join(parts)


def _rss_bytes() -> Optional[int]:
    from pulsetrace.monitoring.checks import rss_bytes

    return rss_bytes()


def _health_now() -> dict[str, bool]:
    from pulsetrace.monitoring import health as _health

    return {r.name: r.ok for r in _health.REGISTRY.run()}


class Election:
    """The evaluating process: whoever holds the exclusive lock on ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._pid = os.getpid()
        _ELECTIONS.add(self)

    def _forked(self) -> None:
        """In a forked child: the parent's lock is not this process's."""
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor keeps its lock
        self._fd, self._pid = None, os.getpid()

    def leader(self) -> bool:
        if self._pid != os.getpid():  # forked without the hook below
            self._forked()
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True


_ELECTIONS: weakref.WeakSet[Election] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A worker forked from the evaluating process must not keep the lock's
    # descriptor open: the lock would outlive the process that held it.
    for election in list(_ELECTIONS):
        election._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
