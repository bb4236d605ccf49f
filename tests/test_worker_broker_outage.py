"""A worker rides out a Redis outage in the middle of a job.

A real prefork worker consumes from a Redis server this test starts on its own
port (append-only, so the unacked message survives the restart). The test
kills Redis with SIGKILL while a 20 s job sleeps, keeps it down for 15 s (the
job ends after Redis is back) or 30 s (it ends while Redis is down), starts it
again and checks that the worker is still the same process, that the run is
recorded once and correctly, and that a new run is served afterwards.

Before ``lib/redis_transport.py`` the worker died at the connection loss with
``AttributeError: 'NoneType' object has no attribute 'hostname'``.
"""

from __future__ import annotations

import signal
import time
import uuid
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.utils import timezone

from jobs.models import JobRun, RunStatus
from jobs.publishing import publish_runs
from scheduler.embedded_redis import start_embedded_redis
from tests.conftest import wait_for_run
from tests.support.broker import redis_broker_only
from tests.support.processes import QUEUES, Service, celery, free_port, start_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    redis_broker_only(
        "stops and restarts a Redis broker of its own (our Redis transport's recovery mid-job); "
        "RabbitMQ's side: tests/test_rabbitmq.py and tests/test_dispatch.py (a connection the broker closed)",
    ),
]

JOB_SECONDS = 20


def start_redis(port: int, data_dir):
    return start_embedded_redis(port, data_dir, append_only=True)


def send_run(broker_url: str, job: str, kwargs: dict, soft: int, hard: int) -> JobRun:
    """Record a queued run and publish it to ``broker_url`` (not the suite's Redis)."""
    now = timezone.now()
    run = JobRun.objects.create(
        id=uuid.uuid4(),
        job=job,
        kwargs=kwargs,
        queue="default" if job.startswith("diagnostics.") else job,
        soft_time_limit=soft,
        hard_time_limit=hard,
        scheduled_for=now,
        enqueued_at=now,
        deadline=now + timedelta(minutes=10),
        status=RunStatus.QUEUED,
    )
    broker = Celery("outage-test", broker=broker_url, set_as_current=False)
    try:
        assert publish_runs(broker, [run]) == 1
    finally:
        broker.close()
    return run


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def assert_serving(worker: Service) -> None:
    """The worker is the process we started, and it never gave up on its consumer."""
    log = worker.log()
    assert worker.process.poll() is None and "Unrecoverable error" not in log, log[-6000:]


def start_platform_worker(env: dict[str, str], log_dir) -> Service:
    """The worker as ``runplatform`` starts it: mingle and gossip on (more channels to close)."""
    command = celery("worker", "--pool", "prefork", "--concurrency", "2", "--queues", QUEUES)
    return Service("outage-platform-worker", [*command, "--loglevel", "INFO"], env, log_dir)


@pytest.mark.parametrize(
    ("shape", "outage_seconds"),
    [("bare", 15), ("platform", 30)],
    ids=["suite-worker-job-ends-after-the-outage", "platform-worker-job-ends-during-the-outage"],
)
def test_the_worker_survives_a_redis_outage_mid_job_and_serves_runs_after_it(
    shape, outage_seconds, service_env, logs_dir, tmp_path, catalog
):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    broker = start_redis(port, tmp_path)
    env = {**service_env, "REDIS_URL": url}
    if shape == "bare":
        worker = start_worker(env, logs_dir, "outage-worker")
    else:
        worker = start_platform_worker(env, logs_dir)
    try:
        worker.wait_for_log("ready.", timeout=120)
        run = send_run(url, "diagnostics.sleep", {"seconds": JOB_SECONDS}, soft=60, hard=90)
        wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)

        broker.send_signal(signal.SIGKILL)
        broker.wait(timeout=10)
        time.sleep(outage_seconds)
        assert_serving(worker)
        broker = start_redis(port, tmp_path)

        run = wait_for_run(run.pk, timeout=JOB_SECONDS + 60)
        assert (run.status, run.attempt, run.result) == (RunStatus.SUCCEEDED, 1, {"slept": JOB_SECONDS})
        assert_serving(worker)

        after = send_run(url, "heartbeat", {}, soft=30, hard=45)
        assert wait_for_run(after.pk, timeout=60).status == RunStatus.SUCCEEDED
        assert_serving(worker)
        # The job's ack reached Redis once it was back: nothing is left to come
        # back after the visibility timeout, and the job ran once.
        assert wait_for(lambda: redis.Redis(port=port).hlen("unacked") == 0, timeout=10)
        assert JobRun.objects.get(pk=run.pk).attempt == 1
    finally:
        worker.stop()
        broker.kill()
        broker.wait(timeout=10)
