"""Business and custom metrics.

Business metrics (messages, campaigns, contacts, templates, external
messaging APIs, authentication)::

    pulsetrace.metrics.record_message("delivered", "text", campaign_id="camp_1", company_id="c_9")

Custom metrics, with fixed label names::

    active = pulsetrace.metrics.create_custom_gauge("active_users", "Active users", ["plan"])
    active.set(150, plan="pro")

Both appear in the Prometheus exposition (``/metrics``) and as JSON
(``/health/metrics``, ``/health/business-metrics``). Labels stay bounded:
campaign and company ids never become Prometheus labels (they go to the
``business`` log line and the JSON aggregates), and each metric keeps at
most ``max_series`` label sets, counting what it had to drop. Wrong label
names or types raise ``ValueError`` at the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from pulsetrace.monitoring import metrics_business as _business
from pulsetrace.monitoring import metrics_custom as _custom
from pulsetrace.monitoring.metrics_custom import Counter, Gauge, Histogram

__all__ = [
    "Counter",
    "Gauge",
    "Histogram",
    "create_custom_counter",
    "create_custom_gauge",
    "create_custom_histogram",
    "record_api_call",
    "record_auth_event",
    "record_contacts",
    "record_message",
    "record_template_use",
]

DEFAULT_MAX_SERIES = 1000


def create_custom_counter(
    name: str, help: str, label_names: Sequence[str] = (), max_series: int = DEFAULT_MAX_SERIES
) -> Counter:
    """A counter: ``inc(value=1, **labels)``."""
    return _custom.create(Counter, name, help, label_names, max_series)  # type: ignore[no-any-return]


def create_custom_gauge(
    name: str,
    help: str,
    label_names: Sequence[str] = (),
    max_series: int = DEFAULT_MAX_SERIES,
    aggregate: str = "sum",
) -> Gauge:
    """A gauge: ``set(value, **labels)``, ``inc``, ``dec``. Under a pre-fork
    server the workers' values combine by ``aggregate``: ``"sum"``,
    ``"max"``, ``"min"`` or ``"last"`` (the most recently changed)."""
    return _custom.create(  # type: ignore[no-any-return]
        Gauge, name, help, label_names, max_series, aggregate=aggregate
    )


def create_custom_histogram(
    name: str,
    help: str,
    label_names: Sequence[str] = (),
    max_series: int = DEFAULT_MAX_SERIES,
    buckets: Optional[Sequence[float]] = None,
) -> Histogram:
    """A histogram on the native HDR histogram: ``observe(value, **labels)``,
    exported as a Prometheus histogram with the bucket bounds ``buckets``
    (default: pulsetrace's latency bounds, 0.005 to 10, for seconds)."""
    return _custom.create(  # type: ignore[no-any-return]
        Histogram, name, help, label_names, max_series, buckets
    )


def record_message(
    status: str,
    message_type: str,
    campaign_id: Optional[str] = None,
    company_id: Optional[str] = None,
) -> None:
    """One message event (``sent``, ``delivered``, ``read``, ``failed``, ...)
    of a type (``text``, ``image``, ...), with its campaign and company."""
    _business.record_message(status, message_type, campaign_id, company_id)


def record_contacts(change: int = 1, company_id: Optional[str] = None) -> None:
    """Contacts added (a negative ``change``: removed), for contact growth."""
    _business.record_contacts(change, company_id)


def record_template_use(template: str) -> None:
    """A message template was used."""
    _business.record_template_use(template)


def record_api_call(api: str, operation: str, duration_s: float, ok: bool = True) -> None:
    """A call to an external messaging API: its duration and outcome."""
    _business.record_api_call(api, operation, duration_s, ok)


def record_auth_event(event: str, success: bool) -> None:
    """An authentication event (``login``, ``token_refresh``, ...)."""
    _business.record_auth_event(event, success)
