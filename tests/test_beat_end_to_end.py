"""A schedule created through the ORM runs: beat and a prefork worker as real subprocesses."""

from __future__ import annotations

import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.models import JobRun, RunStatus

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def wait_for_succeeded_runs(task: PeriodicTask, count: int, timeout: float) -> list[JobRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(JobRun.objects.filter(schedule=task, status=RunStatus.SUCCEEDED))
        if len(runs) >= count:
            return runs
        time.sleep(0.3)
    seen = list(JobRun.objects.filter(schedule=task).values_list("status", flat=True))
    raise AssertionError(f"fewer than {count} succeeded runs of {task.name} in {timeout} s: {seen}")


def test_a_schedule_created_through_the_orm_produces_succeeded_runs(worker, catalog, clean_queues, beat):
    every_two_seconds, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="e2e heartbeat", task="heartbeat", interval=every_two_seconds)

    runs = wait_for_succeeded_runs(task, count=2, timeout=30)

    for run in runs:
        assert run.scheduled_for.microsecond == 0
        assert run.started_at >= run.scheduled_for
        assert run.enqueued_at is not None
        assert run.result["lateness_ms"] == run.lateness_ms
    slots = list(JobRun.objects.filter(schedule=task).values_list("scheduled_for", flat=True))
    assert len(slots) == len(set(slots)), "one run per slot"
    # Anchored: every slot is a whole number of intervals after the first.
    first = min(slots)
    assert all((slot - first).total_seconds() % 2 == 0 for slot in slots)
