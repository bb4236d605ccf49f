"""Overlap ``replace``, end to end: a newer slot ends the older run in the worker and runs itself.

Beat and a prefork worker are real subprocesses. The schedule's job sleeps far
longer than the schedule's interval, so every slot finds the previous run still
queued or running. Beat records that run in the claim transaction (``failed``
if it was running, ``skipped`` if still queued; ``error_type`` ``Replaced``)
and then revokes it with ``terminate=True``. These tests prove the revoke
reaches the worker, the terminated run's record is not rewritten by the
worker's own failure handling, a replaced run that was still queued never
starts, and the new run starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.dispatch import dispatch
from jobs.models import ACTIVE_STATUSES, JobRun, RunStatus
from scheduler.celery import app
from scheduler.models import Overlap, SchedulePolicy
from tests.conftest import wait_for_run
from tests.support.processes import Service
from tests.support.queues import queued_ids

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB = "diagnostics.sleep"
EVERY_SECONDS = 4
# Far longer than the interval, so each run is still running at the next slot,
# and far below the limits, so only a replacement can end a run early.
SLEEP_SECONDS = 30
SOFT_TIME_LIMIT = 50
HARD_TIME_LIMIT = 55
REPLACED_BY_BEAT = ("Replaced", "replaced by a newer slot (overlap policy: replace)")

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something other than ``None``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def wait_for_a_later_run_to_start(task, first: JobRun, timeout: float) -> JobRun:
    return wait_until(
        lambda: JobRun.objects.filter(
            schedule=task, scheduled_for__gt=first.scheduled_for, started_at__isnull=False
        ).first(),
        timeout=timeout,
        what="the run of a later slot has started",
    )


def terminate(run_ids: Iterable) -> None:
    for run_id in run_ids:
        app.control.revoke(str(run_id), terminate=True, signal="SIGTERM")


@pytest.fixture
def replacing_schedule(worker, catalog, clean_queues, beat: Service) -> Iterable[Callable[[], PeriodicTask]]:
    """Create (on call) a schedule of a long sleep every few seconds with ``overlap=replace``.

    On teardown beat stops first, so it claims no further slot, and every sleep
    still active is terminated, so the session worker is free for the next test.
    """

    def create() -> PeriodicTask:
        every, _ = IntervalSchedule.objects.get_or_create(
            every=EVERY_SECONDS, period=IntervalSchedule.SECONDS
        )
        # One transaction: beat must never see the schedule with the default overlap (allow).
        with transaction.atomic():
            task = PeriodicTask.objects.create(
                name="replace drill", task=JOB, interval=every, kwargs=json.dumps({"seconds": SLEEP_SECONDS})
            )
            policy = SchedulePolicy.objects.get(task=task)
            policy.overlap = Overlap.REPLACE
            policy.soft_time_limit = SOFT_TIME_LIMIT
            policy.hard_time_limit = HARD_TIME_LIMIT
            policy.save()
        return task

    yield create
    beat.stop()
    terminate(JobRun.objects.filter(job=JOB, status__in=ACTIVE_STATUSES).values_list("pk", flat=True))


def pool_process_running(run: JobRun) -> int:
    """The pid of the worker's pool process executing ``run``, as the worker itself reports it."""
    replies = app.control.inspect(destination=[run.worker], timeout=2).active() or {}
    for request in replies.get(run.worker, []):
        if request["id"] == str(run.pk):
            return request["worker_pid"]
    raise AssertionError(f"worker {run.worker!r} does not report run {run.pk} as active: {replies}")


def describe(run: JobRun) -> str:
    return (
        f"run {run.pk} of slot {run.scheduled_for:%H:%M:%S}: {run.status} {run.error_type!r}, "
        f"started {run.started_at}, finished {run.finished_at}, attempt {run.attempt}"
    )


