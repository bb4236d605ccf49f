"""The alert outbox: routing, queueing once, retries with backoff, isolation, concurrent deliverers.

Notifications go to real local receivers (``tests/support/alert_receivers.py``);
time is the caller's (``now=``), so a backoff of minutes is crossed at once.
The concurrency test runs two ``deliver_due`` in threads on the real
database (PostgreSQL in CI): each notification reaches its receiver once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts import delivery
from alerts.delivery import backoff, deliver_due, enqueue, retry_now, routed_channel_ids
from alerts.models import Channel, Incident, Notification
from jobs.catalog import publish_catalog
from tests.support.alert_receivers import WebhookReceiver, failed_incident
from tests.support.threads import at_once

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 2, 1, 30, tzinfo=UTC)
SECRET = "s3cret-signing-key-0123456789"


@pytest.fixture
def receivers():
    started: list[WebhookReceiver] = []

    def start() -> WebhookReceiver:
        receiver = WebhookReceiver(SECRET).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def schedule(name: str = "nightly-export", job: str = "diagnostics.fail") -> PeriodicTask:
    publish_catalog(worker="tests")
    every, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task=job, interval=every)


def hook(name: str, receiver: WebhookReceiver, **fields) -> Channel:
    return Channel.objects.create(
        name=name, kind="webhook", target=receiver.url, secret=SECRET, **{"is_default": True, **fields}
    )


# --- routing and queueing ------------------------------------------------------------------


def test_an_incident_goes_to_default_channels_and_those_routed_for_its_schedule_or_job():
    nightly, other = schedule(), schedule("hourly-sync", job="heartbeat")
    url = "http://127.0.0.1:9/hook"

    def channel(name: str, **fields) -> Channel:
        return Channel.objects.create(name=name, kind="webhook", target=url, secret=SECRET, **fields)

    default = channel("default", is_default=True)
    channel("disabled default", is_default=True, enabled=False)
    by_schedule = channel("by schedule")
    by_schedule.schedules.add(nightly)
    by_job = channel("by job", jobs=["diagnostics.fail"])
    other_schedule = channel("other schedule")
    other_schedule.schedules.add(other)
    channel("other job", jobs=["heartbeat"])

    incident = failed_incident(nightly, opened_at=T0)
    assert routed_channel_ids(incident) == sorted([default.pk, by_schedule.pk, by_job.pk])
    beat = Incident.objects.create(scope="beat", kind="beat_down", summary="beat down", opened_at=T0)
    assert routed_channel_ids(beat) == [default.pk]
    # No worker for queue "default": the channels of the jobs on that queue hear of it too.
    no_worker = Incident.objects.create(
        scope="queue:default", kind="no_worker", summary="no worker", opened_at=T0, queue="default"
    )
    assert routed_channel_ids(no_worker) == sorted([default.pk, by_job.pk])


def test_an_event_is_queued_once_per_channel_however_often_it_is_asked():
    nightly = schedule()
    Channel.objects.create(name="a", kind="slack", target="http://127.0.0.1:9/a", is_default=True)
    Channel.objects.create(name="b", kind="slack", target="http://127.0.0.1:9/b", is_default=True)
    incident = failed_incident(nightly, opened_at=T0)
    assert enqueue(incident, "trigger", now=T0) == 2
    assert enqueue(incident, "trigger", now=T0) == 0
    assert enqueue(incident, "remind", 1, now=T0) == 2
    assert enqueue(incident, "remind", 1, now=T0) == 0
    assert enqueue(incident, "remind", 2, now=T0) == 2
    assert Counter(Notification.objects.values_list("event", "sequence")) == {
        ("trigger", 0): 2,
        ("remind", 1): 2,
        ("remind", 2): 2,
    }
    # The payload was rendered once, the same for both channels.
    assert len({n.payload["text"] for n in Notification.objects.filter(event="trigger")}) == 1


def test_with_no_channel_nothing_is_queued_and_nothing_fails():
    incident = failed_incident(schedule(), opened_at=T0)
    assert enqueue(incident, "trigger", now=T0) == 0
    assert deliver_due(now=T0) == 0


# --- retries ----------------------------------------------------------------------------


def test_backoff_doubles_from_10_seconds_with_jitter_up_to_15_minutes():
    for attempts, nominal in [(1, 10), (2, 20), (3, 40), (4, 80), (7, 640), (8, 900), (30, 900)]:
        waits = [backoff(attempts).total_seconds() for _ in range(50)]
        assert all(0.8 * nominal <= w <= 1.2 * nominal for w in waits), (attempts, min(waits), max(waits))
        assert len(set(waits)) > 1  # jittered


def test_a_receiver_answering_500_is_retried_with_backoff_and_the_alert_arrives_when_it_recovers(receivers):
    receiver = receivers()
    channel = hook("on-call", receiver)
    receiver.fail_next(2, status=500)
    enqueue(failed_incident(schedule(), opened_at=T0), "trigger", now=T0)

    assert deliver_due(now=T0) == 0
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("pending", 1)
    assert "HTTP 500" in notification.last_error and "receiver down" in notification.last_error
    assert T0 + timedelta(seconds=8) <= notification.next_attempt_at <= T0 + timedelta(seconds=12)
    channel.refresh_from_db()
    assert "HTTP 500" in channel.last_error and channel.last_error_at == T0

    # Not due yet: nothing is sent.
    assert deliver_due(now=T0 + timedelta(seconds=5)) == 0
    assert len(receiver.requests) == 1

    second = notification.next_attempt_at
    assert deliver_due(now=second) == 0
    notification.refresh_from_db()
    assert notification.attempts == 2
    assert second + timedelta(seconds=16) <= notification.next_attempt_at <= second + timedelta(seconds=24)

    assert deliver_due(now=notification.next_attempt_at) == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts, notification.last_error) == ("sent", 3, "")
    assert [r.answered for r in receiver.requests] == [500, 500, 200]
    assert receiver.accepted()[0].json["notification_id"] == notification.pk
    channel.refresh_from_db()
    assert (channel.last_error, channel.last_error_at) == ("", None)
    assert channel.last_sent_at == notification.sent_at


def test_after_its_last_attempt_a_notification_is_failed_and_retry_now_sends_it(receivers, settings):
    settings.ALERT_MAX_ATTEMPTS = 3
    receiver = receivers()
    hook("on-call", receiver)
    receiver.fail_next(100, status=503)
    enqueue(failed_incident(schedule(), opened_at=T0), "trigger", now=T0)
    now = T0
    for _ in range(3):
        assert deliver_due(now=now) == 0
        now += timedelta(hours=1)
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("failed", 3)
    assert "HTTP 503" in notification.last_error
    assert deliver_due(now=now + timedelta(days=1)) == 0
    assert len(receiver.requests) == 3  # given up: no fourth try

    receiver.fail_next(0)
    assert retry_now([notification.pk], now=now) == 1
    assert delivery.deliver_now([notification.pk], now=now) == {notification.pk: None}
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("sent", 1)
    assert len(receiver.accepted()) == 1
    assert retry_now([notification.pk], now=now) == 0  # a sent one is never sent again by it


def test_a_sender_that_died_mid_send_is_replaced_once_its_claim_expires(receivers):
    receiver = receivers()
    hook("on-call", receiver)
    enqueue(failed_incident(schedule(), opened_at=T0), "trigger", now=T0)
    row = Notification.objects.values(*delivery.ROW_FIELDS).get()
    # A deliverer claims it and dies before sending or recording anything.
    dead = delivery._claim(row, T0, T0 + timedelta(seconds=60))
    assert dead is not None
    assert deliver_due(now=T0 + timedelta(seconds=30)) == 0  # still its claim
    assert receiver.requests == []
    assert deliver_due(now=T0 + timedelta(seconds=61)) == 1
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("sent", 2)
    # Had the first one come back, its outcome is no longer its to write.
    assert delivery._record([delivery.Outcome(dead, "late news")], T0 + timedelta(seconds=62)) == 0
    notification.refresh_from_db()
    assert (notification.status, notification.last_error) == ("sent", "")


def test_a_message_whose_sender_dies_on_every_try_still_gives_up(receivers, settings):
    settings.ALERT_MAX_ATTEMPTS = 2
    receiver = receivers()
    hook("on-call", receiver)
    enqueue(failed_incident(schedule(), opened_at=T0), "trigger", now=T0)
    now = T0
    for _ in range(2):  # claimed, then the sender dies before it reports: twice
        row = Notification.objects.values(*delivery.ROW_FIELDS).get()
        assert delivery._claim(row, now, now + timedelta(seconds=60)) is not None
        now += timedelta(seconds=61)
    assert deliver_due(now=now) == 0
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("failed", 2)
    assert "never reported back" in notification.last_error
    assert receiver.requests == []


def test_notifications_of_a_disabled_channel_are_not_sent(receivers):
    receiver = receivers()
    channel = hook("on-call", receiver)
    enqueue(failed_incident(schedule(), opened_at=T0), "trigger", now=T0)
    Channel.objects.filter(pk=channel.pk).update(enabled=False)
    assert deliver_due(now=T0) == 0
    notification = Notification.objects.get()
    assert notification.status == "failed" and "disabled" in notification.last_error
    assert receiver.requests == []


# --- isolation -------------------------------------------------------------------------------


def test_one_channel_hanging_or_failing_does_not_delay_another(receivers, settings):
    settings.ALERT_SEND_TIMEOUT = 1.0
    healthy, hanging, failing = receivers(), receivers(), receivers()
    hanging.delay = 4.0
    failing.fail_next(100, status=500)
    for name, receiver in [("healthy", healthy), ("hanging", hanging), ("failing", failing)]:
        hook(name, receiver)
    for n in range(3):
        enqueue(failed_incident(schedule(f"export-{n}"), opened_at=T0), "trigger", now=T0)
    assert Notification.objects.count() == 9

    started = time.monotonic()
    assert deliver_due(now=T0) == 3
    elapsed = time.monotonic() - started
    # The healthy channel's three messages were out at once, not after the hanging one's timeout.
    assert max(r.at for r in healthy.accepted()) - started < 0.9
    assert len(healthy.accepted()) == 3
    # The hanging channel cost one timeout (its other two waited), not three in a row.
    assert elapsed < 2.5, elapsed
    assert len(hanging.requests) <= 1 and len(failing.requests) == 1

    by_channel = {
        name: sorted(
            Notification.objects.filter(channel__name=name).values_list(
                "status", "attempts", "next_attempt_at"
            ),
            key=lambda row: -row[1],
        )
        for name in ("hanging", "failing")
    }
    for name, rows in by_channel.items():
        tried, *waiting = rows
        assert tried[:2] == ("pending", 1), name
        # The rest of a failing channel's batch was not tried and waits as long as the failed one.
        assert [(status, attempts) for status, attempts, _ in waiting] == [("pending", 0)] * 2, name
        assert {at for _, _, at in waiting} == {tried[2]}, name
    assert "timed out" in Channel.objects.get(name="hanging").last_error
    assert Channel.objects.get(name="healthy").last_error == ""


# --- concurrent deliverers ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deliverers_send_each_notification_once(receivers):
    first, second = receivers(), receivers()
    hook("first", first)
    hook("second", second)
    for n in range(20):
        incident = Incident.objects.create(
            scope=f"queue:q{n}", kind="no_worker", summary=f"no worker for q{n}", opened_at=T0
        )
        enqueue(incident, "trigger", now=T0)
    assert Notification.objects.count() == 40

    sent = at_once(*[lambda: deliver_due(now=T0, limit=100)] * 2)
    assert sum(sent) == 40, sent
    received = Counter(r.json["notification_id"] for r in first.requests + second.requests)
    assert set(received) == set(Notification.objects.values_list("pk", flat=True))
    assert set(received.values()) == {1}, "a notification was sent twice"
    assert set(Notification.objects.values_list("status", "attempts")) == {("sent", 1)}


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite refuses the second writer outright (database is locked)"
)
@pytest.mark.django_db(transaction=True)
def test_two_transactions_queueing_the_same_event_at_once_insert_it_once():
    """The unique constraint settles it: the second insert waits for the first, then does nothing."""
    nightly = schedule()
    Channel.objects.create(name="a", kind="slack", target="http://127.0.0.1:9/a", is_default=True)
    Channel.objects.create(name="b", kind="slack", target="http://127.0.0.1:9/b", is_default=True)
    incident = failed_incident(nightly, opened_at=T0)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def queue() -> None:
        try:
            with transaction.atomic():
                barrier.wait()
                enqueue(incident, "trigger", now=T0)
                time.sleep(0.2)  # hold the transaction open while the other one inserts
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=queue) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert Counter(Notification.objects.values_list("channel__name", "event")) == {
        ("a", "trigger"): 1,
        ("b", "trigger"): 1,
    }
