"""A message redelivered while its first attempt still runs is ignored, on real prefork workers.

With Redis as the broker and late acks, kombu gives an unacked message back
to the queue once it has been unacked for ``BROKER_VISIBILITY_TIMEOUT``, even
though the worker that took it is alive and still running it. These tests
make that happen for real without waiting for the timeout (its setting's
minimum is 60 s): :func:`give_back_as_after_the_visibility_timeout` runs
kombu's own restore (``QoS.restore_by_tag``, what ``QoS.restore_visible``
calls for each message past the timeout), so the copy the worker receives is
the one the timeout would produce: the same body, id and delivery tag, marked
``redelivered``.

Expected: the copy is acknowledged and ignored with a warning that names the
fix, the first attempt ends as it really ends, once, and is never recorded
``lost``; nothing is left to redeliver; the worker keeps serving (and can
still terminate the first attempt on request).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import redis

from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus, WorkerPresence
from scheduler.celery import app
from tests.conftest import wait_for_run
from tests.support.broker import redis_broker_only
from tests.support.processes import Service, celery, children_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    redis_broker_only(
        "redelivery after the visibility timeout (kombu's unacked hash) is a Redis transport "
        "behaviour; RabbitMQ redelivers only when the consumer's connection goes: "
        "tests/test_rabbitmq.py::test_a_killed_workers_message_comes_back_at_once_and_its_run_is_lost_in_"
        "minutes_not_hours covers it",
    ),
]

JOB = "diagnostics.sleep"
# Long enough for the copy to be received and ignored while the first attempt
# sleeps (a second or two), far below the limits.
SLEEP_SECONDS = 12
SOFT_TIME_LIMIT = 50
HARD_TIME_LIMIT = 60
UNACKED = "unacked"  # kombu's Redis transport: the hash of delivered, unacknowledged messages


def sleep_run(seconds: float = SLEEP_SECONDS, queue: str | None = None) -> JobRun:
    return dispatch(
        JOB,
        kwargs={"seconds": seconds},
        queue=queue,
        soft_time_limit=SOFT_TIME_LIMIT,
        hard_time_limit=HARD_TIME_LIMIT,
    )


def unacked_tag_of(redis_client: redis.Redis, run: JobRun) -> str | None:
    """The delivery tag of the run's message while a worker holds it unacknowledged."""
    for tag, entry in redis_client.hgetall(UNACKED).items():
        payload, _exchange, _routing_key = json.loads(entry)
        if payload["headers"].get("id") == str(run.pk):
            return tag.decode()
    return None


def give_back_as_after_the_visibility_timeout(redis_client: redis.Redis, run: JobRun) -> None:
    """Put the run's unacked message back in its queue exactly as kombu does after the timeout."""
    wait_for_presence(JobRun.objects.get(pk=run.pk).worker)
    tag = unacked_tag_of(redis_client, run)
    assert tag is not None, f"no unacked message for run {run.pk}: {redis_client.hgetall(UNACKED)!r}"
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_by_tag(tag)


def wait_for_presence(hostname: str, timeout: float = 15.0) -> None:
    """Wait for ``hostname``'s presence row (the flush after a transactional test deletes it)."""
    deadline = time.monotonic() + timeout
    while not WorkerPresence.objects.filter(hostname=hostname).exists():
        assert time.monotonic() < deadline, f"worker {hostname} published no presence within {timeout} s"
        time.sleep(0.2)


