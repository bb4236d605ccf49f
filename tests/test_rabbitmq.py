"""RabbitMQ as the broker: what differs from Redis, end to end with real workers.

These run only when the broker is RabbitMQ (CI's second pass:
``BROKER_URL=amqp://guest:guest@127.0.0.1:5672// python3 run.py test -m broker``),
with the rest of the ``broker`` tests: beat to worker, time limits, redelivery
of a finished run's message, a dead pool process, Sentry events.

RabbitMQ has no visibility timeout. It gives an unacknowledged message back
the moment the channel that took it closes: a worker killed mid-job has its
message redelivered at once to another worker, not hours later; and a run
whose worker died is recorded lost once no copy can come back (minutes).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.conf import settings

from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus
from jobs.runs import ABANDONED_MARGIN_SECONDS, abandoned_after_seconds, record_abandoned_attempts
from tests.conftest import purge_amqp_queues, wait_for_run
from tests.support.processes import children_of, start_worker

QUEUE = "rabbitmq-tests"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.broker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.CELERY_BROKER_URL.startswith("amqp"),
        reason="RabbitMQ only: run with BROKER_URL=amqp://guest:guest@127.0.0.1:5672//",
    ),
]


@pytest.fixture
def first_worker(service_env, logs_dir, catalog):
    purge_amqp_queues([QUEUE])
    worker = start_worker(service_env, logs_dir, name="rabbit-first", concurrency=1, queues=QUEUE)
    worker.wait_for_log("ready.", timeout=120)
    yield worker
    worker.stop()


@pytest.fixture
def second_worker(service_env, logs_dir):
    worker = start_worker(service_env, logs_dir, name="rabbit-second", concurrency=1, queues=QUEUE)
    yield worker
    worker.stop()


@pytest.mark.timeout(240)
def test_a_killed_workers_message_comes_back_at_once_and_its_run_is_lost_in_minutes_not_hours(
    first_worker, second_worker
):
    run = dispatch(
        "diagnostics.sleep", kwargs={"seconds": 60}, queue=QUEUE, soft_time_limit=100, hard_time_limit=120
    )
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=60)
    second_worker.wait_for_log("ready.", timeout=120)
    pool = children_of(first_worker.process.pid)
    os.kill(first_worker.process.pid, signal.SIGKILL)  # the whole worker: its main process, then its pool
    for child in pool:
        os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()

    # No visibility timeout: the closed channel gives the message back at once.
    # The first worker's presence is still fresh, so the copy cannot tell a dead
    # worker from a dropped connection (whose job runs on): it is not run twice.
    second_worker.wait_for_log(
        f"diagnostics.sleep[{run.pk}]: redelivered while attempt 1 still runs", timeout=30
    )
    assert time.monotonic() - killed_at < 30
    assert JobRun.objects.get(pk=run.pk).status == RunStatus.RUNNING

    # Nothing else will come back, so the sweep every worker runs records it lost
    # once the attempt's worker is stale and abandoned_after_seconds() passed:
    # on RabbitMQ 10 minutes, not twice a visibility timeout (hours, on Redis).
    assert abandoned_after_seconds() == ABANDONED_MARGIN_SECONDS
    started = JobRun.objects.get(pk=run.pk).started_at
    assert record_abandoned_attempts(now=started + timedelta(seconds=ABANDONED_MARGIN_SECONDS - 5)) == 0
    assert record_abandoned_attempts(now=started + timedelta(seconds=ABANDONED_MARGIN_SECONDS + 5)) == 1
    lost = JobRun.objects.get(pk=run.pk)
    assert lost.status == RunStatus.LOST
    assert f"within {ABANDONED_MARGIN_SECONDS} s" in lost.error_message


def delete_queue(name: str) -> None:
    from scheduler.celery import app

    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            channel.queue_delete(name)
        finally:
            channel.close()


@pytest.mark.timeout(180)
def test_a_run_sent_before_any_worker_declared_its_queue_waits_for_the_first_worker(
    service_env, logs_dir, catalog
):
    # RabbitMQ drops a message routed to a queue that does not exist; Redis keeps
    # it in a list. Publishing declares the queue as a worker would, so it waits.
    queue = f"{QUEUE}-first-worker"  # one this process never published to (kombu remembers declarations)
    delete_queue(queue)
    run = dispatch("heartbeat", queue=queue)
    worker = start_worker(service_env, logs_dir, name="rabbit-late", concurrency=1, queues=queue)
    try:
        worker.wait_for_log("ready.", timeout=120)
        assert wait_for_run(run.pk, timeout=60).status == RunStatus.SUCCEEDED
    finally:
        worker.stop()
