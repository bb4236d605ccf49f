"""Alert channels end to end: each kind's trigger, reminder and recovery reach a real receiver.

Receivers are local servers (``tests/support/alert_receivers.py``) that check
what the real service checks: the webhook receiver verifies the documented
HMAC-SHA256 signature, the Slack one the incoming-webhook body, the PagerDuty
one the Events API v2 event, and email goes through a real aiosmtpd server
with Django's SMTP backend. Messages go the production way: ``enqueue`` renders
and queues, ``deliver_due`` sends.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts import channels
from alerts.delivery import deliver_due, enqueue, enqueue_test
from alerts.messages import duration, render
from alerts.models import Channel, Incident, Notification
from jobs.catalog import publish_catalog
from tests.support.alert_receivers import (
    PagerDutyReceiver,
    SlackReceiver,
    SmtpReceiver,
    WebhookReceiver,
    failed_incident,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 2, 1, 30, tzinfo=UTC)
SECRET = "s3cret-signing-key-0123456789"
ROUTING_KEY = "R0123456789abcdefABCDEF012345678"


@pytest.fixture
def schedule(db) -> PeriodicTask:
    publish_catalog(worker="tests")
    every, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name="nightly-export", task="diagnostics.fail", interval=every)


def serve(receiver):
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook():
    yield from serve(WebhookReceiver(SECRET))


@pytest.fixture
def slack():
    yield from serve(SlackReceiver())


@pytest.fixture
def pagerduty():
    yield from serve(PagerDutyReceiver())


@pytest.fixture
def smtp(settings):
    receiver = SmtpReceiver().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", receiver.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.DEFAULT_FROM_EMAIL = "alerts@beatplatform.test"
    yield receiver
    receiver.stop()


def page_through(incident: Incident) -> list[Notification]:
    """What the detector pages over an outage: trigger, first reminder an hour on, recovery at 1 h 30."""
    assert enqueue(incident, "trigger", now=T0) == 1
    assert deliver_due(now=T0) == 1
    later = T0 + timedelta(hours=1)
    assert enqueue(incident, "remind", 1, now=later) == 1
    assert deliver_due(now=later) == 1
    resolved = T0 + timedelta(minutes=90)
    Incident.objects.filter(pk=incident.pk).update(resolved_at=resolved, resolution="a run succeeded")
    incident.refresh_from_db()
    assert enqueue(incident, "resolve", now=resolved) == 1
    assert deliver_due(now=resolved) == 1
    sent = list(Notification.objects.order_by("created_at", "pk"))
    assert [(n.event, n.status, n.attempts) for n in sent] == [
        ("trigger", "sent", 1),
        ("remind", "sent", 1),
        ("resolve", "sent", 1),
    ]
    return sent


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "target", "secret", "field"),
    [
        ("webhook", "not a url", SECRET, "target"),
        ("webhook", "ftp://example.com/hook", SECRET, "target"),
        ("webhook", "", SECRET, "target"),
        ("webhook", "https://example.com/hook", "", "secret"),
        ("webhook", "https://example.com/hook", "short", "secret"),
        ("slack", "hooks.slack.com/services/T/B/X", "", "target"),
        ("email", "", "", "target"),
        ("email", "oncall@example.com, not-an-address", "", "target"),
        ("pagerduty", "", "", "secret"),
        ("pagerduty", "", "tooshort", "secret"),
        ("pagerduty", "", "x" * 31 + "!", "secret"),
        ("pagerduty", "javascript:alert(1)", ROUTING_KEY, "target"),
    ],
)
def test_a_bad_target_or_secret_is_refused_with_the_field_named(kind, target, secret, field):
    with pytest.raises(ValidationError) as refused:
        channels.validate_channel(kind, target, secret)
    assert field in refused.value.message_dict
    channel = Channel(name="bad", kind=kind, target=target, secret=secret)
    with pytest.raises(ValidationError) as also_refused:
        channel.full_clean()
    assert field in also_refused.value.message_dict


@pytest.mark.parametrize(
    ("kind", "target", "secret"),
    [
        ("webhook", "https://alerts.example.com/hook?team=data", SECRET),
        ("slack", "https://hooks.slack.com/services/T000/B000/XXXX", ""),
        ("email", "oncall@example.com, lead@example.org", ""),
        ("pagerduty", "", ROUTING_KEY),
        ("pagerduty", "https://events.eu.pagerduty.com/v2/enqueue", ROUTING_KEY),
    ],
)
def test_good_channels_pass_the_same_check(kind, target, secret):
    channels.validate_channel(kind, target, secret)
    Channel(name="good", kind=kind, target=target, secret=secret).full_clean()


# --- what a message says ---------------------------------------------------------------


def test_a_trigger_says_what_on_call_needs_at_3_am(schedule):
    incident = failed_incident(schedule, opened_at=T0)
    message = render(incident, "trigger", now=T0)
    text = message["text"]
    assert message["title"].startswith("[FAILED] nightly-export: failed")
    assert message["severity"] == "critical"
    assert f"Schedule: nightly-export (#{schedule.pk})" in text
    assert "Job: diagnostics.fail" in text
    # The slot in the schedule's zone and in UTC: 02:00 UTC is 03:00 in Paris in November.
    assert "Slot: 2026-11-30 03:00:00 Europe/Paris (2026-11-30 02:00:00 UTC)" in text
    assert "Error: builtins.ValueError: the upstream export is empty" in text
    assert "Consecutive failures: 3" in text
    assert "Last good run: 2026-11-29 02:00:04 UTC" in text
    assert message["links"] == {
        "run": None,
        "schedule": f"http://127.0.0.1:8000/admin/django_celery_beat/periodictask/{schedule.pk}/change/",
        "incident": f"http://127.0.0.1:8000/admin/alerts/incident/{incident.pk}/change/",
    }
    assert f"Incident: http://127.0.0.1:8000/admin/alerts/incident/{incident.pk}/change/" in text
    assert message["dedup_key"] == incident.dedup_key
    json.dumps(message)  # stored as the notification's payload


def test_a_missed_run_says_why_and_links_the_run(schedule):
    details = {
        "error_type": "",
        "error_message": "not started 60 s after its slot; still queued in 'default'",
    }
    incident = failed_incident(
        schedule,
        opened_at=T0,
        kind="missed",
        details={**details, "run_id": "4f7d8a39-0000-4000-8000-00000000002a"},
    )
    message = render(incident, "trigger", now=T0)
    assert "Cause: not started 60 s after its slot; still queued in 'default'" in message["text"]
    assert "Error:" not in message["text"]
    run_link = "http://127.0.0.1:8000/admin/jobs/jobrun/4f7d8a39-0000-4000-8000-00000000002a/change/"
    assert message["links"]["run"] == run_link
    assert f"Run: {run_link}" in message["text"]


def test_late_overrun_and_timeout_messages_say_by_how_much_and_which_limit(schedule, settings):
    settings.PUBLIC_URL = "https://jobs.example.com"
    late = failed_incident(
        schedule,
        opened_at=T0,
        kind="late",
        details={"late_by_s": 754.2, "late_after_s": 300, "error_type": ""},
    )
    text = render(late, "trigger", now=T0)["text"]
    assert "Started 12 min 34 s late (threshold 5 min)" in text
    assert render(late, "trigger")["severity"] == "warning"
    Incident.objects.filter(pk=late.pk).update(resolved_at=T0)
    overrun = failed_incident(
        schedule,
        opened_at=T0,
        kind="overrun",
        details={"running_for_s": 7300, "expected_duration_s": 3600},
    )
    assert "Running for 2 h 1 min, expected at most 1 h" in render(overrun, "trigger")["text"]
    Incident.objects.filter(pk=overrun.pk).update(resolved_at=T0)
    timed_out = failed_incident(schedule, opened_at=T0, kind="timed_out", details={"timeout": "hard"})
    message = render(timed_out, "remind", 2, now=T0 + timedelta(hours=2, minutes=5))
    assert "Limit hit: the hard time limit" in message["text"]
    assert message["title"].startswith("[STILL TIMED OUT after 2 h 5 min, reminder 2]")
    assert message["links"]["incident"].startswith("https://jobs.example.com/admin/alerts/incident/")


def test_a_recovery_says_how_long_it_was_down_and_a_system_one_how_many_recovered(schedule):
    incident = failed_incident(schedule, opened_at=T0)
    Incident.objects.filter(pk=incident.pk).update(
        resolved_at=T0 + timedelta(hours=1, minutes=12), resolution="a run succeeded"
    )
    incident.refresh_from_db()
    message = render(incident, "resolve")
    assert (
        message["title"] == "[RESOLVED] nightly-export: back after 1 h 12 min (failed after its last retry)"
    )
    assert "down for 1 h 12 min" in message["text"]
    assert "How: a run succeeded" in message["text"]
    assert message["severity"] == "info"

    beat = Incident.objects.create(
        scope="beat",
        kind="beat_down",
        summary="beat down: no leader has renewed its lease for 75 s",
        opened_at=T0,
        resolved_at=T0 + timedelta(minutes=4),
        resolution="a leader renews the lease again",
        details={"last_tick_at": "2026-11-30T02:00:15+00:00", "lease_holder": "beat-a", "effects": 7},
    )
    assert "Last leader tick: 2026-11-30T02:00:15+00:00" in render(beat, "trigger")["text"]
    text = render(beat, "resolve")["text"]
    assert "down for 4 min" in text
    assert "Schedules that recovered with it: 7" in text
    assert "Schedule:" not in text and "Slot:" not in text  # nothing of a schedule to say


def test_durations_read_naturally():
    assert [duration(s) for s in (0, 42, 60, 61, 3600, 3660, 90061)] == [
        "0 s",
        "42 s",
        "1 min",
        "1 min 1 s",
        "1 h",
        "1 h 1 min",
        "1 d 1 h",
    ]


# --- each kind, end to end ----------------------------------------------------------------


def test_webhook_gets_trigger_reminder_and_recovery_signed(schedule, webhook):
    Channel.objects.create(name="hook", kind="webhook", target=webhook.url, secret=SECRET, is_default=True)
    incident = failed_incident(schedule, opened_at=T0)
    sent = page_through(incident)
    received = webhook.wait_for(3)
    assert all(r.verified for r in received)
    bodies = [r.json for r in received]
    assert [b["event"] for b in bodies] == ["trigger", "remind", "resolve"]
    assert [b["notification_id"] for b in bodies] == [n.pk for n in sent]
    assert [r.headers["x-beatplatform-notification"] for r in received] == [str(n.pk) for n in sent]
    assert {b["incident_id"] for b in bodies} == {incident.pk}
    assert bodies[0]["title"].startswith("[FAILED] nightly-export")
    assert bodies[1]["sequence"] == 1 and bodies[1]["title"].startswith(
        "[STILL FAILED after 1 h, reminder 1]"
    )
    assert bodies[2]["title"].startswith("[RESOLVED] nightly-export: back after 1 h 30 min")
    assert bodies[0]["details"]["error_message"] == "the upstream export is empty"
    assert Channel.objects.get().last_sent_at == T0 + timedelta(minutes=90)


def test_the_webhook_signature_verifies_with_the_secret_and_fails_with_another(schedule, webhook):
    Channel.objects.create(name="hook", kind="webhook", target=webhook.url, secret=SECRET, is_default=True)
    enqueue(failed_incident(schedule, opened_at=T0), "trigger", now=T0)
    deliver_due(now=T0)
    request = webhook.wait_for(1)[0]
    headers, body = request.headers, request.body
    assert webhook.verify(headers, body)
    assert not webhook.verify(headers, body, secret="another-secret-0123456789")
    assert not webhook.verify(headers, body.replace(b"nightly-export", b"nightly-exporT"))
    # A replay: the same request a while later, or with a fresh timestamp it was not signed with.
    replay = {**headers, "x-beatplatform-timestamp": str(int(time.time()) + 1)}
    assert not webhook.verify(replay, body)
    # The sender's own helper (for receivers written in Python) agrees with the documented scheme.
    assert channels.verify_webhook_signature(SECRET, headers, body)
    assert not channels.verify_webhook_signature("another-secret-0123456789", headers, body)
    assert not channels.verify_webhook_signature(SECRET, headers, body, now=time.time() + 301)


def test_a_webhook_signed_with_the_wrong_secret_is_refused_and_retried(schedule, webhook):
    Channel.objects.create(
        name="hook", kind="webhook", target=webhook.url, secret="not-the-receivers-secret", is_default=True
    )
    enqueue(failed_incident(schedule, opened_at=T0), "trigger", now=T0)
    assert deliver_due(now=T0) == 0
    notification = Notification.objects.get()
    assert notification.status == "pending" and notification.attempts == 1
    assert "HTTP 401" in notification.last_error and "bad signature" in notification.last_error
    assert webhook.requests[0].verified is False


def test_slack_gets_text_and_blocks(schedule, slack):
    Channel.objects.create(name="slack", kind="slack", target=slack.url, is_default=True)
    incident = failed_incident(
        schedule, opened_at=T0, details={"error_message": "expected <table> & got nothing"}
    )
    page_through(incident)
    received = [r.json for r in slack.wait_for(3)]
    assert [set(m) for m in received] == [{"text", "blocks"}] * 3
    trigger, reminder, recovery = received
    assert trigger["text"].startswith("[FAILED] nightly-export")
    header, section, actions = trigger["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": trigger["text"][:150]}}
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    # Slack reads <...> as links and mentions: the error is escaped.
    assert "expected &lt;table&gt; &amp; got nothing" in section["text"]["text"]
    assert "Slot: 2026-11-30 03:00:00 Europe/Paris (2026-11-30 02:00:00 UTC)" in section["text"]["text"]
    assert actions["type"] == "actions"
    urls = [button["url"] for button in actions["elements"]]
    assert urls == [
        f"http://127.0.0.1:8000/admin/django_celery_beat/periodictask/{schedule.pk}/change/",
        f"http://127.0.0.1:8000/admin/alerts/incident/{incident.pk}/change/",
    ]
    assert reminder["text"].startswith("[STILL FAILED after 1 h, reminder 1]")
    assert recovery["text"].startswith("[RESOLVED] nightly-export: back after 1 h 30 min")


def test_email_goes_through_a_real_smtp_server_to_every_address(schedule, smtp):
    Channel.objects.create(
        name="mail", kind="email", target="oncall@example.com, lead@example.org", is_default=True
    )
    incident = failed_incident(schedule, opened_at=T0)
    sent = page_through(incident)
    messages = smtp.wait_for(3)
    assert [m["Subject"] for m in messages] == [n.payload["title"][:200] for n in sent]
    assert {m["To"] for m in messages} == {"oncall@example.com, lead@example.org"}
    assert smtp.handler.envelopes[0] == (
        "alerts@beatplatform.test",
        ["oncall@example.com", "lead@example.org"],
    )
    body = messages[0].get_content()
    assert "Slot: 2026-11-30 03:00:00 Europe/Paris (2026-11-30 02:00:00 UTC)" in body
    assert "Error: builtins.ValueError: the upstream export is empty" in body
    assert "down for 1 h 30 min" in messages[2].get_content()
    assert messages[1]["X-Beatplatform-Notification"] == str(sent[1].pk)


def test_email_to_a_server_that_is_not_there_is_an_error_not_a_crash(schedule, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # discard port: nobody listens
    Channel.objects.create(name="mail", kind="email", target="oncall@example.com", is_default=True)
    enqueue(failed_incident(schedule, opened_at=T0), "trigger", now=T0)
    assert deliver_due(now=T0) == 0
    notification = Notification.objects.get()
    assert notification.status == "pending" and notification.last_error.startswith("email to oncall@")
    assert "ConnectionRefusedError" in Channel.objects.get().last_error


def test_pagerduty_trigger_reminder_and_resolve_share_one_dedup_key(schedule, pagerduty):
    Channel.objects.create(
        name="pd", kind="pagerduty", target=pagerduty.url, secret=ROUTING_KEY, is_default=True
    )
    incident = failed_incident(schedule, opened_at=T0)
    page_through(incident)
    events = [r.json for r in pagerduty.wait_for(3)]
    assert [r.path for r in pagerduty.requests] == ["/v2/enqueue"] * 3
    assert [e["event_action"] for e in events] == ["trigger", "trigger", "resolve"]
    assert {e["dedup_key"] for e in events} == {incident.dedup_key}
    assert {e["routing_key"] for e in events} == {ROUTING_KEY}
    trigger = events[0]
    assert trigger["payload"]["summary"].startswith("[FAILED] nightly-export")
    assert trigger["payload"]["source"] == "nightly-export"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["timestamp"] == T0.isoformat()
    assert trigger["payload"]["custom_details"]["error_type"] == "builtins.ValueError"
    assert "Slot: 2026-11-30 03:00:00 Europe/Paris" in trigger["payload"]["custom_details"]["text"]
    assert [link["href"] for link in trigger["links"]] == [
        f"http://127.0.0.1:8000/admin/django_celery_beat/periodictask/{schedule.pk}/change/",
        f"http://127.0.0.1:8000/admin/alerts/incident/{incident.pk}/change/",
    ]
    assert "payload" not in events[2]  # a resolve names the alert by its dedup_key only


def test_pagerduty_refusing_an_event_keeps_its_answer_as_the_error(schedule, pagerduty):
    # A key of the right length the receiver still refuses (as PagerDuty answers 400 invalid event).
    Channel.objects.create(
        name="pd", kind="pagerduty", target=pagerduty.url, secret=ROUTING_KEY, is_default=True
    )
    incident = failed_incident(schedule, opened_at=T0)
    Channel.objects.update(secret=ROUTING_KEY[:31])  # a raw write past validation
    enqueue(incident, "trigger", now=T0)
    assert deliver_due(now=T0) == 0
    error = Notification.objects.get().last_error
    assert "HTTP 400" in error and "routing_key must be 32 characters" in error


def test_a_pagerduty_test_alert_is_triggered_and_resolved_at_once(pagerduty):
    channel = Channel.objects.create(name="pd", kind="pagerduty", target=pagerduty.url, secret=ROUTING_KEY)
    notification = enqueue_test(channel, now=T0)
    assert deliver_due(now=T0) == 1
    trigger, resolve = [r.json for r in pagerduty.wait_for(2)]
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == notification.payload["dedup_key"]
    assert trigger["payload"]["severity"] == "info"
    assert trigger["payload"]["summary"] == "[TEST] Test alert to channel 'pd'"
