"""Sentry start-up rules and the secret scrubber."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from lib.sentry import SCRUBBED, init_sentry, scrub_event


def test_no_dsn_means_sentry_is_off_and_says_so(caplog):
    caplog.set_level("INFO")
    assert init_sentry("", environment="test") is False
    assert "Sentry is disabled: SENTRY_DSN is not set" in caplog.text


def test_a_malformed_dsn_stops_the_process_with_a_clear_error():
    with pytest.raises(ImproperlyConfigured, match="SENTRY_DSN is malformed"):
        init_sentry("not a dsn", environment="test")


def test_the_scrubber_never_drops_a_check_in():
    check_in = {"type": "check_in", "monitor_slug": "abc", "status": "ok", "check_in_id": "1"}
    assert scrub_event(check_in, {}) is check_in


def test_the_scrubber_replaces_secrets_and_keeps_the_rest():
    event = {
        "request": {"headers": {"Authorization": "Bearer abc", "Accept": "text/html"}},
        "extra": {"password": "hunter2", "broker": "redis://user:pw123@redis:6379/0", "job": "heartbeat"},
        "breadcrumbs": {"values": [{"data": {"api_key": "k"}}]},
    }

    scrubbed = scrub_event(event, {})

    assert scrubbed["request"]["headers"] == {"Authorization": SCRUBBED, "Accept": "text/html"}
    assert scrubbed["extra"]["password"] == SCRUBBED
    assert scrubbed["extra"]["broker"] == f"redis://user:{SCRUBBED}@redis:6379/0"
    assert scrubbed["extra"]["job"] == "heartbeat"
    assert scrubbed["breadcrumbs"]["values"][0]["data"]["api_key"] == SCRUBBED
