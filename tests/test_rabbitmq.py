"""RabbitMQ as the broker: what differs from Redis, end to end with real workers.

These run only when the broker is RabbitMQ (CI's second pass:
``BROKER_URL=amqp://guest:guest@127.0.0.1:5672// python3 run.py test -m broker``),
with the rest of the ``broker`` tests: beat to worker, time limits, redelivery
of a finished run's message, a dead pool process, Sentry events.

RabbitMQ has no visibility timeout. It gives an unacknowledged message back
the moment the channel that took it closes: a worker killed mid-job has its
message redelivered at once to another worker, not hours later; and a run
whose worker died is recorded lost once no copy can come back (minutes).
Queues are declared with ``x-max-priority`` (``BROKER_QUEUE_MAX_PRIORITY``), so
higher priorities go first; the outbox and the send-only client work the same.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from jobs.dispatch import Delivery, dispatch
from jobs.models import JobRun, OutboxBatch, RunOrigin, RunStatus
from jobs.publishing import publish_outbox
from jobs.runs import ABANDONED_MARGIN_SECONDS, abandoned_after_seconds, record_abandoned_attempts
from scheduler.celery import app
from tests.conftest import purge_amqp_queues, wait_for_run
from tests.support.broker import app_broker, closed_port_url
from tests.support.processes import children_of, start_worker
from tests.test_sendonly_client import run_without_django

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


@pytest.mark.timeout(180)
def test_a_higher_priority_run_overtakes_runs_queued_before_it(first_worker):
    # The worker's one child is busy and, with late acks and a prefetch of one,
    # the worker holds no other message: the queue orders what waits, and it
    # does so only when declared with x-max-priority (BROKER_QUEUE_MAX_PRIORITY).
    blocker = dispatch("diagnostics.sleep", [3], queue=QUEUE)
    wait_for_run(blocker.pk, statuses={RunStatus.RUNNING}, timeout=60)
    low = [dispatch("diagnostics.sleep", [0.1], queue=QUEUE, priority=1) for _ in range(3)]
    urgent = dispatch("diagnostics.sleep", [0.1], queue=QUEUE, priority=9)

    finished = {run.pk: wait_for_run(run.pk, timeout=60) for run in [blocker, *low, urgent]}

    assert {run.status for run in finished.values()} == {RunStatus.SUCCEEDED}
    assert settings.BROKER_QUEUE_MAX_PRIORITY == 10
    started = {pk: run.started_at for pk, run in finished.items()}
    assert all(started[urgent.pk] < started[run.pk] for run in low), started


def test_a_priority_above_the_queues_maximum_is_refused_with_the_range(catalog):
    with pytest.raises(ValidationError) as refused:
        dispatch("heartbeat", queue=QUEUE, priority=11)

    (message,) = refused.value.message_dict["priority"]
    assert "with RabbitMQ it is 0 to 10 (BROKER_QUEUE_MAX_PRIORITY)" in message
    assert not JobRun.objects.exists()


@pytest.mark.timeout(180)
def test_a_run_kept_in_the_outbox_while_rabbitmq_was_down_is_sent_by_the_sweep(first_worker):
    with app_broker(closed_port_url("guest:guest@", scheme="amqp")):
        run = dispatch("diagnostics.sleep", [0.1], queue=QUEUE)

    assert run.delivery == Delivery.OUTBOX
    assert run.delivery_error  # the broker's error, kept on the returned run
    assert JobRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert OutboxBatch.objects.filter(run_ids__contains=[str(run.pk)]).exists()

    assert publish_outbox(app) == 1  # the 30 s sweep's step, with RabbitMQ back

    assert wait_for_run(run.pk, timeout=60).status == RunStatus.SUCCEEDED
    assert not OutboxBatch.objects.exists()


@pytest.mark.timeout(180)
def test_a_service_without_django_dispatches_over_rabbitmq_with_the_catalog_from_redis(first_worker):
    result = run_without_django(
        f"""
        import os
        from jobs.sendonly import Client

        catalog = {settings.REDIS_URL!r}
        with Client(os.environ["BROKER"], catalog_url=catalog, service="billing-api") as client:
            dispatched = client.dispatch("diagnostics.sleep", [0.1], queue={QUEUE!r}, priority=7)
            try:
                client.dispatch("diagnostics.sleep", [0.1], queue={QUEUE!r}, priority=11)
            except Exception as exc:
                refused = str(exc)
        result = {{"run_id": dispatched.run_id, "refused": refused}}
        """,
        settings.CELERY_BROKER_URL,
    )

    run = wait_for_run(result["run_id"], timeout=60)
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.error_message)
    assert (run.origin, run.requested_by, run.queue) == (RunOrigin.CLIENT, "billing-api", QUEUE)
    assert "0 to 10" in result["refused"]
