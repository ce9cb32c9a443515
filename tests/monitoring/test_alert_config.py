"""The alerting settings from the environment: every secret also from a
``*_FILE`` variable, never in the configuration's repr nor in a warning."""

from __future__ import annotations

import logging

from pulsetrace.config import from_env
from pulsetrace.monitoring import alerts

SECRETS = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/slack-credential",
    "ALERT_WEBHOOK_URL": "https://ops.example.com/hook?key=hook-credential",
    "ALERT_WEBHOOK_SECRET": "hmac-credential",
    "SMTP_PASSWORD": "smtp-credential",
    "PAGERDUTY_ROUTING_KEY": "pd-credential",
    "PULSETRACE_SMS_WEBHOOK_URL": "https://sms.example.com/send?k=sms-credential",
    "PULSETRACE_PHONE_WEBHOOK_URL": "https://voice.example.com/call?k=phone-credential",
}


def test_alerting_variables_are_read_and_secrets_never_shown(caplog):
    env = {
        **SECRETS,
        "SMTP_HOST": "smtp.example.com",
        "SMTP_PORT": "2525",
        "SMTP_USERNAME": "alerts",
        "ALERT_FROM_EMAIL": "alerts@example.com",
        "CRITICAL_ALERT_EMAILS": "oncall@example.com, devops@example.com",
        "DBA_TEAM_EMAILS": "dba@example.com",
        "PULSETRACE_ALERT_INTERVAL_MS": "5000",
        "PULSETRACE_PAGERDUTY_URL": "https://events.eu.pagerduty.com/v2/enqueue",
    }
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env(env)
    assert caplog.records == []
    assert cfg.slack_webhook_url == SECRETS["SLACK_WEBHOOK_URL"]
    assert cfg.smtp_password == "smtp-credential" and cfg.smtp_port == 2525
    assert cfg.critical_alert_emails == ("oncall@example.com", "devops@example.com")
    assert cfg.alert_interval_ms == 5000.0
    assert cfg.pagerduty_url == "https://events.eu.pagerduty.com/v2/enqueue"
    shown = repr(cfg)
    for value in SECRETS.values():
        assert value not in shown
    chans = alerts.channels_from(cfg)
    assert set(chans) == {"slack", "webhook", "sms", "phone", "pagerduty", "email"}
    for ch in chans.values():
        assert "credential" not in repr(ch)


def test_a_file_variable_holds_the_secret_and_wins(tmp_path):
    env = {}
    for var in SECRETS:
        path = tmp_path / var
        path.write_text(SECRETS[var].replace("credential", "from-file") + "\n")
        env[var + "_FILE"] = str(path)
        env[var] = "https://ignored.example.com/"
    cfg = from_env(env)
    assert cfg.slack_webhook_url == SECRETS["SLACK_WEBHOOK_URL"].replace("credential", "from-file")
    assert cfg.alert_webhook_secret == "hmac-from-file"
    assert cfg.smtp_password == "smtp-from-file"
    assert cfg.pagerduty_routing_key == "pd-from-file"
    assert cfg.phone_webhook_url.endswith("phone-from-file")


def test_unusable_secrets_are_unset_with_a_warning_that_does_not_quote_them(tmp_path, caplog):
    env = {
        "SLACK_WEBHOOK_URL": "not-a-url-slack-credential",
        "SMTP_PASSWORD_FILE": str(tmp_path / "missing"),
    }
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env(env)
    assert cfg.slack_webhook_url is None and cfg.smtp_password is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SLACK_WEBHOOK_URL is not a URL" in text
    assert "SMTP_PASSWORD_FILE" in text and "not readable" in text
    assert "credential" not in text


def test_an_unusable_alert_directory_is_an_error_naming_it(tmp_path):
    from pulsetrace.monitoring.alerts.store import Store

    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "alerts.db")
    try:
        Store(path)
    except OSError as exc:
        assert "cannot open the alert state" in str(exc) and path in str(exc)
    else:
        raise AssertionError("no error")


def test_the_evaluator_starts_with_the_first_rule_not_before(tmp_path):
    import time

    import pulsetrace

    from conftest import fresh

    fresh(alert_dir=str(tmp_path), alert_interval_ms=100)
    alerts.reset()
    try:
        alerts.start()  # what the monitoring server does when it starts
        assert alerts._thread is None and not (tmp_path / "alerts.db").exists()
        alerts.add_alert_rule(
            id="backlog",
            name="Backlog",
            condition={"kind": "gauge", "operation": "q", "threshold": 10},
        )
        alerts.set_gauge("q", 11)
        time.sleep(0.5)
        # Not before this process records a span (a pre-fork master never does).
        assert alerts.manager().store.open_alert("backlog") is None
        with pulsetrace.start_span("job"):
            pass
        deadline = time.monotonic() + 10
        while alerts.manager().store.open_alert("backlog") is None:
            assert time.monotonic() < deadline, "the evaluator never fired the rule"
            time.sleep(0.05)
        assert (tmp_path / "evaluator.lock").exists()
    finally:
        alerts.reset()


def test_unusable_alerting_values_are_warned_about_and_left_out(tmp_path, caplog):
    env = {
        "CRITICAL_ALERT_EMAILS": "oncall@example.com, not-an-address",
        "ALERT_FROM_EMAIL": "alerts",
        "PULSETRACE_ALERT_RULES": str(tmp_path / "missing.json"),
        "PULSETRACE_ALERT_DIR": "relative/dir",
        "PULSETRACE_PAGERDUTY_URL": "events.pagerduty.com",
        "PULSETRACE_SMTP_CERTIFICATE": str(tmp_path),
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/a",
        "SLACK_WEBHOOK_URL_FILE": str(tmp_path / "slack"),
    }
    (tmp_path / "slack").write_text("https://hooks.slack.com/services/b\n")
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env(env)
    assert cfg.critical_alert_emails == ("oncall@example.com",)
    assert cfg.alert_from_email is None and cfg.alert_rules is None and cfg.alert_dir is None
    assert cfg.pagerduty_url == "https://events.pagerduty.com/v2/enqueue"
    assert cfg.smtp_certificate is None
    assert cfg.slack_webhook_url == "https://hooks.slack.com/services/b"
    text = caplog.text
    for var in env:
        if var != "SLACK_WEBHOOK_URL_FILE":  # used: the warning is about both being set
            assert f"pulsetrace: {var}" in text, var
    assert "SLACK_WEBHOOK_URL and SLACK_WEBHOOK_URL_FILE are both set" in text
    assert "hooks.slack.com" not in text
