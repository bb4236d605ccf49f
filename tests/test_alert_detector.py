"""The alert detector's conditions, on the real database, with time passed in (``now=``).

Each condition opens one incident, pages it once (a ``Notification`` per
default channel), reminds per the schedule's interval and resolves once
with a recovery message; a disabled schedule is paused; a mute keeps an
incident quiet; a system incident (a queue without a worker, beat down)
groups the schedule incidents it causes. A cycle's statements do not grow
with the number of schedules.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts.detector import Detector
from alerts.maintenance import mute
from alerts.models import Channel, Flip, Health, Incident, Notification, ScheduleHealth
from jobs.catalog import publish_catalog
from jobs.models import JobRun, RunStatus, WorkerPresence
from scheduler.models import BeatLease, SchedulePolicy
from scheduler.services import pause_schedules, resume_schedules
from tests.support.threads import at_once

pytestmark = pytest.mark.django_db

QUEUES = ["default", "heartbeat", "reports"]


@pytest.fixture(autouse=True)
def setup(db):
    publish_catalog(worker="tests")
    Channel.objects.create(name="on-call", kind="webhook", target="http://127.0.0.1:9/", is_default=True)


def make_schedule(name: str = "nightly", job: str = "heartbeat", **policy) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    schedule = PeriodicTask.objects.create(name=name, task=job, interval=every)
    if policy:
        SchedulePolicy.objects.filter(task=schedule).update(**policy)
    return schedule


def workers_alive(now, queues=QUEUES) -> None:
    WorkerPresence.objects.update_or_create(
        hostname="w1@test", defaults={"queues": queues, "jobs": [], "last_seen_at": now, "started_at": now}
    )


def ended(schedule, status, *, slot, took: float = 1.0, late: float = 0.5, **fields) -> JobRun:
    started = slot + timedelta(seconds=late)
    return JobRun.objects.create(
        schedule=schedule,
        job=schedule.task,
        queue="heartbeat",
        scheduled_for=slot,
        status=status,
        started_at=started,
        finished_at=started + timedelta(seconds=took),
        lateness_ms=int(late * 1000),
        attempt=1,
        **fields,
    )


def notifications(event: str | None = None, incident: Incident | None = None) -> int:
    found = Notification.objects.all()
    if event:
        found = found.filter(event=event)
    if incident:
        found = found.filter(incident=incident)
    return found.count()


def state(schedule) -> str:
    health = ScheduleHealth.objects.filter(schedule=schedule).first()
    return health.state if health else Health.UP


@pytest.fixture
def clock():
    """A detector and a moving 'now' (each cycle 5 s after the last unless told)."""

    class Clock:
        def __init__(self) -> None:
            self.now = timezone.now()
            self.detector = Detector()
            workers_alive(self.now)

        def cycle(self, after: float = 5.0):
            self.now += timedelta(seconds=after)
            workers_alive(self.now)
            return self.detector.run_cycle(self.now)

    return Clock()


# --- failed ----------------------------------------------------------------------------


def test_a_failure_opens_one_incident_pages_once_and_a_success_resolves_it_once(clock):
    schedule = make_schedule()
    failed = ended(
        schedule,
        RunStatus.FAILED,
        slot=clock.now - timedelta(seconds=3),
        error_type="jobs.builtin.diagnostics.DrillFailure",
        error_message="boom",
    )

    first = clock.cycle()
    assert (first.opened, first.paged) == (1, 1)
    incident = Incident.objects.get()
    assert (incident.kind, incident.run_id) == ("failed", failed.pk)
    assert incident.scope == f"schedule:{schedule.pk}"
    assert incident.details["error_type"] == "jobs.builtin.diagnostics.DrillFailure"
    assert incident.details["error_message"] == "boom"
    assert incident.details["slot"] == failed.scheduled_for.isoformat()
    assert incident.alerted_at is not None and not incident.quiet
    assert notifications("trigger") == 1
    assert state(schedule) == Health.DOWN
    assert list(Flip.objects.values_list("old_state", "new_state")) == [("up", "down")]

    for _ in range(3):  # the same failure, re-read: nothing new
        again = clock.cycle()
        assert (again.opened, again.paged, again.resolved) == (0, 0, 0)
    assert notifications() == 1

    good = ended(schedule, RunStatus.SUCCEEDED, slot=clock.now - timedelta(seconds=2))
    recovered = clock.cycle()
    assert recovered.resolved == 1
    incident.refresh_from_db()
    assert incident.resolved_at is not None and incident.resolve_alerted_at is not None
    assert "recovered" in incident.resolution
    assert notifications("resolve") == 1
    assert state(schedule) == Health.UP
    assert ScheduleHealth.objects.get(schedule=schedule).last_good_run_id == good.pk
    assert Flip.objects.count() == 2

    for _ in range(3):
        assert clock.cycle().resolved == 0
    assert notifications() == 2 and Incident.objects.count() == 1


def test_failures_before_alert_and_successes_before_recovery(clock):
    schedule = make_schedule(failures_before_alert=2, successes_before_recovery=2)
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=4))
    assert clock.cycle().opened == 0, "one failure of two"
    ended(schedule, RunStatus.FAILED, slot=clock.now)
    assert clock.cycle().opened == 1
    assert Incident.objects.get().details["failures"] == 2

    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now)
    assert clock.cycle().resolved == 0, "one success of two"
    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now)
    assert clock.cycle().resolved == 1
    assert notifications("trigger") == notifications("resolve") == 1


def test_a_second_condition_joins_the_open_incident_without_paging(clock):
    schedule = make_schedule()
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=4))
    clock.cycle()
    ended(schedule, RunStatus.LOST, slot=clock.now - timedelta(seconds=1))
    report = clock.cycle()
    assert (report.opened, report.conditions_added) == (0, 1)
    incident = Incident.objects.get()
    assert [c["kind"] for c in incident.details["conditions"]] == ["failed", "lost"]
    assert notifications() == 1


@pytest.mark.parametrize(("status", "timeout"), [("soft_timeout", "soft"), ("hard_timeout", "hard")])
def test_timeouts_are_told_apart(clock, status, timeout):
    schedule = make_schedule()
    ended(schedule, status, slot=clock.now - timedelta(seconds=3), error_type="TimeLimitExceeded")
    clock.cycle()
    incident = Incident.objects.get()
    assert (incident.kind, incident.details["timeout"]) == ("timed_out", timeout)
    assert f"{timeout} limit" in incident.summary


def test_a_lost_run_opens_a_lost_incident(clock):
    schedule = make_schedule()
    ended(schedule, RunStatus.LOST, slot=clock.now - timedelta(seconds=3), error_type="WorkerLostError")
    clock.cycle()
    assert Incident.objects.get().kind == "lost"


# --- missed ------------------------------------------------------------------------------


def test_a_run_still_waiting_past_its_grace_is_missed_and_its_start_and_success_resolve_it(clock):
    schedule = make_schedule(grace=20)
    slot = clock.now - timedelta(seconds=10)
    run = JobRun.objects.create(
        schedule=schedule, job="heartbeat", queue="heartbeat", scheduled_for=slot, status=RunStatus.QUEUED
    )
    assert clock.cycle().opened == 0, "within its grace"
    report = clock.cycle(after=6)
    assert (report.opened, report.paged) == (1, 1)
    incident = Incident.objects.get()
    assert incident.kind == "missed" and incident.cause_id is None
    assert incident.details["grace_s"] == 20
    assert state(schedule) == Health.DOWN
    assert clock.cycle().opened == 0

    JobRun.objects.filter(pk=run.pk).update(
        status=RunStatus.SUCCEEDED, started_at=clock.now, finished_at=clock.now, lateness_ms=26000
    )
    assert clock.cycle().resolved == 1
    assert notifications("resolve") == 1 and state(schedule) == Health.UP


def test_a_slot_recorded_missed_opens_a_missed_incident(clock):
    schedule = make_schedule()
    JobRun.objects.create(
        schedule=schedule,
        job="heartbeat",
        queue="heartbeat",
        scheduled_for=clock.now - timedelta(seconds=120),
        status=RunStatus.MISSED,
        finished_at=clock.now,
        error_message="not run: past its starting deadline",
    )
    clock.cycle()
    assert Incident.objects.get().kind == "missed"
    assert notifications("trigger") == 1


def test_a_schedule_beat_quarantined_pages_once_and_its_next_good_run_resolves_it(clock):
    """No slot is ever claimed for a quarantined schedule: without this it could never be missed."""
    schedule = make_schedule()
    reason = "not scheduled: crontab minute '61' is out of range"
    SchedulePolicy.objects.filter(task=schedule).update(problem=reason)  # as beat writes it

    clock.cycle()
    clock.cycle()  # still quarantined: the same condition, no second page
    incident = Incident.objects.get()
    assert (incident.kind, incident.schedule_id, incident.run_id) == ("not_scheduled", schedule.pk, None)
    assert reason in incident.summary and incident.details["run_id"] is None
    assert notifications("trigger") == 1 and state(schedule) == Health.DOWN

    SchedulePolicy.objects.filter(task=schedule).update(problem="")  # the row was fixed; beat clears it
    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now)
    clock.cycle()
    incident.refresh_from_db()
    assert incident.resolved_at is not None and notifications("resolve") == 1
    assert state(schedule) == Health.UP


def test_a_disabled_quarantined_schedule_does_not_page(clock):
    schedule = make_schedule()
    SchedulePolicy.objects.filter(task=schedule).update(problem="not scheduled: unknown time zone")
    PeriodicTask.objects.filter(pk=schedule.pk).update(enabled=False)
    clock.cycle()
    assert not Incident.objects.exists()


# --- late and overrun ---------------------------------------------------------------------


def test_a_late_start_is_a_warning_and_an_on_time_success_clears_it(clock):
    schedule = make_schedule(late_after=5)
    slot = clock.now - timedelta(seconds=8)
    late = JobRun.objects.create(
        schedule=schedule,
        job="heartbeat",
        queue="heartbeat",
        scheduled_for=slot,
        status=RunStatus.RUNNING,
        started_at=slot + timedelta(seconds=7),
        lateness_ms=7000,
        attempt=1,
    )
    assert clock.cycle().opened == 1
    incident = Incident.objects.get()
    assert (incident.kind, incident.details["late_by_s"]) == ("late", 7.0)
    assert state(schedule) == Health.LATE

    JobRun.objects.filter(pk=late.pk).update(status=RunStatus.SUCCEEDED, finished_at=clock.now)
    assert clock.cycle().resolved == 0, "a late success does not clear lateness"
    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now, late=0.2)
    assert clock.cycle().resolved == 1
    assert state(schedule) == Health.UP
    assert notifications("trigger") == notifications("resolve") == 1


def test_a_late_run_seen_only_once_it_ended_is_late_too(clock):
    schedule = make_schedule(late_after=5)
    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now - timedelta(seconds=12), late=9)
    assert clock.cycle().opened == 1
    assert (Incident.objects.get().kind, state(schedule)) == ("late", Health.LATE)


def test_a_run_still_running_past_its_expected_duration_is_an_overrun(clock):
    schedule = make_schedule(expected_duration=30)
    JobRun.objects.create(
        schedule=schedule,
        job="heartbeat",
        queue="heartbeat",
        scheduled_for=clock.now - timedelta(seconds=20),
        status=RunStatus.RUNNING,
        started_at=clock.now - timedelta(seconds=20),
        lateness_ms=10,
        attempt=1,
    )
    assert clock.cycle().opened == 0
    assert clock.cycle(after=10).opened == 1
    incident = Incident.objects.get()
    assert incident.kind == "overrun"
    assert incident.details["expected_duration_s"] == 30 and incident.details["running_for_s"] >= 30
    assert clock.cycle().opened == 0 and notifications() == 1


# --- reminders --------------------------------------------------------------------------


def test_an_open_incident_is_reminded_every_interval_with_a_sequence_until_it_resolves(clock):
    schedule = make_schedule(remind_every=60)
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    assert clock.cycle(after=30).reminded == 0
    assert clock.cycle(after=31).reminded == 1
    assert clock.cycle(after=5).reminded == 0
    assert clock.cycle(after=60).reminded == 1
    sequences = Notification.objects.filter(event="remind").values_list("sequence", flat=True)
    assert sorted(sequences) == [1, 2]
    assert Incident.objects.get().reminders_sent == 2

    ended(schedule, RunStatus.SUCCEEDED, slot=clock.now)
    clock.cycle()
    assert clock.cycle(after=200).reminded == 0


def test_remind_every_zero_never_reminds(clock):
    schedule = make_schedule(remind_every=0)
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    assert Incident.objects.get().next_reminder_at is None
    assert clock.cycle(after=100_000).reminded == 0


# --- paused, maintenance --------------------------------------------------------------------


def test_a_disabled_schedule_is_paused_and_its_incident_resolves_quietly(clock):
    schedule = make_schedule()
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    schedule.enabled = False
    schedule.save()
    assert clock.cycle().resolved == 1
    incident = Incident.objects.get()
    assert incident.resolved_at and "paused" in incident.resolution
    assert notifications("resolve") == 0
    assert state(schedule) == Health.PAUSED
    assert clock.cycle().opened == 0, "a paused schedule's old failure does not reopen"

    schedule.enabled = True
    schedule.save()
    clock.cycle()
    assert state(schedule) == Health.UP
    assert clock.cycle().opened == 0, "nor once resumed"
    assert list(Flip.objects.order_by("at", "id").values_list("new_state", flat=True)) == [
        "down",
        "paused",
        "up",
    ]


def test_a_paused_schedule_resolves_quietly_and_is_up_again_when_its_pause_ends_by_itself(clock):
    schedule = make_schedule()
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    until = clock.now + timedelta(seconds=60)
    pause_schedules(PeriodicTask.objects.filter(pk=schedule.pk), "deploy freeze", until, "alice")

    assert clock.cycle().resolved == 1
    incident = Incident.objects.get()
    assert incident.resolution == "schedule paused (paused)"
    assert notifications("resolve") == 0
    assert state(schedule) == Health.PAUSED
    assert clock.cycle(after=30).opened == 0, "still paused: the old failure does not reopen"
    assert state(schedule) == Health.PAUSED

    clock.cycle(after=60)  # past its end time: nothing was written, the detector sees the time
    assert state(schedule) == Health.UP
    assert clock.cycle().opened == 0


def test_resuming_a_paused_schedule_by_hand_makes_it_up(clock):
    schedule = make_schedule()
    tasks = PeriodicTask.objects.filter(pk=schedule.pk)
    pause_schedules(tasks, "vendor outage", None, "alice")
    clock.cycle()
    assert state(schedule) == Health.PAUSED
    clock.cycle(after=3600)
    assert state(schedule) == Health.PAUSED, "a pause without an end lasts until resumed"
    resume_schedules(tasks)
    clock.cycle()
    assert state(schedule) == Health.UP


def test_a_muted_schedule_opens_quietly_and_pages_when_it_fails_again_after_the_mute(clock):
    schedule = make_schedule()
    window = mute(schedule=schedule, note="DB migration", ends_at=clock.now + timedelta(seconds=30))
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    report = clock.cycle()
    assert (report.opened, report.paged) == (1, 0)
    incident = Incident.objects.get()
    assert incident.quiet and incident.details["muted_until"] == window.ends_at.isoformat()
    assert notifications() == 0

    ended(schedule, RunStatus.FAILED, slot=clock.now)
    assert clock.cycle().escalated == 0, "still muted"
    ended(schedule, RunStatus.FAILED, slot=clock.now + timedelta(seconds=30))
    report = clock.cycle(after=35)
    assert report.escalated == 1
    assert notifications("trigger") == 1
    assert not Incident.objects.get().quiet


def test_a_reminder_due_during_a_mute_waits_for_its_end(clock):
    schedule = make_schedule(remind_every=60)
    ended(schedule, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    window = mute(everything=True, note="planned outage", ends_at=clock.now + timedelta(seconds=300))
    assert clock.cycle(after=65).reminded == 0
    assert Incident.objects.get().next_reminder_at == window.ends_at
    assert clock.cycle(after=240).reminded == 1, "the mute is over"
    assert notifications("remind") == 1


def test_a_mute_of_a_job_or_everything_covers_its_schedules(clock):
    first, second = make_schedule("a"), make_schedule("b", job="diagnostics.fail")
    mute(job="diagnostics.fail", note="known broken", ends_at=clock.now + timedelta(hours=1))
    ended(first, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    ended(second, RunStatus.FAILED, slot=clock.now - timedelta(seconds=3))
    clock.cycle()
    assert dict(Incident.objects.values_list("schedule_id", "quiet")) == {first.pk: False, second.pk: True}


# --- root causes -------------------------------------------------------------------------


def test_a_queue_without_a_worker_pages_once_and_groups_the_schedules_it_stalls(clock):
    schedules = [make_schedule(f"s{i}", grace=60) for i in range(3)]
    slot = clock.now - timedelta(seconds=5)
    runs = [
        JobRun.objects.create(
            schedule=s, job="heartbeat", queue="heartbeat", scheduled_for=slot, status=RunStatus.QUEUED
        )
        for s in schedules
    ]
    clock.cycle(after=0)
    WorkerPresence.objects.all().delete()
    clock.detector.run_cycle(clock.now + timedelta(seconds=40))  # waiting 45 s: no worker
    clock.now += timedelta(seconds=40)
    system = Incident.objects.get(kind="no_worker")
    assert (system.scope, system.details["waiting_runs"], system.quiet) == ("queue:heartbeat", 3, False)

    clock.detector.run_cycle(clock.now + timedelta(seconds=30))  # past their grace: missed, grouped
    clock.now += timedelta(seconds=30)
    grouped = Incident.objects.filter(kind="missed")
    assert grouped.count() == 3
    assert all(i.cause_id == system.pk and i.quiet for i in grouped)
    assert notifications("trigger") == 1, "one page for the queue, none per schedule"

    clock.cycle()  # a worker again (clock.cycle publishes presence)
    system.refresh_from_db()
    assert system.resolved_at and system.details["effects"] == 3
    assert notifications("resolve", system) == 1
    for run in runs:
        JobRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SUCCEEDED, started_at=clock.now, finished_at=clock.now, lateness_ms=80_000
        )
    clock.cycle()
    assert not Incident.objects.filter(resolved_at__isnull=True).exists()
    assert notifications("resolve") == 1, "the grouped schedules recover without a page each"


def test_beat_down_pages_once_and_groups_the_slots_its_catch_up_records_missed(clock, settings):
    settings.ALERT_BEAT_DOWN_AFTER = 10
    schedules = [make_schedule(f"s{i}") for i in range(4)]
    last_tick = clock.now
    BeatLease.objects.create(name="beat", holder="h:1:a", token=3, expires_at=last_tick, renewed_at=last_tick)
    assert clock.cycle().opened == 0
    clock.cycle(after=10)
    beat = Incident.objects.get(scope="beat")
    assert beat.kind == "beat_down" and beat.details["last_tick_at"] == last_tick.isoformat()
    assert notifications("trigger") == 1

    # A new leader catches up: the slots of the outage are recorded missed.
    back = clock.now + timedelta(seconds=20)
    BeatLease.objects.filter(name="beat").update(holder="h:2:b", token=4, renewed_at=back, expires_at=back)
    for schedule in schedules:
        JobRun.objects.create(
            schedule=schedule,
            job="heartbeat",
            queue="heartbeat",
            scheduled_for=last_tick + timedelta(seconds=10),
            status=RunStatus.MISSED,
            finished_at=back,
            error_message="not run: catch-up policy latest",
        )
    clock.cycle(after=21)
    beat.refresh_from_db()
    assert beat.resolved_at is None and beat.details["back_at"] == back.isoformat()
    missed = Incident.objects.filter(kind="missed")
    assert missed.count() == 4 and all(i.cause_id == beat.pk and i.quiet for i in missed)

    renewed = back + timedelta(seconds=3)
    BeatLease.objects.filter(name="beat").update(renewed_at=renewed, expires_at=renewed)
    clock.cycle()
    beat.refresh_from_db()
    assert beat.resolved_at and beat.details["effects"] == 4 and "4 schedule incidents" in beat.resolution
    assert notifications("trigger") == notifications("resolve") == 1
    for schedule in schedules:
        ended(schedule, RunStatus.SUCCEEDED, slot=clock.now)
    clock.cycle()
    assert not Incident.objects.filter(resolved_at__isnull=True).exists()
    assert notifications() == 2


def test_no_lease_row_means_beat_is_not_judged(clock, settings):
    settings.ALERT_BEAT_DOWN_AFTER = 1
    clock.cycle(after=100)
    assert not Incident.objects.exists()


# --- several detectors, cost ------------------------------------------------------------------


def ready_for_a_race() -> None:
    """Two detectors at once need PostgreSQL; a transactional test sets up what ``setup`` would."""
    if connection.vendor != "postgresql":
        pytest.skip("two writers at once: PostgreSQL (SQLite serialises them)")
    publish_catalog(worker="tests")
    Channel.objects.get_or_create(
        name="on-call", defaults={"kind": "webhook", "target": "http://127.0.0.1:9/", "is_default": True}
    )


@pytest.mark.django_db(transaction=True)
def test_two_detectors_racing_open_one_incident_and_queue_one_notification():
    ready_for_a_race()
    now = timezone.now()
    workers_alive(now)
    schedules = [make_schedule(f"race-{i}") for i in range(20)]
    for schedule in schedules:
        ended(schedule, RunStatus.FAILED, slot=now - timedelta(seconds=3))
    reports = []
    for moment in (now + timedelta(seconds=1), now + timedelta(seconds=2)):
        # Two detectors' cycles at once; neither may raise.
        reports += at_once(*[lambda at=moment: Detector().run_cycle(at)] * 2)
    assert Incident.objects.count() == 20
    assert Notification.objects.filter(event="trigger").count() == 20
    assert Flip.objects.count() == 20
    assert sum(r.opened for r in reports) == 20


@pytest.mark.django_db(transaction=True)
def test_two_detectors_grouping_one_outage_open_each_grouped_incident_once():
    ready_for_a_race()
    now = timezone.now()
    for i in range(200):
        JobRun.objects.create(
            schedule=make_schedule(f"stalled-{i}"),
            job="heartbeat",
            # Not a queue the suite's real worker serves: it may be running (its
            # presence is in this database), and it would make the queue served.
            queue="unserved",
            scheduled_for=now - timedelta(seconds=90),
            status=RunStatus.QUEUED,
        )
    # Two detectors' cycles a millisecond apart, at once; neither may raise.
    at_once(lambda: Detector().run_cycle(now), lambda: Detector().run_cycle(now + timedelta(milliseconds=1)))
    system = Incident.objects.get(kind="no_worker")
    grouped = Incident.objects.filter(kind="missed")
    assert grouped.count() == 200 and set(grouped.values_list("cause_id", flat=True)) == {system.pk}
    assert Flip.objects.count() == 200
    assert Notification.objects.count() == 1


def test_a_cycle_costs_the_same_statements_for_20_or_2000_healthy_schedules(clock):
    def seed(count: int, prefix: str) -> None:
        every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.bulk_create(
            [PeriodicTask(name=f"{prefix}{i}", task="heartbeat", interval=every) for i in range(count)]
        )
        ids = PeriodicTask.objects.filter(name__startswith=prefix).values_list("pk", flat=True)
        SchedulePolicy.objects.bulk_create([SchedulePolicy(task_id=pk, slug=f"{prefix}{pk}") for pk in ids])
        slot = clock.now
        JobRun.objects.bulk_create(
            [
                JobRun(
                    schedule_id=pk,
                    job="heartbeat",
                    queue="heartbeat",
                    scheduled_for=slot,
                    status=RunStatus.SUCCEEDED,
                    started_at=slot,
                    finished_at=slot + timedelta(seconds=1),
                    lateness_ms=100,
                )
                for pk in ids
            ]
        )

    seed(20, "few-")
    clock.cycle(after=0)
    few = clock.cycle(after=2)
    seed(1980, "many-")
    many = clock.cycle(after=2)
    assert many.queries == few.queries, (few, many)
    assert many.schedules_judged == 0 and many.opened == 0