def watch_until_finished(run: JobRun, timeout: float) -> tuple[JobRun, set[str]]:
    """Poll the run (every 0.1 s) until it ends; return it and every status it was seen in."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = JobRun.objects.get(pk=run.pk)
        seen.add(current.status)
        if current.is_finished:
            return current, seen
        time.sleep(0.1)
    raise AssertionError(f"run {run.pk} did not end within {timeout} s; seen {sorted(seen)}")


def ignored_warning(run: JobRun, attempt: int, worker: str) -> str:
    return (
        f"{JOB}[{run.pk}]: redelivered after the visibility timeout while attempt {attempt} "
        f"still runs on {worker}"
    )


def test_it_ignores_a_redelivery_while_the_first_attempt_still_runs_and_lets_it_succeed(
    worker, catalog, clean_queues, redis_client
):
    run = sleep_run()
    first = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)

    give_back_as_after_the_visibility_timeout(redis_client, run)
    worker.wait_for_log(ignored_warning(run, 1, first.worker), timeout=30)
    worker.wait_for_log(f"Task {JOB}[{run.pk}] ignored", timeout=10)
    ended, seen = watch_until_finished(run, timeout=SLEEP_SECONDS + 30)

    assert ended.status == RunStatus.SUCCEEDED
    assert RunStatus.LOST not in seen
    assert (ended.attempt, ended.worker, ended.started_at) == (1, first.worker, first.started_at)
    assert (ended.error_type, ended.error_message) == ("", "")
    assert ended.result == {"slept": SLEEP_SECONDS}
    log = worker.log()
    assert log.count(f"Task {JOB}[{run.pk}] received") == 2
    assert log.count(f"Task {JOB}[{run.pk}] succeeded in") == 1, "the job ran once, and Celery saw one end"
    # The copy's ack took the message out of the unacked hash; the first
    # attempt's ack, with the same delivery tag, found nothing to remove and
    # broke nothing. Nothing is left for a later timeout to give back.
    assert unacked_tag_of(redis_client, run) is None
    assert redis_client.llen("default") == 0
    assert wait_for_run(dispatch("heartbeat").pk, timeout=45).status == RunStatus.SUCCEEDED


def test_it_can_still_terminate_the_first_attempt_after_ignoring_its_copy(
    worker, catalog, clean_queues, redis_client
):
    run = sleep_run(seconds=30)
    first = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    give_back_as_after_the_visibility_timeout(redis_client, run)
    worker.wait_for_log(f"Task {JOB}[{run.pk}] ignored", timeout=30)

    # The copy ran on this same worker: its end must not make the worker
    # forget the first attempt, or a terminate would answer "tasks unknown".
    replies = app.control.revoke(
        [str(run.pk)], terminate=True, destination=[first.worker], reply=True, timeout=5
    )
    ended = wait_for_run(run.pk, timeout=15)

    assert "unknown" not in str(replies), replies
    assert (ended.status, ended.error_type) == (RunStatus.FAILED, "Terminated")
    assert ended.attempt == 1


def test_it_lets_the_real_ending_replace_a_wrong_lost_record(worker, catalog, clean_queues):
    run = sleep_run(seconds=6)
    first = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    # What the previous code wrote at +79 s in the issue while the job still ran.
    JobRun.objects.filter(pk=run.pk).update(
        status=RunStatus.LOST, error_type="WorkerLostError", error_message="attempt 1 was lost"
    )

    ended = wait_for_run(run.pk, statuses={RunStatus.SUCCEEDED}, timeout=30)  # the job's own end

    assert (ended.attempt, ended.worker) == (1, first.worker)
    assert (ended.error_type, ended.error_message) == ("", "")
    assert ended.finished_at is not None and ended.duration_ms >= 5000


# -- Two workers of their own, on a queue of their own --------------------------------

QUEUE = "redelivery-tests"
IDLE_QUEUE = "redelivery-tests-idle"  # nothing is ever sent there


def worker_hostname(name: str) -> str:
    return f"{name}-{os.getpid()}@{socket.gethostname()}"


def queue_worker(service_env, logs_dir, name: str, queue: str = QUEUE) -> Service:
    """A prefork worker with one pool process on ``queue`` only: busy with one run, it takes no other."""
    service = Service(
        name,
        celery(
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--queues",
            queue,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            worker_hostname(name),
        ),
        service_env,
        logs_dir,
    )
    service.wait_for_log("ready.", timeout=120)
    return service


@pytest.fixture
def queue_workers(service_env, logs_dir, redis_client):
    started: list[Service] = []

    def start(name: str, queue: str = QUEUE) -> Service:
        started.append(queue_worker(service_env, logs_dir, name, queue))
        return started[-1]

    yield start
    for service in started:
        service.stop()
    redis_client.delete(QUEUE, IDLE_QUEUE)


def test_it_ignores_the_copy_on_another_worker_while_the_first_worker_runs_the_attempt(
    queue_workers, catalog, redis_client
):
    first_worker = queue_workers("first")
    second_worker = queue_workers("second", queue=IDLE_QUEUE)
    run = sleep_run(queue=QUEUE)
    first = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    # Only now does the second worker consume the queue: the first is busy,
    # so the copy can only go to the second.
    replies = app.control.add_consumer(QUEUE, destination=[worker_hostname("second")], reply=True, timeout=5)
    assert replies and "ok" in str(replies), replies

    give_back_as_after_the_visibility_timeout(redis_client, run)
    second_worker.wait_for_log(ignored_warning(run, 1, first.worker), timeout=30)
    ended, seen = watch_until_finished(run, timeout=SLEEP_SECONDS + 30)

    assert ended.status == RunStatus.SUCCEEDED
    assert RunStatus.LOST not in seen
    assert (ended.attempt, ended.worker, ended.started_at) == (1, first.worker, first.started_at)
    assert f"Task {JOB}[{run.pk}] succeeded in" in first_worker.log()
    assert f"Task {JOB}[{run.pk}] succeeded in" not in second_worker.log()
    assert unacked_tag_of(redis_client, run) is None


def test_it_takes_the_attempt_of_a_worker_restarted_under_the_same_name_for_lost(
    queue_workers, catalog, redis_client
):
    dead = queue_workers("restarted")
    run = sleep_run(seconds=45, queue=QUEUE)
    first = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    for pid in [*children_of(dead.process.pid), dead.process.pid]:
        os.kill(pid, signal.SIGKILL)  # the whole worker: no main process left to record anything
    dead.process.wait()

    queue_workers("restarted")  # same hostname, fresh presence, a new process
    assert WorkerPresence.objects.get(hostname=first.worker).started_at > first.started_at
    give_back_as_after_the_visibility_timeout(redis_client, run)
    ended = wait_for_run(run.pk, timeout=30)

    assert ended.status == RunStatus.LOST
    assert ended.error_type == "WorkerLostError"
    assert first.worker in ended.error_message
