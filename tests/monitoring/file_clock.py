"""The alert manager's clock for the pre-fork test applications
(``alert_app.py``, ``traces_app.py``): with ``ALERT_TEST_CLOCK`` set, the
process's manager reads the time from that file, which the test advances
(an escalation's minutes pass at once)."""

import os


class FileClock:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> float:
        with open(self.path) as f:
            return float(f.read())


def install_from_env() -> None:
    """This process's alert manager reads its clock from ``ALERT_TEST_CLOCK``
    when it is set."""
    if os.environ.get("ALERT_TEST_CLOCK"):
        from pulsetrace.monitoring import alerts

        alerts.manager().clock = FileClock(os.environ["ALERT_TEST_CLOCK"])
