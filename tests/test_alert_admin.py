"""The alerting admin through Django's test client: channel forms, "Send test alert", maintenance
windows, the read-only incident and notification pages, and list pages whose query count does not
grow with the table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts.delivery import enqueue
from alerts.models import Channel, Flip, Incident, Maintenance, Notification
from jobs.catalog import publish_catalog
from tests.support.alert_receivers import WebhookReceiver, failed_incident

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 2, 1, 30, tzinfo=UTC)
SECRET = "s3cret-signing-key-0123456789"
ADD = "/admin/alerts/channel/add/"


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def receiver():
    server = WebhookReceiver(SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def schedule(db) -> PeriodicTask:
    publish_catalog(worker="tests")
    every, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name="nightly-export", task="diagnostics.fail", interval=every)


def channel_form(**fields) -> dict:
    return {
        "name": "on-call",
        "kind": "webhook",
        "enabled": "on",
        "target": "https://alerts.example.com/hook",
        "secret": SECRET,
        "jobs": "",
        **fields,
    }


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- channels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"target": "alerts.example.com/hook"}, "target", "Not an http(s) URL"),
        ({"target": "file:///etc/passwd"}, "target", "Not an http(s) URL"),
        ({"secret": "short"}, "secret", "signing secret of at least 16"),
        ({"kind": "email", "target": "oncall@example.com; boss"}, "target", "Not an email address"),
        ({"kind": "pagerduty", "target": "", "secret": "not-a-routing-key"}, "secret", "32 letters"),
        ({"kind": "slack", "target": ""}, "target", "A URL is required"),
        ({"jobs": "diagnostics.fail, no.such.job"}, "jobs", "No job named 'no.such.job'"),
    ],
)
def test_a_bad_url_secret_address_or_job_is_a_form_error_and_nothing_is_saved(
    client, schedule, fields, field, words
):
    response = client.post(ADD, channel_form(**fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Channel.objects.exists()


def test_a_good_channel_is_saved_and_its_secret_is_never_shown_nor_lost(client, schedule):
    response = client.post(ADD, channel_form(jobs="diagnostics.fail", schedules=[schedule.pk]))
    assert response.status_code == 302, response.context["adminform"].form.errors
    channel = Channel.objects.get()
    assert (channel.secret, channel.jobs) == (SECRET, ["diagnostics.fail"])
    assert list(channel.schedules.all()) == [schedule]

    change = f"/admin/alerts/channel/{channel.pk}/change/"
    page = client.get(change).content.decode()
    assert SECRET not in page
    assert 'id="send-test-alert"' in page
    assert 'id="channel-fields-by-kind"' in page
    # Saving with the secret left blank keeps it.
    response = client.post(change, channel_form(secret="", name="on-call team", jobs="diagnostics.fail"))
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.name, channel.secret) == ("on-call team", SECRET)


def test_send_test_alert_delivers_to_a_local_receiver_and_says_so(client, receiver):
    channel = Channel.objects.create(name="on-call", kind="webhook", target=receiver.url, secret=SECRET)
    change = f"/admin/alerts/channel/{channel.pk}/change/"
    assert client.get(f"/admin/alerts/channel/{channel.pk}/send-test/").status_code == 405
    response = client.post(f"/admin/alerts/channel/{channel.pk}/send-test/", follow=True)
    assert response.redirect_chain == [(change, 302)]
    assert messages_of(response) == ["Test alert to on-call: delivered."]
    body = receiver.wait_for(1)[0]
    assert body.verified and body.json["event"] == "test"
    assert body.json["title"] == "[TEST] Test alert to channel 'on-call'"
    notification = Notification.objects.get()
    assert (notification.incident, notification.event, notification.status) == (None, "test", "sent")
    channel.refresh_from_db()
    assert channel.last_sent_at is not None


def test_a_failing_test_alert_shows_the_error_and_stays_queued(client, receiver):
    channel = Channel.objects.create(name="on-call", kind="webhook", target=receiver.url, secret=SECRET)
    receiver.fail_next(1, status=500)
    response = client.post(f"/admin/alerts/channel/{channel.pk}/send-test/", follow=True)
    (message,) = messages_of(response)
    assert message.startswith("Test alert to on-call failed: HTTP 500 from ")
    assert "retried with backoff" in message
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("pending", 1)
    # The change page shows the channel's last error.
    assert "HTTP 500" in client.get(f"/admin/alerts/channel/{channel.pk}/change/").content.decode()


def test_the_list_action_sends_a_test_alert_to_each_selected_channel(client, receiver):
    one = Channel.objects.create(name="one", kind="webhook", target=receiver.url, secret=SECRET)
    two = Channel.objects.create(name="two", kind="webhook", target=receiver.url, secret=SECRET)
    response = client.post(
        "/admin/alerts/channel/",
        {"action": "send_test_alerts", "_selected_action": [one.pk, two.pk], "index": 0},
        follow=True,
    )
    assert sorted(messages_of(response)) == ["Test alert to one: delivered.", "Test alert to two: delivered."]
    assert len(receiver.wait_for(2)) == 2


# --- notifications and incidents ---------------------------------------------------------------


def test_retry_now_sends_a_failed_notification_again(client, receiver, schedule):
    Channel.objects.create(
        name="on-call", kind="webhook", target=receiver.url, secret=SECRET, is_default=True
    )
    incident = failed_incident(schedule, opened_at=T0)
    enqueue(incident, "trigger", now=T0)
    Notification.objects.update(status="failed", attempts=10, last_error="HTTP 500 (long ago)")
    response = client.post(
        "/admin/alerts/notification/",
        {"action": "retry_now", "_selected_action": list(Notification.objects.values_list("pk", flat=True))},
        follow=True,
    )
    assert messages_of(response) == ["1 made due, 1 delivered."]
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts, notification.last_error) == ("sent", 1, "")
    assert receiver.wait_for(1)[0].json["incident_id"] == incident.pk
    page = client.get(f"/admin/alerts/notification/{notification.pk}/change/").content.decode()
    assert "<pre>[FAILED] nightly-export: failed after its last retry (ValueError)" in page


def test_an_incident_is_read_only_and_shows_its_flips_and_notifications(client, schedule):
    Channel.objects.create(name="on-call", kind="slack", target="http://127.0.0.1:9/", is_default=True)
    incident = failed_incident(schedule, opened_at=T0)
    enqueue(incident, "trigger", now=T0)
    Flip.objects.create(
        schedule=schedule, incident=incident, old_state="up", new_state="down", at=T0, reason="a run failed"
    )
    page = client.get(f"/admin/alerts/incident/{incident.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "a run failed" in text and "on-call (slack)" in text
    assert 'name="_save"' not in text
    assert client.get("/admin/alerts/incident/add/").status_code == 403
    listing = client.get("/admin/alerts/incident/?open=yes&kind=failed").content.decode()
    assert f"/admin/alerts/incident/{incident.pk}/change/" in listing
    assert (
        f"/admin/alerts/incident/{incident.pk}/change/"
        not in client.get("/admin/alerts/incident/?open=no").content.decode()
    )


# --- maintenance ----------------------------------------------------------------------------------


def maintenance_form(**fields) -> dict:
    return {
        "scope": "all",
        "note": "database upgrade",
        "job": "",
        "starts_at_0": "2026-12-01",
        "starts_at_1": "22:00:00",
        "ends_at_0": "2026-12-01",
        "ends_at_1": "23:30:00",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"ends_at_1": "21:00:00"}, "ends_at", "after the start"),
        ({"ends_at_0": "", "ends_at_1": ""}, "ends_at", "required"),
        ({"scope": "schedule"}, "schedule", "Pick the schedule"),
        ({"scope": "job", "job": ""}, "job", "Name the job"),
        ({"scope": "job", "job": "no.such.job"}, "job", "No job named"),
        ({"note": ""}, "note", "required"),
    ],
)
def test_a_bad_maintenance_window_is_a_form_error(client, schedule, fields, field, words):
    response = client.post("/admin/alerts/maintenance/add/", maintenance_form(**fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Maintenance.objects.exists()


def test_a_maintenance_window_is_saved_with_who_made_it(client, schedule):
    page = client.get("/admin/alerts/maintenance/add/").content.decode()
    assert "autocomplete" in page  # the schedule picker does not list 100,000 schedules
    response = client.post(
        "/admin/alerts/maintenance/add/", maintenance_form(scope="schedule", schedule=schedule.pk, job="x")
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    window = Maintenance.objects.get()
    assert (window.scope, window.schedule, window.job, window.created_by) == (
        "schedule",
        schedule,
        "",
        "alice",
    )
    assert window.ends_at - window.starts_at == timedelta(minutes=90)


# --- list pages do not grow with the table --------------------------------------------------------


def fill(schedule: PeriodicTask, channels: list[Channel], count: int) -> None:
    cause = Incident.objects.create(
        scope=f"beat-{count}", kind="beat_down", summary="beat down", opened_at=T0
    )
    for n in range(count):
        incident = failed_incident(schedule, opened_at=T0 + timedelta(minutes=n), scope=f"x:{count}:{n}")
        Incident.objects.filter(pk=incident.pk).update(cause=cause, resolved_at=T0 + timedelta(hours=2))
        for channel in channels:
            Notification.objects.create(
                incident=incident, channel=channel, event="trigger", payload={}, next_attempt_at=T0
            )
        Flip.objects.create(schedule=schedule, incident=incident, old_state="up", new_state="down", at=T0)


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_list_pages_cost_the_same_queries_at_3_and_at_40_rows(client, schedule):
    channels = [
        Channel.objects.create(name=f"c{n}", kind="slack", target="http://127.0.0.1:9/") for n in range(2)
    ]
    pages = [
        "/admin/alerts/incident/",
        "/admin/alerts/notification/",
        "/admin/alerts/flip/",
        "/admin/alerts/channel/",
    ]
    fill(schedule, channels, 3)
    small = {url: queries_for(client, url) for url in pages}
    fill(schedule, channels, 40)
    assert Notification.objects.count() == 86
    large = {url: queries_for(client, url) for url in pages}
    assert large == small
