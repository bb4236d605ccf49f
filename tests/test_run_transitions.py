"""The transitions of ``jobs.runs`` that are not about attempts: start, replace, revoke.

On the real database (SQLite here, PostgreSQL in CI): each transition is one
guarded UPDATE that says whether it won, and a run that left the states it
starts from keeps its record. ``tests/test_run_attempts.py`` covers whose
attempt a run is.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from jobs import runs
from jobs.models import JobRun, RunStatus

pytestmark = pytest.mark.django_db

WORKER = "w1@host"


def run_in(status: RunStatus, *, late_by: float = 2.5, attempt: int = 0, **fields) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job="diagnostics.sleep",
        kwargs={"seconds": 0},
        scheduled_for=now - timedelta(seconds=late_by),
        status=status,
        attempt=attempt,
        **fields,
    )


# -- Start ---------------------------------------------------------------------------


def test_it_starts_a_queued_run_in_one_statement_on_postgresql(django_assert_num_queries):
    queued = run_in(RunStatus.QUEUED, enqueued_at=timezone.now() - timedelta(seconds=3))
    now = timezone.now()

    # SQLite keeps the general path: read the row, then a guarded UPDATE.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 2):
        started = runs.start_run(str(queued.pk), job=queued.job, attempt=1, worker=WORKER, now=now)

    assert isinstance(started, JobRun)
    stored = JobRun.objects.get(pk=queued.pk)
    for run in (started, stored):
        assert (run.status, run.attempt, run.worker, run.started_at) == (RunStatus.RUNNING, 1, WORKER, now)
        assert run.lateness_ms == int((now - queued.scheduled_for).total_seconds() * 1000)
        assert run.enqueued_at == queued.enqueued_at
        assert run.kwargs == {"seconds": 0} and run.scheduled_for == queued.scheduled_for


@pytest.mark.django_db(transaction=True)
def test_a_worker_start_commits_on_its_own_and_a_failed_one_leaves_the_connection_usable():
    """Outside a transaction (a worker), the start is its own transaction, committed without a flush."""
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement start is PostgreSQL's; SQLite takes the general path")
    queued = run_in(RunStatus.QUEUED)
    broken = run_in(RunStatus.QUEUED)
    assert not connection.in_atomic_block

    started = runs.start_run(str(queued.pk), job=queued.job, attempt=1, worker=WORKER)
    assert isinstance(started, JobRun) and started.status == RunStatus.RUNNING
    assert not connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # not inside a transaction the start left open
        assert cursor.fetchone() == (1,)

    # An attempt number past the column's range fails inside the UPDATE.
    with pytest.raises(DatabaseError):
        runs.start_run(str(broken.pk), job=broken.job, attempt=100_000, worker=WORKER)
    assert JobRun.objects.get(pk=broken.pk).status == RunStatus.QUEUED  # usable, and nothing written
    assert JobRun.objects.get(pk=queued.pk).status == RunStatus.RUNNING


def test_it_starts_a_retrying_run_as_the_next_attempt_and_fills_a_missing_enqueue_time():
    retrying = run_in(RunStatus.RETRYING, attempt=2)
    now = timezone.now()

    started = runs.start_run(str(retrying.pk), job=retrying.job, attempt=1, worker=WORKER, now=now)

    assert (started.status, started.attempt, started.enqueued_at) == (RunStatus.RUNNING, 3, now)
    assert JobRun.objects.get(pk=retrying.pk).attempt == 3


def test_it_counts_the_attempt_from_the_message_when_it_is_ahead_of_the_record():
    queued = run_in(RunStatus.QUEUED)

    started = runs.start_run(str(queued.pk), job=queued.job, attempt=4, worker=WORKER)

    assert started.attempt == 4


def test_it_records_missed_a_run_taken_after_its_deadline_instead_of_starting_it():
    now = timezone.now()
    late = run_in(RunStatus.QUEUED, deadline=now - timedelta(seconds=1))

    outcome = runs.start_run(str(late.pk), job=late.job, attempt=1, worker=WORKER, now=now)

    assert isinstance(outcome, runs.NotStarted)
    assert JobRun.objects.get(pk=late.pk).status == RunStatus.MISSED


def test_it_starts_a_run_taken_exactly_at_its_deadline():
    now = timezone.now()
    due = run_in(RunStatus.QUEUED, deadline=now)

    assert isinstance(runs.start_run(str(due.pk), job=due.job, attempt=1, worker=WORKER, now=now), JobRun)


def test_it_records_a_run_for_a_message_nobody_recorded():
    run_id = "0b7e8a52-5d43-4d0c-9a51-2f7c1e3f2a10"

    started = runs.start_run(run_id, job="diagnostics.sleep", attempt=1, worker=WORKER, queue="default")

    stored = JobRun.objects.get(pk=run_id)
    assert (started.pk, stored.status, stored.queue, stored.attempt) == (
        stored.pk,
        RunStatus.RUNNING,
        "default",
        1,
    )


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.SKIPPED])
def test_it_does_not_start_a_run_that_is_not_waiting(status):
    run = run_in(status, attempt=1, worker="other@host")

    outcome = runs.start_run(str(run.pk), job=run.job, attempt=1, worker=WORKER)

    assert isinstance(outcome, runs.NotStarted)
    assert (JobRun.objects.get(pk=run.pk).status, JobRun.objects.get(pk=run.pk).worker) == (
        status,
        "other@host",
    )


# -- Replace (overlap policy) -----------------------------------------------------------


def test_it_ends_replaced_runs_skipped_if_waiting_and_failed_if_running():
    queued, retrying, running = (run_in(s) for s in (RunStatus.QUEUED, RunStatus.RETRYING, RunStatus.RUNNING))
    finished = run_in(RunStatus.SUCCEEDED)
    now = timezone.now()

    ended = runs.end_replaced_runs([r.pk for r in (queued, retrying, running, finished)], now)

    assert ended == 3
    stored = {r.pk: r for r in JobRun.objects.all()}
    assert [stored[r.pk].status for r in (queued, retrying, running, finished)] == [
        RunStatus.SKIPPED,
        RunStatus.SKIPPED,
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    for run in (queued, retrying, running):
        assert (stored[run.pk].error_type, stored[run.pk].finished_at) == ("Replaced", now)
    assert stored[finished.pk].error_type == ""


def test_it_ends_nothing_when_replacing_no_runs():
    assert runs.end_replaced_runs([], timezone.now()) == 0


# -- Revoke (the worker's main process) --------------------------------------------------


def test_it_records_a_revoked_waiting_run_skipped():
    queued = run_in(RunStatus.QUEUED)

    assert runs.record_revoked(str(queued.pk)) == RunStatus.SKIPPED

    stored = JobRun.objects.get(pk=queued.pk)
    assert (stored.status, stored.error_type) == (RunStatus.SKIPPED, "Revoked")
    assert stored.error_message == "revoked before it started; its message was discarded"


def test_it_records_an_expired_message_missed():
    queued = run_in(RunStatus.QUEUED)

    assert (
        runs.record_revoked(str(queued.pk), expired=True, expires="2026-11-30T12:00:00") == RunStatus.MISSED
    )

    stored = JobRun.objects.get(pk=queued.pk)
    assert (stored.status, stored.error_type) == (RunStatus.MISSED, "StartingDeadlineExceeded")
    assert "2026-11-30T12:00:00 (its message expired)" in stored.error_message


def test_it_records_a_terminated_running_run_failed():
    running = run_in(RunStatus.RUNNING, attempt=1, worker=WORKER, started_at=timezone.now())

    assert runs.record_revoked(str(running.pk), terminated_by="SIGTERM", worker=WORKER) == RunStatus.FAILED

    stored = JobRun.objects.get(pk=running.pk)
    assert (stored.status, stored.error_type) == (RunStatus.FAILED, "Terminated")
    assert stored.error_message == "terminated by SIGTERM while running (revoked with terminate=True)"
    assert stored.duration_ms is not None


def test_it_leaves_a_running_run_to_its_process_when_a_duplicate_message_is_revoked():
    running = run_in(RunStatus.RUNNING, attempt=1, worker=WORKER)

    assert runs.record_revoked(str(running.pk)) is None
    assert JobRun.objects.get(pk=running.pk).status == RunStatus.RUNNING


def test_it_keeps_the_record_of_a_run_that_already_ended_when_its_revoke_arrives():
    replaced = run_in(RunStatus.FAILED, error_type="Replaced")

    assert runs.record_revoked(str(replaced.pk), terminated_by="SIGTERM", worker=WORKER) is None
    assert runs.current_status(str(replaced.pk)) == RunStatus.FAILED
    assert JobRun.objects.get(pk=replaced.pk).error_type == "Replaced"


def test_it_records_nothing_for_a_task_id_that_is_not_a_run():
    assert runs.record_revoked("not-a-uuid", terminated_by="SIGKILL") is None
    assert runs.current_status("not-a-uuid") is None


# -- End -------------------------------------------------------------------------------


def test_it_records_the_end_of_an_attempt_with_its_result_in_one_statement(django_assert_num_queries):
    queued = run_in(RunStatus.QUEUED)
    started = runs.start_run(str(queued.pk), job=queued.job, attempt=1, worker=WORKER)
    later = started.started_at + timedelta(milliseconds=1500)

    with django_assert_num_queries(1):
        assert runs.finish_run(started, RunStatus.SUCCEEDED, result={"slept": 0, "note": "é"}, now=later)

    ended = JobRun.objects.get(pk=queued.pk)
    assert (ended.status, ended.finished_at, ended.duration_ms) == (RunStatus.SUCCEEDED, later, 1500)
    assert ended.result == {"slept": 0, "note": "é"}
    assert (ended.error_type, ended.error_message, ended.traceback) == ("", "", "")


def test_it_records_a_failed_attempt_with_its_error():
    started = runs.start_run(
        str(run_in(RunStatus.QUEUED).pk), job="diagnostics.sleep", attempt=1, worker=WORKER
    )
    error = runs.RunError(type="builtins.ValueError", message="bad", traceback="Traceback …")

    assert runs.finish_run(started, RunStatus.FAILED, error=error)

    ended = JobRun.objects.get(pk=started.pk)
    assert (ended.status, ended.error_type, ended.error_message, ended.traceback, ended.result) == (
        RunStatus.FAILED,
        "builtins.ValueError",
        "bad",
        "Traceback …",
        None,
    )


def test_it_does_not_end_an_attempt_twice():
    started = runs.start_run(
        str(run_in(RunStatus.QUEUED).pk), job="diagnostics.sleep", attempt=1, worker=WORKER
    )

    assert runs.finish_run(started, RunStatus.SUCCEEDED)
    assert not runs.finish_run(started, RunStatus.FAILED)
    assert JobRun.objects.get(pk=started.pk).status == RunStatus.SUCCEEDED
