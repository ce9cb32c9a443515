"""Business metrics: messages, campaigns, contacts, templates, external
messaging-API calls, authentication events.

Prometheus gets bounded labels only (status, message type, template, API
and operation names, event kinds; each metric at most ``MAX_SERIES``
series, the rest counted as overflow). Campaign and company ids, which are
unbounded, go to the ``business`` log line of each message and to the JSON
aggregates of ``/health/business-metrics`` (at most ``MAX_ENTITIES``
campaigns and as many companies; further ones are counted, not kept).

A campaign's success rate is delivered / (delivered + failed) of its
messages (``sent`` and ``read`` are steps, not outcomes).

Under a pre-fork server each worker's figures (:func:`state`) merge into
the application's (:func:`merge_states`, :func:`fold_states` for dead
workers): counts add, success rates are computed again from the merged
counts, and :func:`summary` / :func:`families` render a merged state.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

from pulsetrace.monitoring import metrics_state
from pulsetrace.monitoring.metrics_custom import Counter, Histogram

MAX_SERIES = 200
MAX_ENTITIES = 1000

MESSAGES = Counter(
    "pulsetrace_business_messages_total",
    "messages recorded by status and type",
    ("status", "message_type"),
    MAX_SERIES,
)
CONTACTS = Counter(
    "pulsetrace_business_contacts_total",
    "contacts added (or removed, as a negative change)",
    ("change",),
    2,
)
TEMPLATES = Counter(
    "pulsetrace_business_template_uses_total", "message templates used", ("template",), MAX_SERIES
)
API_CALLS = Counter(
    "pulsetrace_business_api_calls_total",
    "calls to external messaging APIs by outcome",
    ("api", "operation", "outcome"),
    MAX_SERIES,
)
API_DURATION = Histogram(
    "pulsetrace_business_api_duration_seconds",
    "duration of calls to external messaging APIs in seconds",
    ("api", "operation"),
    MAX_SERIES,
)
AUTH = Counter(
    "pulsetrace_business_auth_events_total",
    "authentication events by kind and outcome",
    ("event", "outcome"),
    MAX_SERIES,
)
ALL = (MESSAGES, CONTACTS, TEMPLATES, API_CALLS, API_DURATION, AUTH)

_lock = threading.Lock()
_campaigns: dict[str, dict[str, int]] = {}
_companies: dict[str, dict[str, int]] = {}
_overflow = {"campaigns": 0, "companies": 0}
_contacts = {"added": 0, "removed": 0}
_start = time.time()


def _text(what: str, value: Any, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{what} must be a non-empty str, not {value!r}")
    return str(value)[:200]


def _bump(table: dict[str, dict[str, int]], kind: str, key: str, field: str) -> None:
    entry = table.get(key)
    if entry is None:
        if len(table) >= MAX_ENTITIES:
            _overflow[kind] += 1
            return
        entry = table[key] = {}
    entry[field] = entry.get(field, 0) + 1


def record_message(
    status: str,
    message_type: str,
    campaign_id: Optional[str] = None,
    company_id: Optional[str] = None,
) -> None:
    status_ = _text("status", status)
    type_ = _text("message_type", message_type)
    campaign = _text("campaign_id", campaign_id, optional=True)
    company = _text("company_id", company_id, optional=True)
    assert status_ is not None and type_ is not None
    MESSAGES.inc(status=status_, message_type=type_)
    with _lock:
        if campaign is not None:
            _bump(_campaigns, "campaigns", campaign, status_)
        if company is not None:
            _bump(_companies, "companies", company, status_)
    from pulsetrace.logging.api import get_logger

    get_logger("business").info(
        "message %s (%s)",
        status_,
        type_,
        extra={
            "metadata": {
                "metric": "message",
                "status": status_,
                "messageType": type_,
                "campaignId": campaign,
                "companyId": company,
            }
        },
    )


def record_contacts(change: int = 1, company_id: Optional[str] = None) -> None:
    if isinstance(change, bool) or not isinstance(change, int):
        raise ValueError(f"change must be an int, not {type(change).__name__}")
    company = _text("company_id", company_id, optional=True)
    which = "added" if change >= 0 else "removed"
    CONTACTS.inc(abs(change), change=which)
    with _lock:
        _contacts[which] += abs(change)
        if company is not None:
            entry = _companies.get(company)
            if entry is None and len(_companies) >= MAX_ENTITIES:
                _overflow["companies"] += 1
            else:
                entry = _companies.setdefault(company, {})
                entry["contacts"] = entry.get("contacts", 0) + change


def record_template_use(template: str) -> None:
    TEMPLATES.inc(template=_text("template", template))


def record_api_call(api: str, operation: str, duration_s: float, ok: bool = True) -> None:
    if not isinstance(ok, bool):
        raise ValueError(f"ok must be a bool, not {type(ok).__name__}")
    a, op = _text("api", api), _text("operation", operation)
    API_DURATION.observe(duration_s, api=a, operation=op)
    API_CALLS.inc(api=a, operation=op, outcome="success" if ok else "failure")


def record_auth_event(event: str, success: bool) -> None:
    if not isinstance(success, bool):
        raise ValueError(f"success must be a bool, not {type(success).__name__}")
    AUTH.inc(event=_text("event", event), outcome="success" if success else "failure")


def _success_rate(counts: dict[str, int]) -> Optional[float]:
    done = counts.get("delivered", 0) + counts.get("failed", 0)
    return round(counts.get("delivered", 0) / done, 6) if done else None


def summary(state: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The JSON aggregates of ``/health/business-metrics``: this process's,
    or those of ``state`` (:func:`state`, or several processes' merged by
    :func:`merge_states`; ValueError if malformed). Success rates are
    computed from the (merged) counts."""
    if state is None:
        with _lock:
            tables = _tables()
        metrics: dict[str, Any] = {m.name: m for m in ALL}
    else:
        tables = _parse_tables(state)
        metrics = {m.name: m for m in metrics_state.parse(state)}
    return _summary(tables, metrics)


