"""The beat engine in-process, against the real database and broker.

Time is controlled by passing ``now`` to the engine; the database and broker
are real. Each test reads like the behaviour it pins down.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.models import JobRun, OutboxBatch, RunStatus
from scheduler.beat.engine import BeatEngine
from scheduler.models import CatchUp, SchedulePolicy
from scheduler.services import update_schedules
from tests.support.queues import empty_queues, queued_ids

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(beat_engine):
    empty_queues([QUEUE])
    return beat_engine


def every(seconds: int) -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0]


# No test worker consumes this queue, so it shows exactly what beat published.
QUEUE = "engine-tests"


def make_task(name: str, *, interval=None, crontab=None, anchor=T0, catchup=CatchUp.LATEST, deadline=None):
    task = PeriodicTask.objects.create(name=name, task="heartbeat", interval=interval, crontab=crontab)
    SchedulePolicy.objects.filter(task=task).update(
        anchor=anchor, created_at=anchor, catchup=catchup, starting_deadline=deadline, queue=QUEUE
    )
    return task


def runs_of(task) -> list[tuple[datetime, str]]:
    return list(
        JobRun.objects.filter(schedule=task).order_by("scheduled_for").values_list("scheduled_for", "status")
    )


def test_it_claims_and_publishes_every_due_slot_in_one_tick(engine):
    tasks = [make_task(f"hb{i}", interval=every(60)) for i in range(50)]
    engine.load(now=T0)

    engine.tick(now=T0 + timedelta(seconds=60))

    runs = JobRun.objects.filter(schedule__in=tasks)
    assert runs.count() == 50
    assert set(runs.values_list("scheduled_for", flat=True)) == {T0 + timedelta(seconds=60)}
    assert not OutboxBatch.objects.exists()  # sent: the batch left the outbox
    assert sorted(queued_ids(QUEUE)) == sorted(str(pk) for pk in runs.values_list("pk", flat=True))


def test_an_idle_tick_claims_nothing(engine):
    make_task("hb", interval=every(60))
    engine.load(now=T0)

    engine.tick(now=T0 + timedelta(seconds=59))

    assert not JobRun.objects.filter(schedule__name="hb").exists()


def test_a_restarted_engine_does_not_fire_a_slot_again(engine):
    task = make_task("hb", interval=every(60))
    engine.load(now=T0)
    engine.tick(now=T0 + timedelta(seconds=60))

    from scheduler.celery import app

    restarted = BeatEngine(app, poll_interval=0, fallback_poll_interval=0)
    restarted.load(now=T0 + timedelta(seconds=61))
    restarted.tick(now=T0 + timedelta(seconds=61))
    restarted.close()

    assert runs_of(task) == [(T0 + timedelta(seconds=60), RunStatus.QUEUED)]


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        (CatchUp.LATEST, ["missed", "missed", "queued"]),
        (CatchUp.ALL, ["queued"] * 3),
        # The newest slot is two minutes late: past the on-time grace of "none".
        (CatchUp.NONE, ["missed"] * 3),
    ],
)
def test_downtime_is_caught_up_per_the_schedule_policy(engine, catchup, expected):
    task = make_task("hb", interval=every(300), catchup=catchup)
    # Beat was down from T0 until 17 minutes later: slots at 5, 10 and 15 minutes passed.
    engine.load(now=T0 + timedelta(minutes=17))

    engine.tick(now=T0 + timedelta(minutes=17))

    assert [status for _, status in runs_of(task)] == expected
    assert [slot for slot, _ in runs_of(task)] == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]


def test_slots_past_the_starting_deadline_are_recorded_missed(engine):
    task = make_task("hb", interval=every(60), catchup=CatchUp.ALL, deadline=120)
    engine.load(now=T0 + timedelta(seconds=330))

    engine.tick(now=T0 + timedelta(seconds=330))

    statuses = [status for _, status in runs_of(task)]
    # 60..180 s are more than 120 s old at 330 s; 240 and 300 may still run.
    assert statuses == ["missed", "missed", "missed", "queued", "queued"]


def test_an_edit_reaches_the_engine_through_the_change_log(engine):
    task = make_task("hb", interval=every(60))
    engine.load(now=T0)
    assert engine.entries[task.pk].pending == T0 + timedelta(seconds=60)

    task.interval = every(10)
    task.save()
    engine.apply_changes(now=T0 + timedelta(seconds=1))

    assert engine.entries[task.pk].definition.interval == timedelta(seconds=10)
    assert engine.entries[task.pk].pending == T0 + timedelta(seconds=10)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_a_committed_edit_wakes_the_engine_without_a_poll(engine):
    """On PostgreSQL an idle tick reads no change log; the edit's NOTIFY triggers the read."""
    engine.fallback_poll_interval = 3600.0  # no timed poll during this test
    task = make_task("hb", interval=every(60))
    engine.load(now=T0)
    engine.tick(now=T0)
    assert engine.next_poll > time.monotonic() + 60

    task.interval = every(10)
    task.save()  # autocommit: the notification is sent at commit
    deadline = time.monotonic() + 5
    ten_seconds = timedelta(seconds=10)
    while engine.entries[task.pk].definition.interval != ten_seconds and time.monotonic() < deadline:
        engine.tick(now=T0 + timedelta(seconds=1))
        time.sleep(0.01)

    assert engine.entries[task.pk].definition.interval == timedelta(seconds=10)
    assert engine.entries[task.pk].pending == T0 + timedelta(seconds=10)


