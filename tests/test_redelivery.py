"""Redelivery is harmless: a finished run is not run again, a lost one is recorded, a late one is missed."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus
from jobs.publishing import publish_runs
from scheduler.celery import app
from tests.conftest import wait_for_run
from tests.support.processes import children_of
from tests.support.queues import empty_queues

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def test_a_message_for_a_finished_run_is_acknowledged_and_ignored(worker, catalog, clean_queues):
    run = wait_for_run(dispatch("heartbeat").pk)
    assert run.status == RunStatus.SUCCEEDED

    # publish_runs sends queued runs only: a queued copy in memory, the row left succeeded (setting
    # the row back after publishing raced the worker, which could take the message in between).
    copy = JobRun.objects.get(pk=run.pk)
    copy.status = RunStatus.QUEUED
    assert publish_runs(app, [copy]) == 1
    worker.wait_for_log(
        f"heartbeat[{run.pk}]: its run already ended (succeeded); message acknowledged, job not run",
        timeout=30,
    )
    worker.wait_for_log(f"Task heartbeat[{run.pk}] ignored", timeout=10)  # Celery records no second end

    again = JobRun.objects.get(pk=run.pk)
    assert (again.status, again.attempt, again.started_at) == (
        RunStatus.SUCCEEDED,
        run.attempt,
        run.started_at,
    )


UNREAD_QUEUE = "redelivery-tests-unread"


@pytest.fixture
def unread_queue():
    yield UNREAD_QUEUE
    empty_queues([UNREAD_QUEUE])


def test_a_message_started_after_its_deadline_is_not_run_and_is_recorded_missed(
    worker, catalog, clean_queues, unread_queue
):
    # Recorded and sent to a queue no worker reads, so its message cannot start
    # it first; then a message that sat in the worker's queue past its deadline.
    run = dispatch("heartbeat", starting_deadline=1, queue=UNREAD_QUEUE)
    JobRun.objects.filter(pk=run.pk).update(deadline=timezone.now() - timedelta(seconds=5), queue="heartbeat")
    publish_runs(app, [JobRun.objects.get(pk=run.pk)])

    run = wait_for_run(run.pk, timeout=30)

    assert run.status == RunStatus.MISSED
    assert run.started_at is None
    assert "not started by its deadline" in run.error_message


def test_a_run_whose_worker_child_dies_is_recorded_lost(worker, catalog, clean_queues):
    run = dispatch("diagnostics.sleep", kwargs={"seconds": 30}, soft_time_limit=50, hard_time_limit=60)
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)

    for child in children_of(worker.process.pid):  # the pool replaces killed children
        os.kill(child, signal.SIGKILL)

    run = wait_for_run(run.pk, timeout=60)
    assert run.status == RunStatus.LOST
    assert run.error_type == "WorkerLostError"
    # Recorded by the worker's main process, which saw its pool process die;
    # the requeued message then found the run ended and was not run again.
    assert "its pool process on" in run.error_message
    worker.wait_for_log(f"diagnostics.sleep[{run.pk}]: its run already ended (lost)", timeout=30)
    assert worker.process.poll() is None
    time.sleep(1)
    assert wait_for_run(dispatch("heartbeat").pk, timeout=45).status == RunStatus.SUCCEEDED
