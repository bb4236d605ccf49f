"""A run revoked by hand ends in the history, on a real prefork worker.

``celery control revoke --terminate``, Flower's terminate button and
``app.control.revoke(id, terminate=True)`` kill the pool process and
acknowledge the message; the job's own code never runs again, so the
worker's main process records the end (``jobs.framework.record_revoked_run``):

- a terminated running run is ``failed`` / ``Terminated``, naming the signal;
- a revoked run still queued is discarded when its message arrives: ``skipped``
  / ``Revoked``, never started;
- a message discarded because it expired is ``missed``, like a message taken
  after its run's deadline;
- a run that already ended (beat recorded it ``Replaced``) keeps its record.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from jobs.dispatch import dispatch
from jobs.models import ACTIVE_STATUSES, JobRun, RunStatus
from scheduler.celery import app
from tests.conftest import wait_for_run
from tests.support.queues import queued_ids
from tests.test_overlap_replace import pool_process_running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB = "diagnostics.sleep"
# Far below the limits and far above every wait here: only a revoke can end a sleep early.
SLEEP_SECONDS = 30
SOFT_TIME_LIMIT = 50
HARD_TIME_LIMIT = 55
# The worker records a revoke right after killing the pool process, in the same
# control command: a few seconds is generous, and far below SLEEP_SECONDS.
RECORDED_WITHIN = 10


def sleep_run() -> JobRun:
    return dispatch(
        JOB,
        kwargs={"seconds": SLEEP_SECONDS},
        soft_time_limit=SOFT_TIME_LIMIT,
        hard_time_limit=HARD_TIME_LIMIT,
    )


def revoke(run_ids: Iterable, worker_name: str, *, terminate: bool) -> None:
    """Revoke on the session worker and wait for its reply, so the revoke is in force on return."""
    ids = [str(run_id) for run_id in run_ids]
    replies = app.control.revoke(ids, terminate=terminate, destination=[worker_name], reply=True, timeout=5)
    assert replies, f"worker {worker_name!r} did not answer the revoke of {ids}"


@pytest.fixture
def sleeps_end(worker, catalog, clean_queues) -> Iterable[None]:
    """Terminate every sleep still active after the test, so the session worker is free for the next."""
    yield
    for run_id in JobRun.objects.filter(job=JOB, status__in=ACTIVE_STATUSES).values_list("pk", flat=True):
        app.control.revoke(str(run_id), terminate=True)


@pytest.mark.broker
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_terminated_running_run_is_recorded_failed_and_the_worker_serves_the_next(
    worker, sleeps_end, signal_name
):
    run = sleep_run()
    running = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=15)

    app.control.revoke(str(run.pk), terminate=True, signal=signal_name, destination=[running.worker])

    ended = wait_for_run(run.pk, timeout=RECORDED_WITHIN)
    assert (ended.status, ended.error_type) == (RunStatus.FAILED, "Terminated")
    assert signal_name in ended.error_message
    assert ended.started_at == running.started_at
    assert ended.attempt == 1
    assert ended.finished_at is not None and ended.finished_at >= ended.started_at
    # Filled like any finished run, and cut short: the job asked for SLEEP_SECONDS.
    assert ended.duration_ms is not None and ended.duration_ms < SLEEP_SECONDS * 1000
    worker.wait_for_log(f"Terminating {run.pk}", timeout=5)

    assert worker.process.poll() is None, "the worker itself must survive terminating a job"
    after = wait_for_run(dispatch("heartbeat").pk, timeout=30)
    assert after.status == RunStatus.SUCCEEDED
    # The record of the terminated run is final: nothing rewrote it meanwhile.
    assert JobRun.objects.get(pk=run.pk).status == RunStatus.FAILED


@pytest.mark.parametrize("terminate", [False, True], ids=["revoke", "revoke-terminate"])
def test_a_revoked_queued_run_is_recorded_skipped_and_never_starts(worker, sleeps_end, terminate):
    # Both pool processes busy (prefetch 1, late acks): the next message waits in the broker.
    blockers = [sleep_run() for _ in range(2)]
    busy = [wait_for_run(b.pk, statuses={RunStatus.RUNNING}, timeout=15) for b in blockers]
    waiting = dispatch(JOB, kwargs={"seconds": 0})
    assert str(waiting.pk) in queued_ids("default")

    revoke([waiting.pk], busy[0].worker, terminate=terminate)
    revoke([b.pk for b in blockers], busy[0].worker, terminate=True)

    discarded = wait_for_run(waiting.pk, timeout=RECORDED_WITHIN)
    assert (discarded.status, discarded.error_type) == (RunStatus.SKIPPED, "Revoked")
    assert (discarded.started_at, discarded.attempt, discarded.duration_ms) == (None, 0, None)
    assert discarded.finished_at is not None
    worker.wait_for_log(f"Discarding revoked task: {JOB}[{waiting.pk}]", timeout=5)
    for blocker in blockers:
        assert wait_for_run(blocker.pk, timeout=RECORDED_WITHIN).error_type == "Terminated"


@pytest.mark.broker
def test_a_run_recorded_replaced_by_beat_is_not_rewritten_when_its_revoke_arrives(worker, sleeps_end):
    run = sleep_run()
    running = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=15)
    # What beat writes in its claim transaction, before it revokes the run with
    # terminate=True (scheduler.beat.dispatch.claim_slots, overlap=replace).
    JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=RunStatus.FAILED,
        finished_at=timezone.now(),
        error_type="Replaced",
        error_message="replaced by a newer slot (overlap policy: replace)",
    )
    replaced = JobRun.objects.get(pk=run.pk)
    sleeping_pid = pool_process_running(running)

    revoke([run.pk], running.worker, terminate=True)

    worker.wait_for_log(f"{JOB}[{run.pk}]: terminated by SIGTERM; its run was already failed", timeout=5)
    # Once the killed pool process is gone, the worker has handled its end too.
    wait_until(
        lambda: True if not Path(f"/proc/{sleeping_pid}").exists() else None,
        timeout=10,
        what=f"the pool process {sleeping_pid} that ran the run has exited",
    )
    again = JobRun.objects.get(pk=run.pk)
    assert (again.status, again.error_type, again.error_message, again.finished_at, again.duration_ms) == (
        replaced.status,
        replaced.error_type,
        replaced.error_message,
        replaced.finished_at,
        None,
    )


@pytest.mark.broker
def test_a_message_discarded_as_expired_is_recorded_missed(worker, catalog, clean_queues):
    now = timezone.now()
    run = JobRun.objects.create(
        job="heartbeat", queue="heartbeat", scheduled_for=now, enqueued_at=now, status=RunStatus.QUEUED
    )
    # A plain Celery message with an expiry already behind: the worker discards it on arrival.
    app.send_task("heartbeat", task_id=str(run.pk), queue="heartbeat", expires=now - timedelta(seconds=5))

    missed = wait_for_run(run.pk, timeout=RECORDED_WITHIN)
    assert (missed.status, missed.error_type) == (RunStatus.MISSED, "StartingDeadlineExceeded")
    assert "not started by its deadline" in missed.error_message
    assert "expired" in missed.error_message
    assert (missed.started_at, missed.attempt) == (None, 0)