def test_a_rolled_back_edit_sends_no_notification(engine):
    task = make_task("hb", interval=every(60))
    engine.load(now=T0)
    engine.listener.notified()  # drain what the set-up committed

    with pytest.raises(RuntimeError), transaction.atomic():
        task.interval = every(10)
        task.save()
        raise RuntimeError("abandon the edit")

    time.sleep(0.2)
    assert not engine.listener.notified()


def test_editing_a_shared_crontab_updates_every_task_that_uses_it(engine):
    crontab = CrontabSchedule.objects.create(minute="0", hour="6", timezone="UTC")
    tasks = [make_task(f"daily{i}", crontab=crontab) for i in range(3)]
    engine.load(now=T0)

    crontab.hour = "18"
    crontab.save()
    engine.apply_changes(now=T0)

    for task in tasks:
        assert engine.entries[task.pk].pending == datetime(2026, 11, 21, 18, 0, tzinfo=UTC)


def test_a_disabled_or_deleted_task_stops_firing(engine):
    kept, disabled, deleted = (make_task(n, interval=every(60)) for n in ("kept", "disabled", "deleted"))
    engine.load(now=T0)

    update_schedules(PeriodicTask.objects.filter(pk=disabled.pk), enabled=False)
    deleted.delete()
    engine.apply_changes(now=T0)
    engine.tick(now=T0 + timedelta(seconds=60))

    fired = JobRun.objects.filter(schedule_id__in=[kept.pk, disabled.pk, deleted.pk])
    assert [r.schedule_id for r in fired] == [kept.pk]
    assert not JobRun.objects.filter(schedule_name="deleted").exists()


def test_a_raw_sql_edit_is_caught_by_reconcile(engine):
    task = make_task("hb", interval=every(60))
    engine.load(now=T0)

    PeriodicTask.objects.filter(pk=task.pk).update(interval=every(5))  # no signal, no change log
    engine.apply_changes(now=T0)
    assert engine.entries[task.pk].definition.interval == timedelta(seconds=60)

    assert engine.reconcile(now=T0) == 1
    assert engine.entries[task.pk].definition.interval == timedelta(seconds=5)


def test_update_schedules_refuses_to_bypass_job_validation():
    with pytest.raises(ValueError, match="cannot change"):
        update_schedules(PeriodicTask.objects.all(), task="no.such.job")


def test_a_one_off_clocked_schedule_fires_once(engine):
    from django_celery_beat.models import ClockedSchedule

    with time_machine.travel(T0, tick=False):  # a one-off time in the past is refused on save
        clocked = ClockedSchedule.objects.create(clocked_time=T0 + timedelta(seconds=30))
        task = PeriodicTask.objects.create(name="once", task="heartbeat", clocked=clocked, one_off=True)
    SchedulePolicy.objects.filter(task=task).update(created_at=T0, queue=QUEUE)
    engine.load(now=T0)

    engine.tick(now=T0 + timedelta(seconds=31))
    engine.tick(now=T0 + timedelta(seconds=90))

    assert len(runs_of(task)) == 1


def test_jitter_delays_dispatch_but_keeps_the_slot(engine):
    task = make_task("hb", interval=every(60))
    SchedulePolicy.objects.filter(task=task).update(jitter=30)
    engine.load(now=T0)
    fire_at = engine.heap[0].due_at
    slot = T0 + timedelta(seconds=60)

    assert slot <= fire_at < slot + timedelta(seconds=30)
    engine.tick(now=fire_at)
    assert runs_of(task) == [(slot, RunStatus.QUEUED)]