def assert_each_older_run_was_replaced(task: PeriodicTask) -> JobRun:
    """Replace leaves one active run per schedule: the newest. Returns it.

    One query, so one snapshot: a claim replaces the old run and inserts the
    new one in one transaction, and this sees both or neither.
    """
    *older, newest = JobRun.objects.filter(schedule=task).order_by("scheduled_for")
    for run in older:
        # A run is failed only if it had started; a replaced run that never started was skipped.
        ended_as = RunStatus.FAILED if run.started_at else RunStatus.SKIPPED
        assert (run.status, run.error_type) == (ended_as, "Replaced"), describe(run)
    assert newest.status in ACTIVE_STATUSES, describe(newest)
    return newest


@pytest.mark.broker
def test_a_newer_slot_terminates_the_running_run_and_runs_itself(replacing_schedule, worker):
    task = replacing_schedule()
    first = wait_until(
        lambda: JobRun.objects.filter(schedule=task, status=RunStatus.RUNNING).first(),
        timeout=EVERY_SECONDS + 10,
        what="the schedule's first run is running",
    )
    sleeping_pid = pool_process_running(first)

    replaced = wait_for_run(first.pk, timeout=EVERY_SECONDS + 5)
    assert replaced.status == RunStatus.FAILED
    assert (replaced.error_type, replaced.error_message) == REPLACED_BY_BEAT
    # The revoke reached the worker, and the pool process sleeping for the run
    # is gone: well before SLEEP_SECONDS, so the sleep was cut short.
    worker.wait_for_log(f"Terminating {first.pk}", timeout=10)
    wait_until(
        lambda: True if not Path(f"/proc/{sleeping_pid}").exists() else None,
        timeout=10,
        what=f"the pool process {sleeping_pid} that ran the replaced run has exited",
    )
    wait_for_a_later_run_to_start(task, first, timeout=EVERY_SECONDS + 5)

    newest = assert_each_older_run_was_replaced(task)
    assert newest.scheduled_for > first.scheduled_for
    # The worker has long handled its terminated child by now (the process is
    # gone, later runs started): beat's record of the replaced run stands as written.
    again = JobRun.objects.get(pk=first.pk)
    assert (again.status, again.error_type, again.error_message, again.finished_at, again.attempt) == (
        replaced.status,
        replaced.error_type,
        replaced.error_message,
        replaced.finished_at,
        1,
    )


def test_a_replaced_run_that_was_still_queued_never_starts(replacing_schedule, worker):
    # Keep both pool processes busy, so the schedule's runs wait in the queue.
    blockers = [
        dispatch(JOB, kwargs={"seconds": SLEEP_SECONDS}, soft_time_limit=SOFT_TIME_LIMIT,
                 hard_time_limit=HARD_TIME_LIMIT)
        for _ in range(2)
    ]  # fmt: skip
    for blocker in blockers:
        wait_for_run(blocker.pk, statuses={RunStatus.RUNNING}, timeout=15)
    task = replacing_schedule()
    first = wait_until(
        lambda: JobRun.objects.filter(schedule=task).order_by("scheduled_for").first(),
        timeout=EVERY_SECONDS + 5,
        what="the schedule's first slot is claimed",
    )
    assert str(first.pk) in queued_ids("default")

    replaced = wait_for_run(first.pk, timeout=EVERY_SECONDS + 5)
    assert replaced.status == RunStatus.SKIPPED
    assert (replaced.error_type, replaced.error_message) == REPLACED_BY_BEAT

    terminate(blocker.pk for blocker in blockers)
    wait_until(
        lambda: True if str(first.pk) not in queued_ids("default") else None,
        timeout=10,
        what="the worker has taken the replaced run's message",
    )
    # Messages are taken in order: once a later slot's run has started, the
    # worker has already dealt with the replaced run's message.
    wait_for_a_later_run_to_start(task, first, timeout=EVERY_SECONDS + 10)
    assert_each_older_run_was_replaced(task)
    never_started = JobRun.objects.get(pk=first.pk)
    assert (never_started.status, never_started.started_at, never_started.attempt) == (
        RunStatus.SKIPPED,
        None,
        0,
    )
    assert never_started.finished_at == replaced.finished_at
