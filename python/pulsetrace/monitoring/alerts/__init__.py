"""Alerting: rules over the live histograms, counters, gauges and health
checks; channels (Slack, a signed webhook, e-mail, PagerDuty, SMS and phone
webhooks); escalation; state in SQLite that survives restarts.

- :mod:`.rules`: rules and conditions (code, or declarative thresholds);
- :mod:`.windowed`: the histograms over a window, for conditions;
- :mod:`.builtin`, :mod:`.conditions`: the built-in rules;
- :mod:`.engine`: the elected evaluator and the escalation ladder;
- :mod:`.store`: the state, and how a step is sent exactly once;
- :mod:`.channels`: channels and background delivery;
- :mod:`.api`: the ``/monitoring/*`` endpoints.

``pulsetrace.monitoring.add_alert_rule(...)`` adds a rule to this process's
manager, created on first use from the configuration.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from typing import Any, Callable, Optional, Union

from pulsetrace import _diag
from pulsetrace.config import Config
from pulsetrace.monitoring.alerts import rules as _rules
from pulsetrace.monitoring.alerts.channels import Channel, Email, PagerDuty, Slack, Webhook
from pulsetrace.monitoring.alerts.engine import Election, Manager
from pulsetrace.monitoring.alerts.rules import Rule, Snapshot, Threshold, Verdict
from pulsetrace.monitoring.alerts.store import Store

__all__ = [
    "Rule",
    "Snapshot",
    "Threshold",
    "Verdict",
    "add_alert_rule",
    "add_builtin_rules",
    "manager",
    "set_gauge",
    "start",
]

_lock = threading.Lock()
_manager: Optional[Manager] = None
_thread: Optional[threading.Thread] = None
_stop = threading.Event()


def alert_dir(cfg: Config) -> str:
    """Where the state and the election lock live."""
    return cfg.alert_dir or os.path.join(
        tempfile.gettempdir(), f"pulsetrace-alerts-{cfg.service_name}"
    )


def recipients(cfg: Config) -> Callable[[dict[str, Any]], list[str]]:
    """A notice's e-mail recipients: its severity's team, plus its rule's
    team (security, dba)."""
    by_severity = {
        "critical": cfg.critical_alert_emails,
        "high": cfg.high_alert_emails,
        "medium": cfg.high_alert_emails,
        "warning": cfg.high_alert_emails,
        "business": cfg.business_team_emails,
    }
    by_team = {"security": cfg.security_team_emails, "dba": cfg.dba_team_emails}

    def pick(notice: dict[str, Any]) -> list[str]:
        out = list(by_severity.get(notice["severity"], ()))
        out += [a for a in by_team.get(notice.get("team") or "", ()) if a not in out]
        return out

    return pick


def channels_from(cfg: Config) -> dict[str, Channel]:
    """The channels the configuration sets up, by type."""
    out: dict[str, Channel] = {}
    secret = cfg.alert_webhook_secret
    if cfg.slack_webhook_url:
        out["slack"] = Slack(cfg.slack_webhook_url)
    if cfg.alert_webhook_url:
        out["webhook"] = Webhook("webhook", cfg.alert_webhook_url, secret)
    if cfg.sms_webhook_url:
        out["sms"] = Webhook("sms", cfg.sms_webhook_url, secret)
    if cfg.phone_webhook_url:
        out["phone"] = Webhook("phone", cfg.phone_webhook_url, secret)
    if cfg.pagerduty_routing_key:
        out["pagerduty"] = PagerDuty(cfg.pagerduty_routing_key, cfg.pagerduty_url)
    if cfg.smtp_host and cfg.alert_from_email:
        context = ssl.create_default_context(cafile=cfg.smtp_certificate)

        def email(kind: str, to: Callable[[dict[str, Any]], list[str]]) -> Email:
            return Email(
                cfg.smtp_host or "",
                cfg.smtp_port,
                cfg.alert_from_email or "",
                to,
                cfg.smtp_username,
                cfg.smtp_password,
                context,
                type=kind,
            )

        out["email"] = email("email", recipients(cfg))
        if cfg.manager_emails:
            managers = list(cfg.manager_emails)
            out["managers"] = email("managers", lambda _notice: managers)
    return out


def manager() -> Manager:
    """This process's alert manager (created from the configuration, with
    the rules of ``PULSETRACE_ALERT_RULES``, on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            from pulsetrace import _runtime
            from pulsetrace.monitoring import apm

            cfg = _runtime.config()
            directory = alert_dir(cfg)
            m = Manager(
                Store(os.path.join(directory, "alerts.db")),
                channels_from(cfg),
                service=cfg.service_name,
                link_base=f"http://{cfg.metrics_addr}",
                # The monitoring server's copies (/apm/transactions'): one set.
                windows=apm.WINDOWS,
            )
            m.example_trace = example_trace
            from pulsetrace.monitoring.alerts.builtin import derived_gauges

            m.derive_gauges = derived_gauges
            if cfg.alert_rules:
                try:
                    for rule in _rules.load(cfg.alert_rules):
                        m.add(rule)
                except (OSError, ValueError) as exc:
                    _diag.log.warning("pulsetrace: PULSETRACE_ALERT_RULES: %s", exc)
            _manager = m
        return _manager