def test_the_fast_full_load_and_the_per_task_load_agree(engine):
    """The full load, the per-task read and reconcile's walk build the same entries."""
    from scheduler.beat.entries import EntryFactory, fetch_rows, fetch_rows_after, job_defaults

    crontab = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
    tasks = [make_task("cron", crontab=crontab), make_task("interval", interval=every(60))]
    SchedulePolicy.objects.filter(task=tasks[1]).update(last_slot_at=T0 + timedelta(microseconds=123457))
    factory = EntryFactory(job_defaults())

    full = {row[0]: factory.build(row) for row in fetch_rows()}
    walked = {row[0]: row for row in fetch_rows_after(0, 10)}
    for task in tasks:
        (row,) = fetch_rows([task.pk])
        entry, last_slot, created = EntryFactory(job_defaults()).build(row)
        expected, expected_last_slot, expected_created = full[task.pk]
        assert (last_slot, created, entry.anchor) == (expected_last_slot, expected_created, expected.anchor)
        assert entry.definition == expected.definition
        assert factory.matches(expected, walked[task.pk])
    assert full[tasks[1].pk][1] == T0 + timedelta(microseconds=123457)


def test_reconcile_walks_in_steps_and_catches_raw_edits_and_deletes(engine, monkeypatch):
    """Each tick compares one step of rows; edits and deletions made with raw SQL are found."""
    from scheduler.beat import engine as engine_module

    monkeypatch.setattr(engine_module, "RECONCILE_STEP", 2)
    tasks = [make_task(f"hb{i}", interval=every(60)) for i in range(5)]
    engine.load(now=T0)
    PeriodicTask.objects.filter(pk=tasks[1].pk).update(interval=every(5))  # no signal, no change log
    SchedulePolicy.objects.filter(task=tasks[3]).update(anchor=T0 + timedelta(seconds=7))
    PeriodicTask.objects.filter(pk=tasks[4].pk).update(enabled=False)

    steps = 1
    while not engine.reconcile_step(now=T0):
        steps += 1

    assert steps == 3  # 2 + 2 + 1 rows
    assert engine.last_reconcile_changes == 3
    assert engine.entries[tasks[1].pk].definition.interval == timedelta(seconds=5)
    assert engine.entries[tasks[3].pk].anchor == T0 + timedelta(seconds=7)
    assert tasks[4].pk not in engine.entries
    assert engine.reconcile(now=T0) == 0  # nothing differs any more


def test_edited_entries_do_not_pile_up_in_the_heap(engine):
    """Lazy deletion is bounded: dead copies are dropped once they are a quarter of the heap."""
    tasks = [make_task(f"daily{i}", interval=every(86400)) for i in range(40)]
    engine.load(now=T0)
    engine.retired_in_heap = 0

    for round_ in range(3):
        update_schedules(PeriodicTask.objects.filter(pk__in=[t.pk for t in tasks]), description=f"r{round_}")
        engine.apply_changes(now=T0)
        # Each round retires 40 entries; below the threshold they wait in the heap.
        assert engine.retired_in_heap == 40 * (round_ + 1)
    engine.retired_in_heap += 1000  # as if many more edits had happened
    engine._compact_heap()

    assert engine.retired_in_heap == 0
    assert sorted(e.task_id for e in engine.heap) == sorted(t.pk for t in tasks)
    assert all(not e.retired for e in engine.heap)


def test_the_engine_sends_outbox_batches_other_processes_left_behind(engine):
    """A batch older than the sweep age is sent and cleared; a young one is left to its sender."""
    from scheduler.beat.dispatch import PlannedSlot, claim_slots
    from scheduler.beat.engine import OUTBOX_SWEEP_AGE

    task = make_task("hb", interval=every(3600))
    engine.load(now=T0)
    entry = engine.entries[task.pk]
    old = claim_slots([PlannedSlot(entry, T0 - timedelta(hours=2))])  # committed, never sent
    young = claim_slots([PlannedSlot(entry, T0 - timedelta(hours=1))])
    OutboxBatch.objects.filter(pk=old.outbox_batch).update(
        created_at=timezone.now() - OUTBOX_SWEEP_AGE - timedelta(seconds=1)
    )

    engine.tick(now=T0)

    assert queued_ids(QUEUE) == [str(old.runs[0].pk)]
    assert list(OutboxBatch.objects.values_list("pk", flat=True)) == [young.outbox_batch]
