"""``manage.py alertd`` as a real process, beside real beats and a real worker.

- it stops cleanly on SIGTERM, and waits out a database outage (logged once)
  without exiting;
- SIGKILL of the only beat: ONE beat-down incident pages, the slots the next
  leader's catch-up records missed are grouped under it (quiet), and its
  recovery message counts them; nothing is paged per schedule;
- ``diagnostics.fail`` scheduled as an on-call drill: the worker fails it,
  and of two alertd processes one opens the failed incident and the page
  reaches a local webhook once.

Times are short: ``ALERT_CHECK_INTERVAL`` 0.5 s, ``ALERT_BEAT_DOWN_AFTER`` 3 s,
``BEAT_LEASE_SECONDS`` 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts.models import Channel, Incident, Notification
from jobs.models import JobRun, RunStatus
from scheduler.models import SchedulePolicy
from tests.support.alert_receivers import HttpReceiver
from tests.support.processes import Service, start_beat
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def start_alertd(env: dict[str, str], log_dir, name: str = "alertd") -> Service:
    return Service(name, [sys.executable, "manage.py", "alertd"], env, log_dir)


@pytest.fixture
def alert_env(service_env):
    return {
        **service_env,
        "ALERT_CHECK_INTERVAL": "0.5",
        "ALERT_BEAT_DOWN_AFTER": "3",
        "BEAT_LEASE_SECONDS": "2",
    }


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    """A webhook endpoint on 127.0.0.1 that takes every page (``accepted()``)."""
    server = HttpReceiver().start()
    Channel.objects.create(name="on-call", kind="webhook", target=server.url, is_default=True)
    yield server
    server.stop()


def wait_until(condition, timeout: float, what: str, *services: Service):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(f"--- {s.name}:\n{s.log()[-3000:]}" for s in services)
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{logs}")


def every_second_schedules(count: int, job: str = "heartbeat", prefix: str = "alert", **policy) -> list[int]:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    ids = []
    for i in range(count):
        schedule = PeriodicTask.objects.create(name=f"{prefix}-{i}", task=job, interval=every)
        SchedulePolicy.objects.filter(task=schedule).update(anchor=timezone.now(), **policy)
        ids.append(schedule.pk)
    return ids


def test_alertd_stops_cleanly_on_sigterm(alert_env, logs_dir, catalog):
    alertd = start_alertd(alert_env, logs_dir, "alertd-sigterm")
    try:
        alertd.wait_for_log("alertd ready", timeout=60)
        time.sleep(1.5)  # a few cycles
        alertd.process.send_signal(signal.SIGTERM)
        assert alertd.process.wait(timeout=15) == 0
    finally:
        alertd.stop()
    log = alertd.log()
    assert "alertd stopped" in log
    assert "Traceback" not in log


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL over TCP to cut")
def test_alertd_waits_out_a_database_outage_and_logs_it_once(alert_env, logs_dir, catalog):
    settings_dict = connection.settings_dict
    port = int(settings_dict["PORT"] or 5432)
    proxy = TcpProxy(settings_dict["HOST"] or "127.0.0.1", port)
    url = alert_env["DATABASE_URL"].replace(f":{port}/", f":{proxy.port}/")
    alertd = start_alertd({**alert_env, "DATABASE_URL": url}, logs_dir, "alertd-outage")
    try:
        alertd.wait_for_log("alertd ready", timeout=60)
        time.sleep(1.0)
        proxy.cut()
        time.sleep(4.0)  # about 8 cycles without a database
        assert alertd.process.poll() is None, "alertd exited during the outage"
        proxy.restore()
        alertd.wait_for_log("the database is back", timeout=30)
        assert alertd.process.poll() is None
    finally:
        alertd.stop()
        proxy.close()
    log = alertd.log()
    assert log.count("cannot reach the database") == 1, "logged once per outage"


@pytest.mark.timeout(240)
def test_killing_the_only_beat_pages_one_beat_down_incident_not_one_per_schedule(
    alert_env, logs_dir, worker, receiver, catalog
):
    ids = every_second_schedules(5)
    beat = start_beat(alert_env, logs_dir, "beat-to-kill")
    services = [beat]
    try:
        beat.wait_for_log("beat engine loaded", timeout=60)
        wait_until(
            lambda: JobRun.objects.filter(schedule_id__in=ids, status=RunStatus.SUCCEEDED).count() >= 10,
            60,
            "heartbeats succeeding",
            *services,
        )
        # alertd comes second: a beat that starts after its schedules' first slot
        # rightly records the slots before its start missed (its first catch-up).
        alertd = start_alertd(alert_env, logs_dir, "alertd-beat-down")
        services.append(alertd)
        alertd.wait_for_log("alertd ready", timeout=60)
        time.sleep(2)
        assert not Incident.objects.exists(), list(Incident.objects.values_list("summary", flat=True))
        os.kill(beat.process.pid, signal.SIGKILL)
        beat.process.wait(timeout=10)
        killed_at = time.monotonic()
        beat_down = wait_until(
            lambda: Incident.objects.filter(scope="beat").first(), 30, "a beat-down incident", *services
        )
        opened_after = time.monotonic() - killed_at
        time.sleep(3)  # more slots pass with no beat
        beat = start_beat(alert_env, logs_dir, "beat-back")
        services.append(beat)
        wait_until(
            lambda: Incident.objects.filter(pk=beat_down.pk, resolved_at__isnull=False).exists(),
            60,
            "the beat incident resolved",
            *services,
        )
        wait_until(
            lambda: not Incident.objects.filter(resolved_at__isnull=True).exists(),
            60,
            "every grouped schedule incident resolved",
            *services,
        )
        wait_until(lambda: len(receiver.accepted()) >= 2, 30, "the trigger and recovery delivered", *services)
        time.sleep(2)  # anything else alertd would (wrongly) send
    finally:
        for service in services:
            service.stop()

    beat_down.refresh_from_db()
    grouped = Incident.objects.exclude(pk=beat_down.pk)
    print(f"beat down alerted {opened_after:.1f} s after SIGKILL; grouped: {grouped.count()}")
    assert opened_after <= 3 + 2 + 10, "beat down within its threshold (+ lease) + 10 s"
    assert Incident.objects.filter(scope="beat").count() == 1
    assert grouped.count() == len(ids), (
        beat_down.details,
        beat_down.resolved_at,
        [(i.scope, i.kind, i.cause_id, i.quiet, i.opened_at, i.details) for i in grouped],
    )
    assert all(i.kind == "missed" and i.cause_id == beat_down.pk and i.quiet for i in grouped)
    assert beat_down.details["effects"] == len(ids)
    paged = Notification.objects.exclude(incident=beat_down)
    assert not paged.exists(), "a schedule was paged on its own"
    assert sorted(Notification.objects.values_list("event", flat=True)) == ["resolve", "trigger"]
    assert len(receiver.accepted()) == 2, [r.json for r in receiver.accepted()]


@pytest.mark.timeout(180)
def test_a_diagnostics_fail_drill_pages_once_end_to_end_with_two_alertd(
    alert_env, logs_dir, worker, receiver, catalog
):
    every, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.SECONDS)
    drill = PeriodicTask.objects.create(
        name="on-call drill",
        task="diagnostics.fail",
        interval=every,
        kwargs=json.dumps({"message": "on-call drill: this failure is on purpose"}),
    )
    SchedulePolicy.objects.filter(task=drill).update(anchor=timezone.now() - timedelta(seconds=4))
    # Two detectors: the drill still opens one incident and pages once.
    alertds = [start_alertd(alert_env, logs_dir, f"alertd-drill-{i}") for i in range(2)]
    beat = start_beat(alert_env, logs_dir, "beat-drill")
    services = [*alertds, beat]
    try:
        failed = wait_until(
            lambda: (
                JobRun.objects.filter(schedule=drill, status=RunStatus.FAILED).order_by("finished_at").first()
            ),
            60,
            "the drill's run failed",
            *services,
        )
        incident = wait_until(
            lambda: Incident.objects.filter(schedule=drill).first(), 30, "an incident", *services
        )
        detected_after = (incident.opened_at - failed.finished_at).total_seconds()
        wait_until(lambda: receiver.accepted(), 30, "the page delivered to the webhook", *services)
        time.sleep(6)  # the next failure joins the incident, no second page
    finally:
        for service in services:
            service.stop()

    incident.refresh_from_db()
    print(f"drill failure detected {detected_after:.2f} s after it ended")
    assert detected_after <= 10
    assert incident.kind == "failed" and incident.resolved_at is None
    assert incident.details["error_type"].endswith("DrillFailure")
    assert "on purpose" in incident.details["error_message"]
    assert Incident.objects.count() == 1
    notification = Notification.objects.get()
    assert (notification.event, notification.status) == ("trigger", "sent")
    assert len(receiver.accepted()) == 1