def example_trace(operation: str) -> Optional[str]:
    """The id of a kept trace of ``operation`` the monitoring server holds
    (``/apm/traces/{id}``): a failed one first; None when none is held."""
    from pulsetrace.monitoring import apm

    # Every worker's under a pre-fork server (the id resolves at the server).
    found = apm.find_traces(operation=operation, error=True, limit=1)
    found = found or apm.find_traces(operation=operation, limit=1)
    return str(found[0]["trace_id"]) if found else None


def add_alert_rule(
    id: str,
    name: str,
    condition: Union[Threshold, Callable[..., Any], dict[str, Any]],
    severity: str = "high",
    description: str = "",
    cooldown: Union[int, float, str] = "10m",
    channels: Any = (),
    enabled: bool = True,
    team: Optional[str] = None,
    for_: Union[int, float, str] = 0,
) -> Rule:
    """Add (or replace) an alert rule; ValueError naming a bad field.

    ``condition``: a callable over a :class:`Snapshot` (or ``(operations,
    health)``) returning a bool or a :class:`Verdict`, a :class:`Threshold`,
    or a threshold's fields as a dict. ``cooldown`` and ``for_``: seconds
    or ``"10m"``. ``channels``: channel types (``slack``, ``webhook``,
    ``email``, ``pagerduty``, ``sms``, ``phone``, ``managers``) or the
    ``{type, config, enabled}`` shape (``config`` is ignored: channels are
    configured once, from the environment); empty means every one
    configured."""
    rule = _rules.make_rule(
        id, name, condition, severity, description, cooldown, channels, enabled, team, for_
    )
    manager().add(rule)
    if _wanted:
        start()
    return rule


def add_builtin_rules(**thresholds: Any) -> list[Rule]:
    """Add the built-in rules (:func:`.builtin.builtin_rules`: database
    connection, critical memory and CPU, high error rate, queue backlog,
    message processing failures, low campaign success rate, performance
    degradation, slow queries, high memory, rate limit violations,
    unusual traffic), with the thresholds given (ValueError naming a bad
    one)."""
    from pulsetrace.monitoring.alerts.builtin import builtin_rules

    out = builtin_rules(**thresholds)
    m = manager()
    for rule in out:
        m.add(rule)
    if _wanted:
        start()
    return out


def set_gauge(name: str, value: float) -> None:
    """Set a gauge that ``gauge`` conditions read."""
    manager().gauges[name] = float(value)


_wanted = False


def start() -> None:
    """Run the evaluator thread (idempotent) once there is a rule; it
    evaluates only while this process holds the application's election
    lock. (Called when the monitoring server starts; an application without
    rules gets no thread and no state file.)"""
    global _thread, _wanted, _stop
    from pulsetrace import _runtime

    with _lock:
        _wanted = True
        if _thread is not None and _thread.is_alive():
            return
        if _manager is None and not _runtime.config().alert_rules:
            return  # started by the first add_alert_rule
    m = manager()
    cfg = _runtime.config()
    election = Election(os.path.join(alert_dir(cfg), "evaluator.lock"))
    interval = cfg.alert_interval_ms / 1000.0

    stop = threading.Event()  # this thread's own: reset() ends it
    served = [False]

    def run() -> None:
        import pulsetrace

        while not stop.wait(interval):
            try:
                # A process stands for election once it has recorded a span:
                # a pre-fork server's master (which serves no request) never
                # evaluates; one of its workers does.
                served[0] = served[0] or bool(pulsetrace.latency())
                if served[0] and election.leader():
                    m.cycle()
            except Exception as exc:
                _diag.internal_error("alert evaluator", exc)

    with _lock:
        if _thread is not None and _thread.is_alive():
            return  # another caller started it meanwhile
        _stop = stop
        _thread = threading.Thread(target=run, name="pulsetrace-alerts", daemon=True)
        _thread.start()


def reset() -> None:
    """Forget this process's manager and stop its threads (tests)."""
    global _manager, _thread, _wanted
    _stop.set()
    _wanted = False
    with _lock:
        if _manager is not None:
            _manager.deliverer.stop()
        _manager, _thread = None, None


def _after_fork_in_child() -> None:
    """A forked worker gets an evaluator of its own (standing for election
    once it serves), with its parent's rules but none of its threads'
    state."""
    global _lock, _manager, _thread
    _lock = threading.Lock()  # another thread may have held it at the fork
    parent, _manager, _thread = _manager, None, None
    if not _wanted:
        return
    try:
        m = manager()
        for rule in parent.rules.values() if parent is not None else ():
            m.rules.setdefault(rule.id, rule)
        if parent is not None:
            m.gauges.update(parent.gauges)
        start()
    except Exception as exc:
        _diag.internal_error("alert evaluator after fork", exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
