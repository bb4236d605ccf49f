"""A schedule's priority (``PeriodicTask.priority``) reaches the broker, from beat, run now and the outbox.

On Redis, kombu keeps one list per priority level (``priority_steps`` 0-9 in
settings) and a worker pops the lowest level first: 0 goes first. On RabbitMQ
the queues are declared with ``x-max-priority`` (``BROKER_QUEUE_MAX_PRIORITY``)
and the higher priority goes first. The last test proves the order with the
real worker: while both its children are busy, runs of the last priority are
queued, then a run now of a schedule with a better one; the latter starts first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.dispatch import dispatch
from jobs.limits import broker_is_redis
from jobs.models import JobRun, OutboxBatch, RunStatus
from jobs.publishing import REDIS_MAX_PRIORITY, publish_outbox, record_outbox
from scheduler.celery import app
from scheduler.models import SchedulePolicy
from scheduler.services import run_schedules_now
from tests.conftest import wait_for_run
from tests.support.queues import empty_queues, waiting_priorities

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
QUEUE = "priority-tests"  # no worker consumes it


def highest_priority() -> int:
    """The highest priority the configured broker takes (Redis: 9, which goes last)."""
    return REDIS_MAX_PRIORITY if broker_is_redis() else settings.BROKER_QUEUE_MAX_PRIORITY


def first_and_last() -> tuple[int, int]:
    """(a priority that goes first, one that goes last) on the configured broker."""
    return (1, REDIS_MAX_PRIORITY) if broker_is_redis() else (settings.BROKER_QUEUE_MAX_PRIORITY - 1, 1)


def every_minute(name: str, priority: int | None, job: str = "heartbeat", args: str = "[]") -> PeriodicTask:
    interval = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)[0]
    task = PeriodicTask.objects.create(name=name, task=job, args=args, interval=interval, priority=priority)
    SchedulePolicy.objects.filter(task=task).update(anchor=T0, created_at=T0, queue=QUEUE)
    return task


@pytest.fixture
def queue():
    empty_queues([QUEUE])
    yield QUEUE
    empty_queues([QUEUE])


def test_a_priority_out_of_the_brokers_range_is_refused_with_the_range():
    too_high = highest_priority() + 1
    with pytest.raises(ValidationError) as refused:
        every_minute("too high", priority=too_high + 2)
    expected = (
        "with the Redis broker it is 0 to 9, and 0 goes first"
        if broker_is_redis()
        else f"with RabbitMQ it is 0 to {settings.BROKER_QUEUE_MAX_PRIORITY} (BROKER_QUEUE_MAX_PRIORITY), "
        "and higher goes first"
    )
    assert expected in refused.value.message_dict["priority"][0]
    assert not PeriodicTask.objects.filter(name="too high").exists()

    with pytest.raises(ValidationError):
        dispatch("heartbeat", priority=too_high)
    assert not JobRun.objects.exists()


def test_beat_publishes_each_slot_with_its_schedules_priority(beat_engine, queue):
    urgent, plain = every_minute("urgent", priority=7), every_minute("plain", priority=None)
    beat_engine.load(now=T0)

    beat_engine.tick(now=T0 + timedelta(seconds=60))

    assert waiting_priorities(QUEUE) == {
        str(JobRun.objects.get(schedule=urgent).pk): 7,
        str(JobRun.objects.get(schedule=plain).pk): 0,
    }


def test_run_now_and_the_outbox_keep_the_schedules_priority(queue):
    task = every_minute("urgent", priority=3)

    (run,) = run_schedules_now(PeriodicTask.objects.filter(pk=task.pk), requested_by="alice").sent
    assert waiting_priorities(QUEUE) == {str(run.pk): 3}

    # A run left in the outbox (a broker outage at dispatch) is re-sent with it too.
    empty_queues([QUEUE])
    record_outbox([run.pk])
    assert publish_outbox(app) == 1
    assert waiting_priorities(QUEUE) == {str(run.pk): 3}
    assert not OutboxBatch.objects.exists()


@pytest.mark.slow
def test_a_better_priority_overtakes_runs_queued_before_it_in_the_real_worker(worker, clean_queues):
    # Both worker children busy (prefetch 1 and late acks: the worker takes nothing more meanwhile).
    # They end 2 s apart, so one child frees up at a time: two freed at once would take the
    # urgent run and a low one together, and their starts could fall in either order.
    blockers = [dispatch("diagnostics.sleep", [seconds]) for seconds in (3, 5)]
    for blocker in blockers:
        wait_for_run(blocker.pk, statuses={RunStatus.RUNNING}, timeout=60)
    better, last = first_and_last()
    low = [dispatch("diagnostics.sleep", [0.2], priority=last) for _ in range(3)]
    task = PeriodicTask.objects.create(
        name="urgent sleep",
        task="diagnostics.sleep",
        args="[0.2]",
        interval=IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)[0],
        priority=better,
        enabled=False,
    )
    (urgent,) = run_schedules_now(PeriodicTask.objects.filter(pk=task.pk), requested_by="alice").sent

    finished = {run.pk: wait_for_run(run.pk, timeout=60) for run in [*low, urgent]}

    assert {run.status for run in finished.values()} == {RunStatus.SUCCEEDED}
    started = {pk: run.started_at for pk, run in finished.items()}
    assert all(started[urgent.pk] < started[run.pk] for run in low), started
