"""Whose attempt is a run's, and who may end it: the transitions of ``jobs.runs`` on the real database.

A redelivered message for a run still ``running`` takes the attempt over only
when the attempt is dead (its worker stopped publishing presence, or was
restarted since the attempt started); a live attempt's copy is ignored. An
attempt writes only its own end, and its real end replaces a ``lost`` that
another process concluded; nothing replaces a real end.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs import runs
from jobs.models import JobRun, RunStatus, WorkerPresence
from jobs.workers import LIVE_SECONDS, PROCESS_STARTED_AT, record_worker

pytestmark = [pytest.mark.broker, pytest.mark.django_db]

FIRST, SECOND = "first@host", "second@host"


def running_run(*, worker: str = FIRST, attempt: int = 1, started_ago: float = 79) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job="diagnostics.sleep",
        kwargs={"seconds": 100},
        scheduled_for=now - timedelta(seconds=started_ago + 1),
        enqueued_at=now - timedelta(seconds=started_ago + 1),
        hard_time_limit=120,
        status=RunStatus.RUNNING,
        attempt=attempt,
        worker=worker,
        started_at=now - timedelta(seconds=started_ago),
    )


def presence(hostname: str = FIRST, *, seen_ago: float = 5, started_ago: float | None = 600) -> None:
    now = timezone.now()
    WorkerPresence.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": ["default"],
            "jobs": ["diagnostics.sleep"],
            "last_seen_at": now - timedelta(seconds=seen_ago),
            "started_at": None if started_ago is None else now - timedelta(seconds=started_ago),
        },
    )


def redelivered_copy(run: JobRun, *, worker: str = SECOND, max_attempts: int = 1):
    return runs.start_run(
        str(run.pk),
        job=run.job,
        attempt=1,
        worker=worker,
        redelivered=True,
        max_attempts=max_attempts,
    )


def fields(run: JobRun) -> tuple:
    run = JobRun.objects.get(pk=run.pk)
    return (run.status, run.attempt, run.worker, run.started_at, run.error_type)


# -- A redelivered copy of a running run's message ----------------------------------


@pytest.mark.parametrize("copy_on", [FIRST, SECOND], ids=["same worker", "another worker"])
def test_it_ignores_a_copy_while_the_attempt_runs_on_its_live_worker(copy_on, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"  # the wording blames Redis's timeout
    run = running_run()
    presence(FIRST)
    before = fields(run)

    outcome = redelivered_copy(run, worker=copy_on, max_attempts=3)

    assert isinstance(outcome, runs.NotStarted)
    assert outcome.warning
    assert outcome.reason.startswith(
        f"redelivered after the visibility timeout while attempt 1 still runs on {FIRST}, for 79 s"
    )
    assert "Raise BROKER_VISIBILITY_TIMEOUT" in outcome.reason
    assert "(this run's is 120 s)" in outcome.reason
    assert fields(run) == before


def test_it_does_not_blame_the_visibility_timeout_on_rabbitmq(settings):
    settings.CELERY_BROKER_URL = "amqp://guest@127.0.0.1:5672//"
    run = running_run()
    presence(FIRST)

    outcome = redelivered_copy(run)

    assert outcome.warning
    assert "visibility timeout" not in outcome.reason
    assert "after that worker's connection dropped" in outcome.reason


def test_it_retries_when_the_attempts_worker_stopped_publishing_presence():
    run = running_run()
    presence(FIRST, seen_ago=LIVE_SECONDS + 1)

    outcome = redelivered_copy(run, max_attempts=2)

    assert isinstance(outcome, JobRun)
    again = JobRun.objects.get(pk=run.pk)
    assert (again.status, again.attempt, again.worker) == (RunStatus.RUNNING, 2, SECOND)
    assert again.error_type == "WorkerLostError"
    assert (
        again.error_message
        == f"attempt 1 was lost: its worker {FIRST} died or was restarted while running it"
    )


def test_it_records_lost_when_the_attempts_worker_is_gone_and_no_retry_is_left():
    run = running_run()  # no presence at all: the worker shut down or never published

    outcome = redelivered_copy(run, max_attempts=1)

    assert isinstance(outcome, runs.NotStarted)
    assert outcome.warning and outcome.reason.endswith("; run recorded lost")
    lost = JobRun.objects.get(pk=run.pk)
    assert (lost.status, lost.attempt, lost.worker) == (RunStatus.LOST, 1, FIRST)
    assert lost.finished_at is not None and lost.duration_ms >= 79_000


def test_it_takes_over_from_a_worker_restarted_under_the_same_hostname():
    run = running_run(started_ago=79)
    presence(FIRST, seen_ago=1, started_ago=20)  # fresh, but a process younger than the attempt

    outcome = redelivered_copy(run, worker=FIRST)

    assert isinstance(outcome, runs.NotStarted)
    assert JobRun.objects.get(pk=run.pk).status == RunStatus.LOST


def test_it_takes_over_when_presence_does_not_say_when_its_process_started():
    run = running_run()
    presence(FIRST, started_ago=None)  # a row written by an older release

    redelivered_copy(run)

    assert JobRun.objects.get(pk=run.pk).status == RunStatus.LOST


def test_it_ignores_a_copy_that_is_not_redelivered_while_the_run_runs():
    run = running_run()
    before = fields(run)

    outcome = runs.start_run(str(run.pk), job=run.job, attempt=1, worker=SECOND, redelivered=False)

    assert outcome == runs.NotStarted(f"its run is already running (attempt 1 on {FIRST})")
    assert fields(run) == before


def test_it_records_when_the_worker_process_started():
    record_worker(FIRST, ["default"], ["diagnostics.sleep"])

    assert WorkerPresence.objects.get(hostname=FIRST).started_at == PROCESS_STARTED_AT


# -- The end of an attempt -----------------------------------------------------------


def wrongly_lost(run: JobRun) -> JobRun:
    """What a copy of the message wrote while the attempt in fact ran on."""
    JobRun.objects.filter(pk=run.pk).update(
        status=RunStatus.LOST,
        finished_at=timezone.now(),
        duration_ms=79_000,
        error_type="WorkerLostError",
        error_message=f"attempt 1 was lost: its worker {FIRST} died",
    )
    return run


def test_it_lets_the_real_success_replace_a_wrong_lost():
    attempt = wrongly_lost(running_run(started_ago=100))

    assert runs.finish_run(attempt, RunStatus.SUCCEEDED, result={"slept": 100})

    ended = JobRun.objects.get(pk=attempt.pk)
    assert ended.status == RunStatus.SUCCEEDED
    assert (ended.error_type, ended.error_message) == ("", "")
    assert ended.result == {"slept": 100}
    assert ended.duration_ms >= 100_000


def test_it_lets_the_real_failure_replace_a_wrong_lost_with_its_own_error():
    attempt = wrongly_lost(running_run())
    error = runs.RunError(type="builtins.ValueError", message="bad input", traceback="Traceback …")

    assert runs.finish_run(attempt, RunStatus.FAILED, error=error)

    ended = JobRun.objects.get(pk=attempt.pk)
    assert (ended.status, ended.error_type, ended.error_message) == (
        RunStatus.FAILED,
        "builtins.ValueError",
        "bad input",
    )


def test_it_lets_a_hard_timeout_seen_by_the_attempts_worker_replace_a_wrong_lost():
    attempt = wrongly_lost(running_run())
    error = runs.RunError(type="billiard.exceptions.TimeLimitExceeded", message="120", traceback="")

    assert runs.record_from_main_process(str(attempt.pk), RunStatus.HARD_TIMEOUT, error) is None
    assert (
        runs.record_from_main_process(str(attempt.pk), RunStatus.HARD_TIMEOUT, error, worker=SECOND) is None
    )
    assert runs.record_from_main_process(str(attempt.pk), RunStatus.HARD_TIMEOUT, error, worker=FIRST)

    assert JobRun.objects.get(pk=attempt.pk).status == RunStatus.HARD_TIMEOUT


def test_it_lets_a_retry_replace_a_wrong_lost():
    attempt = wrongly_lost(running_run())
    error = runs.RunError(type="builtins.OSError", message="timeout", traceback="")

    assert runs.mark_retrying(attempt, error, timezone.now() + timedelta(seconds=4))

    retrying = JobRun.objects.get(pk=attempt.pk)
    assert (retrying.status, retrying.finished_at, retrying.duration_ms) == (RunStatus.RETRYING, None, None)


def test_it_does_not_let_another_attempt_or_worker_end_a_lost_run():
    lost = wrongly_lost(running_run())
    other_attempt = JobRun.objects.get(pk=lost.pk)
    other_attempt.attempt = 2
    other_worker = JobRun.objects.get(pk=lost.pk)
    other_worker.worker = SECOND

    assert not runs.finish_run(other_attempt, RunStatus.SUCCEEDED)
    assert not runs.finish_run(other_worker, RunStatus.SUCCEEDED)
    assert JobRun.objects.get(pk=lost.pk).status == RunStatus.LOST


def test_it_does_not_let_an_earlier_attempt_end_the_run_a_later_one_took_over():
    first_attempt = running_run(worker=FIRST, attempt=1)
    JobRun.objects.filter(pk=first_attempt.pk).update(attempt=2, worker=SECOND, started_at=timezone.now())

    assert not runs.finish_run(first_attempt, RunStatus.SUCCEEDED)

    now = JobRun.objects.get(pk=first_attempt.pk)
    assert (now.status, now.attempt, now.worker) == (RunStatus.RUNNING, 2, SECOND)


@pytest.mark.parametrize("ending", [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.HARD_TIMEOUT])
def test_it_never_overwrites_a_real_ending_with_lost(ending):
    run = running_run()
    JobRun.objects.filter(pk=run.pk).update(status=ending, finished_at=timezone.now())

    outcome = redelivered_copy(run)
    recorded = runs.record_lost_process(str(run.pk), worker=FIRST, max_attempts=1, reason="signal 9")

    assert outcome == runs.NotStarted(f"its run already ended ({ending})")
    assert recorded is None
    assert JobRun.objects.get(pk=run.pk).status == ending


# -- A pool process that died under a live worker -------------------------------------


def test_it_records_a_dead_pool_process_as_retrying_and_its_copy_starts_the_next_attempt():
    run = running_run()
    presence(FIRST)  # the worker is alive: only its pool process died

    recorded = runs.record_lost_process(
        str(run.pk), worker=FIRST, max_attempts=2, reason="signal 9 (SIGKILL)"
    )
    copy = redelivered_copy(run, worker=FIRST, max_attempts=2)

    assert recorded == RunStatus.RETRYING
    assert isinstance(copy, JobRun)
    again = JobRun.objects.get(pk=run.pk)
    assert (again.status, again.attempt, again.worker) == (RunStatus.RUNNING, 2, FIRST)
    assert again.error_message == (
        f"attempt 1 was lost: its pool process on {FIRST} died (signal 9 (SIGKILL)); "
        "its message goes back to the queue for attempt 2"
    )


def test_it_records_a_dead_pool_process_as_lost_when_no_retry_is_left_and_ignores_its_copy():
    run = running_run()
    presence(FIRST)

    recorded = runs.record_lost_process(
        str(run.pk), worker=FIRST, max_attempts=1, reason="signal 9 (SIGKILL)"
    )
    copy = redelivered_copy(run, worker=FIRST, max_attempts=1)

    assert recorded == RunStatus.LOST
    assert copy == runs.NotStarted("its run already ended (lost)")
    lost = JobRun.objects.get(pk=run.pk)
    assert (lost.status, lost.attempt, lost.error_type) == (RunStatus.LOST, 1, "WorkerLostError")


def test_it_changes_nothing_for_a_dead_pool_process_on_another_worker():
    run = running_run(worker=FIRST)
    before = fields(run)

    assert runs.record_lost_process(str(run.pk), worker=SECOND, max_attempts=1, reason="signal 9") is None
    assert fields(run) == before


# -- A run nothing will end ------------------------------------------------------------


def abandoned_after() -> float:
    """Twice Redis's visibility timeout plus the margin; RabbitMQ's copy is back at once: the margin."""
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        return runs.ABANDONED_MARGIN_SECONDS
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    return 2 * timeout + runs.ABANDONED_MARGIN_SECONDS


def test_it_records_lost_a_run_left_running_by_a_dead_worker_with_no_message_to_come_back():
    abandoned = running_run(started_ago=abandoned_after() + 60)  # its worker has no presence
    younger = running_run(started_ago=abandoned_after() - 60)

    assert runs.record_abandoned_attempts() == 1

    lost = JobRun.objects.get(pk=abandoned.pk)
    assert (lost.status, lost.error_type) == (RunStatus.LOST, "WorkerLostError")
    assert lost.error_message.startswith(f"attempt 1 was lost: its worker {FIRST} stopped while running it")
    assert JobRun.objects.get(pk=younger.pk).status == RunStatus.RUNNING


def test_it_never_records_lost_a_long_run_whose_worker_is_alive():
    old = running_run(started_ago=abandoned_after() + 60)
    presence(FIRST, started_ago=abandoned_after() + 600)

    assert runs.record_abandoned_attempts() == 0
    assert JobRun.objects.get(pk=old.pk).status == RunStatus.RUNNING
