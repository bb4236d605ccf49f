"""Pausing a schedule: the services, and the beat engine claiming its slots as ``skipped``.

The engine runs in-process on the real database and Redis (``beat_engine``);
time is the test's: the engine gets ``now=`` and the services run under
``time_machine`` (they stamp ``paused_at`` and refuse an end in the past).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.models import JobRun, RunStatus
from scheduler.models import CatchUp, SchedulePolicy
from scheduler.services import duplicate_schedule, pause_schedules, resume_schedules
from tests.support.queues import empty_queues, queue_length

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
QUEUE = "pause-tests"  # no worker consumes it
MINUTE = timedelta(minutes=1)


@pytest.fixture
def engine(beat_engine):
    empty_queues([QUEUE])
    return beat_engine


def every_minute(name: str = "hb", catchup: str = CatchUp.LATEST) -> PeriodicTask:
    interval = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)[0]
    task = PeriodicTask.objects.create(name=name, task="heartbeat", interval=interval)
    SchedulePolicy.objects.filter(task=task).update(anchor=T0, created_at=T0, queue=QUEUE, catchup=catchup)
    return task


def selected(*tasks: PeriodicTask):
    return PeriodicTask.objects.filter(pk__in=[t.pk for t in tasks])


def pause(task: PeriodicTask, at: datetime, note: str = "deploy freeze", until: datetime | None = None):
    with time_machine.travel(at, tick=False):
        return pause_schedules(selected(task), note=note, until=until, paused_by="alice")


def runs_of(task) -> list[tuple[datetime, str, str]]:
    return list(
        JobRun.objects.filter(schedule=task)
        .order_by("scheduled_for")
        .values_list("scheduled_for", "status", "error_message")
    )


def tick_minutes(engine, first: int, last: int, seconds: int = 0) -> None:
    for minute in range(first, last + 1):
        engine.tick(now=T0 + minute * MINUTE + timedelta(seconds=seconds))


# --- the services ------------------------------------------------------------------------


def test_a_pause_needs_a_note_and_changes_nothing_without_one():
    task = every_minute()

    with pytest.raises(ValidationError) as refused:
        pause_schedules(selected(task), note="   ", until=None, paused_by="alice")

    assert "needs a note" in refused.value.message_dict["note"][0]
    assert SchedulePolicy.objects.get(task=task).paused_at is None


def test_an_end_time_in_the_past_is_refused():
    task = every_minute()

    with pytest.raises(ValidationError) as refused:
        pause_schedules(
            selected(task), note="deploy", until=datetime(2020, 1, 1, tzinfo=UTC), paused_by="alice"
        )

    assert "in the past" in refused.value.message_dict["until"][0]
    assert SchedulePolicy.objects.get(task=task).paused_at is None


def test_pause_and_resume_are_recorded_in_the_change_log_and_the_audit():
    from auditlog.models import LogEntry

    task = every_minute()
    from scheduler.models import ScheduleChange

    before = ScheduleChange.objects.filter(task_id=task.pk).count()

    assert pause(task, T0, until=T0 + timedelta(hours=1)) == ["hb"]
    policy = SchedulePolicy.objects.get(task=task)
    assert (policy.paused_at, policy.paused_until, policy.pause_note, policy.paused_by) == (
        T0,
        T0 + timedelta(hours=1),
        "deploy freeze",
        "alice",
    )
    assert resume_schedules(selected(task)) == ["hb"]
    assert SchedulePolicy.objects.get(task=task).paused_at is None
    assert resume_schedules(selected(task)) == []  # not paused: left alone

    assert ScheduleChange.objects.filter(task_id=task.pk).count() == before + 2
    changes = [e.changes_dict for e in LogEntry.objects.filter(object_id=str(task.pk)).order_by("id")]
    assert any("pause_note" in c for c in changes), changes


def test_a_duplicate_is_a_disabled_copy_under_a_free_name():
    task = every_minute("nightly")
    SchedulePolicy.objects.filter(task=task).update(overlap="skip", jitter=5)
    first = duplicate_schedule(task)
    second = duplicate_schedule(task)

    assert (first.name, second.name) == ("nightly (copy)", "nightly (copy 2)")
    assert not first.enabled and first.interval_id == task.interval_id and first.task == task.task
    original, copy = SchedulePolicy.objects.get(task=task), SchedulePolicy.objects.get(task=first)
    assert (copy.overlap, copy.jitter, copy.queue) == ("skip", 5, QUEUE)
    assert copy.slug != original.slug


# --- the beat engine ---------------------------------------------------------------------


def test_paused_slots_are_recorded_skipped_with_the_note_and_nothing_is_published(engine):
    task = every_minute()
    engine.load(now=T0)
    pause(task, T0 + timedelta(seconds=30))

    tick_minutes(engine, 1, 3)

    assert runs_of(task) == [
        (T0 + m * MINUTE, RunStatus.SKIPPED, "paused by alice: deploy freeze") for m in (1, 2, 3)
    ]
    assert queue_length(QUEUE) == 0


def test_a_schedule_resumed_by_hand_runs_its_next_slot_and_catches_up_nothing(engine):
    task = every_minute(catchup=CatchUp.ALL)
    engine.load(now=T0)
    pause(task, T0 + timedelta(seconds=30))
    tick_minutes(engine, 1, 2)

    resume_schedules(selected(task))
    tick_minutes(engine, 3, 4)

    assert [(slot, status) for slot, status, _ in runs_of(task)] == [
        (T0 + 1 * MINUTE, RunStatus.SKIPPED),
        (T0 + 2 * MINUTE, RunStatus.SKIPPED),
        (T0 + 3 * MINUTE, RunStatus.QUEUED),
        (T0 + 4 * MINUTE, RunStatus.QUEUED),
    ]


def test_a_pause_with_an_end_resumes_by_itself_at_that_slot(engine):
    task = every_minute()
    engine.load(now=T0)
    pause(task, T0 + timedelta(seconds=30), until=T0 + 3 * MINUTE)

    tick_minutes(engine, 1, 4)

    assert runs_of(task) == [
        (T0 + 1 * MINUTE, RunStatus.SKIPPED, "paused by alice until 2026-11-21 12:03:00 UTC: deploy freeze"),
        (T0 + 2 * MINUTE, RunStatus.SKIPPED, "paused by alice until 2026-11-21 12:03:00 UTC: deploy freeze"),
        (T0 + 3 * MINUTE, RunStatus.QUEUED, ""),
        (T0 + 4 * MINUTE, RunStatus.QUEUED, ""),
    ]
    assert task.pk not in engine.pauses  # forgotten once over: no memory for unpaused schedules


def test_slots_during_a_pause_are_not_caught_up_after_downtime(engine):
    """Beat is down across a pause that ends by itself: downtime is caught up, the pause is not."""
    task = every_minute(catchup=CatchUp.ALL)
    pause(task, T0 + timedelta(seconds=30), until=T0 + 3 * MINUTE)
    SchedulePolicy.objects.filter(task=task).update(last_slot_at=T0)
    # Beat comes back at 12:05:10: slots 1 and 2 were paused, 3, 4 and 5 were downtime.
    now = T0 + 5 * MINUTE + timedelta(seconds=10)
    engine.load(now=now)

    engine.tick(now=now)

    assert [(slot, status) for slot, status, _ in runs_of(task)] == [
        (T0 + 1 * MINUTE, RunStatus.SKIPPED),
        (T0 + 2 * MINUTE, RunStatus.SKIPPED),
        (T0 + 3 * MINUTE, RunStatus.QUEUED),
        (T0 + 4 * MINUTE, RunStatus.QUEUED),
        (T0 + 5 * MINUTE, RunStatus.QUEUED),
    ]


def test_a_slot_due_before_the_pause_but_claimed_after_it_is_skipped(engine):
    task = every_minute()
    engine.load(now=T0)
    pause(task, T0 + MINUTE + timedelta(milliseconds=300))  # beat had not ticked for 12:01 yet

    engine.tick(now=T0 + MINUTE + timedelta(milliseconds=500))

    assert [(slot, status) for slot, status, _ in runs_of(task)] == [(T0 + MINUTE, RunStatus.SKIPPED)]


def test_pausing_and_unpausing_reach_the_engine_within_one_tick(engine):
    task, other = every_minute("paused"), every_minute("other")
    engine.load(now=T0)
    assert not engine.pauses

    pause(task, T0 + timedelta(seconds=10))
    engine.tick(now=T0 + timedelta(seconds=11))
    assert set(engine.pauses) == {task.pk}
    assert engine.entries[task.pk].pending == T0 + MINUTE  # still waits for its slot

    resume_schedules(selected(task))
    engine.tick(now=T0 + timedelta(seconds=12))
    assert not engine.pauses
    tick_minutes(engine, 1, 1)
    assert [status for _, status, _ in runs_of(task)] == [RunStatus.QUEUED]
    assert [status for _, status, _ in runs_of(other)] == [RunStatus.QUEUED]


def test_a_reconcile_notices_a_pause_written_behind_the_change_log(engine):
    task = every_minute()
    engine.load(now=T0)

    SchedulePolicy.objects.filter(task=task).update(paused_at=T0, pause_note="raw SQL")  # no change log

    assert engine.reconcile(now=T0 + timedelta(seconds=5)) == 1
    assert engine.pauses[task.pk].message == "paused: raw SQL"


def test_a_beat_restarted_during_a_pause_skips_the_downtime_slots_instead_of_catching_them_up(engine):
    task = every_minute(catchup=CatchUp.ALL)
    pause(task, T0 + timedelta(seconds=30))
    SchedulePolicy.objects.filter(task=task).update(last_slot_at=T0)
    now = T0 + 3 * MINUTE + timedelta(seconds=10)  # beat was down for slots 1, 2 and 3
    engine.load(now=now)

    engine.tick(now=now)

    assert [(slot, status) for slot, status, _ in runs_of(task)] == [
        (T0 + m * MINUTE, RunStatus.SKIPPED) for m in (1, 2, 3)
    ]