def _summary(tables: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    def metric(m: Any) -> Any:
        found = metrics.get(m.name)
        return found if found is not None else metrics_state.new_like(m)

    campaigns = {k: dict(v, success_rate=_success_rate(v)) for k, v in tables["campaigns"].items()}
    contacts = tables["contacts"]
    hours = max(time.time() - tables["start"], 1.0) / 3600
    messages: dict[str, float] = {}
    for labels, v in metric(MESSAGES).series():
        messages[labels["status"]] = messages.get(labels["status"], 0) + v
    return {
        "messages": {"by_status": messages, "success_rate": _success_rate(messages)},  # type: ignore[arg-type]
        "campaigns": campaigns,
        "companies": tables["companies"],
        "contacts": dict(
            contacts, growth_per_hour=round((contacts["added"] - contacts["removed"]) / hours, 6)
        ),
        "templates": {lab["template"]: v for lab, v in metric(TEMPLATES).series()},
        "external_apis": metric(API_DURATION).to_json()["series"],
        "external_api_calls": [dict(labels=lab, count=v) for lab, v in metric(API_CALLS).series()],
        "auth_events": [dict(labels=lab, count=v) for lab, v in metric(AUTH).series()],
        "overflowed": tables["overflow"],
    }


def families(state: Optional[dict[str, Any]] = None) -> list[Any]:
    """The business metrics' exposition families: this process's, or those
    of ``state`` as for :func:`summary`."""
    metrics = ALL if state is None else metrics_state.parse(state)
    return [f for m in metrics for f in m.families()]


def _tables() -> dict[str, Any]:
    """A copy of this process's tables (under ``_lock``)."""
    return {
        "campaigns": {k: dict(v) for k, v in _campaigns.items()},
        "companies": {k: dict(v) for k, v in _companies.items()},
        "contacts": dict(_contacts),
        "overflow": dict(_overflow),
        "start": _start,
    }


def state() -> dict[str, Any]:
    """This process's business figures, exactly, as a JSON-able value: the
    metrics' state (:mod:`pulsetrace.monitoring.metrics_state`) and the
    tables: ``campaigns`` and ``companies`` (id -> field -> count),
    ``contacts`` (added, removed), ``overflow`` (campaigns, companies) and
    ``start`` (unix time the figures start)."""
    with _lock:
        tables = _tables()
    return dict(metrics_state.state_of(ALL), **tables)


def merge_states(states: list[Any]) -> dict[str, Any]:
    """Several processes' states (:func:`state`) combined: counts add (a
    merged table keeps at most ``MAX_ENTITIES`` ids, each further one
    counted as overflow), ``start`` is the earliest. A malformed state is
    skipped whole, counted and logged."""
    return _merge(states, fold=False)


def fold_states(states: list[Any]) -> dict[str, Any]:
    """Dead processes' states combined into one kept for good (as
    :func:`merge_states`; business metrics have no gauges to drop)."""
    return _merge(states, fold=True)


def _merge(states: list[Any], fold: bool) -> dict[str, Any]:
    parsed = []
    for i, st in enumerate(states):
        try:
            parsed.append((_parse_tables(st), metrics_state.parse(st)))
        except Exception as e:  # whatever is wrong with it, the others merge
            metrics_state.skipped(i, e)
    out: dict[str, Any] = {
        "campaigns": {},
        "companies": {},
        "contacts": {"added": 0, "removed": 0},
        "overflow": {"campaigns": 0, "companies": 0},
        "start": min((t["start"] for t, _ in parsed), default=_start),
    }
    for tables, _ in parsed:
        for kind in ("campaigns", "companies"):
            into = out[kind]
            for key, fields in tables[kind].items():
                entry = into.get(key)
                if entry is None:
                    if len(into) >= MAX_ENTITIES:
                        out["overflow"][kind] += 1
                        continue
                    entry = into[key] = {}
                for field, n in fields.items():
                    entry[field] = entry.get(field, 0) + n
        for table in ("contacts", "overflow"):
            for field, n in tables[table].items():
                out[table][field] += n
    merged = metrics_state.merge_parsed([m for _, m in parsed], fold)
    return dict(metrics_state.state_of(merged), **out)


def _parse_tables(st: Any) -> dict[str, Any]:
    """The tables of a business state, checked; ValueError naming what is
    wrong."""
    if not isinstance(st, dict):
        raise ValueError(f"a business state is a dict, not {type(st).__name__}")
    out: dict[str, Any] = {"start": metrics_state.number(st, "start")}
    for kind in ("campaigns", "companies"):
        table = st.get(kind)
        if not isinstance(table, dict):
            raise ValueError(f"business state: {kind!r} is a dict, not {table!r:.60}")
        if len(table) > MAX_ENTITIES:
            raise ValueError(f"business state: {len(table)} {kind}, more than {MAX_ENTITIES}")
        for key, fields in table.items():
            if not isinstance(fields, dict) or not all(
                isinstance(f, str) and type(n) is int for f, n in fields.items()
            ):
                raise ValueError(
                    f"business state: {kind} {key!r:.60} is a dict of str to int, "
                    f"not {fields!r:.80}"
                )
        out[kind] = {k: dict(v) for k, v in table.items()}
    for table, fields in (("contacts", ("added", "removed")), ("overflow", tuple(_overflow))):
        got = st.get(table)
        if (
            not isinstance(got, dict)
            or set(got) != set(fields)
            or not all(type(n) is int and n >= 0 for n in got.values())
        ):
            raise ValueError(
                f"business state: {table!r} is counts of {sorted(fields)}, not {got!r:.80}"
            )
        out[table] = dict(got)
    return out


def clear() -> None:
    """Forget every business figure (for tests)."""
    with _lock:
        _campaigns.clear()
        _companies.clear()
        _overflow.update(campaigns=0, companies=0)
        _contacts.update(added=0, removed=0)
    for m in ALL:
        with m._lock:
            m._series.clear()
            m.overflowed = 0
            if isinstance(m, Histogram):
                m._encoded.clear()


def _after_fork_in_child() -> None:
    """A forked worker's figures start at zero (see metrics_custom's);
    ``start`` stays the parent's."""
    global _lock
    _lock = threading.Lock()
    _campaigns.clear()
    _companies.clear()
    _overflow.update(campaigns=0, companies=0)
    _contacts.update(added=0, removed=0)
    for m in ALL:
        m.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def merged() -> Optional[dict[str, Any]]:
    """The whole application's business figures (every worker's, merged),
    or None when this process is alone or the merge failed: callers then
    render this process's own (``summary()``, ``families()``)."""
    from pulsetrace.monitoring import workers

    return workers.merged_part(PART)


#: The name of the business figures' part in the workers' files
#: (:mod:`pulsetrace.monitoring.workers`: each process publishes its state,
#: the serving process merges them).
PART = "business"


def _register() -> None:
    from pulsetrace.monitoring import workers

    workers.register_part(PART, state, merge_states, fold_states)


_register()
