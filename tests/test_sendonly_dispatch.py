"""``jobs.sendonly.Client.dispatch``: what it refuses at once, what it sends, and what the worker records.

Refusals (unknown job, arguments that do not bind, impossible options) raise
a ``DispatchError`` (a ``ValueError``) before anything is published: the
calls name a queue no worker consumes, so a message that slipped through
would still be there to see. The rest runs on the real worker over the real
broker (Redis or RabbitMQ; the catalog is in Redis either way): idempotency
keys, countdown / eta, expires, per-call limits.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Queue

from jobs.catalog import publish_catalog
from jobs.limits import broker_is_redis
from jobs.models import JobDefinition, JobRun, RunOrigin, RunStatus
from jobs.publishing import REDIS_MAX_PRIORITY
from jobs.sendonly import (
    CATALOG_KEY,
    ArgumentsDoNotBind,
    Client,
    DispatchError,
    InvalidDispatchOption,
    UnknownJob,
    names,
    run_id_for,
)
from jobs.sendonly.messages import publish_task_message
from scheduler.celery import app
from tests.conftest import wait_for_run
from tests.support.processes import QUEUES
from tests.support.queues import empty_queues, queue_length, waiting_messages, waiting_priorities

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

PARKING = "sendonly-tests-parking"  # no worker consumes it
# One above the highest priority the broker takes (Redis: 9; RabbitMQ: the queues' x-max-priority).
TOO_HIGH = (REDIS_MAX_PRIORITY if broker_is_redis() else settings.BROKER_QUEUE_MAX_PRIORITY) + 1


def waiting(queues: Iterable[str]) -> int:
    return sum(queue_length(queue) for queue in queues)


@pytest.fixture
def client() -> Iterable[Client]:
    empty_queues([PARKING])
    with Client(
        settings.CELERY_BROKER_URL,
        catalog_url=settings.REDIS_URL,  # where the workers publish the catalog, whatever the broker
        service="sendonly-tests",
        catalog_ttl=0,
        queue_max_priority=settings.BROKER_QUEUE_MAX_PRIORITY,
    ) as sender:
        yield sender
    empty_queues([PARKING])


@pytest.fixture
def nothing_sent(clean_queues) -> Iterable[None]:
    """Fails the test if any message reached the parking queue or the job queues."""
    yield
    assert waiting([PARKING, *QUEUES.split(",")]) == 0, "a refused call published a message"


def move_one(source: str, target: str) -> bool:
    """Move a message waiting in ``source``, unchanged, to ``target`` (whether there was one).

    What a worker of ``source`` would have taken; on either broker, through
    the platform's own publisher (which declares ``target`` on RabbitMQ).
    """
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            message = Queue(source).bind(channel).get(no_ack=False)
            if message is None:
                return False
            publish_task_message(
                conn.Producer(channel),
                message.headers,
                message.body,
                queue=target,
                priority=message.properties.get("priority"),
                queue_max_priority=settings.BROKER_QUEUE_MAX_PRIORITY,
            )
            message.ack()
            return True
        finally:
            channel.close()


# --- Refused at once, nothing published -------------------------------------------------


def test_an_unknown_job_is_refused_at_once(client, nothing_sent):
    with pytest.raises(UnknownJob) as refused:
        client.dispatch("reports.run_sumary", queue=PARKING)

    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert "Unknown job 'reports.run_sumary': no worker has published it" in message
    assert "reports.run_summary" in message  # the known jobs, to spot the typo


def test_a_job_only_the_database_knows_is_unknown_to_the_client(client, nothing_sent):
    # The routing table is what the workers published to Redis, not a copy of the table.
    JobDefinition.objects.create(
        name="ghost.job",
        queue="default",
        parameters=[],
        soft_time_limit=10,
        hard_time_limit=20,
        last_published_at=timezone.now(),
    )
    with pytest.raises(UnknownJob):
        client.dispatch("ghost.job", queue=PARKING)


@pytest.mark.parametrize(
    "args, kwargs, field, expected",
    [
        pytest.param([1, True, "x"], {}, "args", "too many positional arguments", id="too many"),
        pytest.param(
            [], {"seconds": 1, "speed": 2}, "kwargs", "unexpected keyword argument 'speed'", id="unknown"
        ),
        pytest.param([], {}, "args", "missing a required argument: 'seconds'", id="missing"),
        pytest.param([], {"seconds": "abc"}, "kwargs", "expected number, got string", id="wrong type"),
        pytest.param([math.nan], {}, "args", "not strict JSON", id="NaN"),
        pytest.param([{1, 2}], {}, "args", "not JSON", id="not JSON"),
        pytest.param("1", {}, "args", "args must be a list", id="args not a list"),
    ],
)
def test_arguments_that_do_not_bind_are_refused_at_once(client, nothing_sent, args, kwargs, field, expected):
    with pytest.raises(ArgumentsDoNotBind) as refused:
        client.dispatch(names.DIAGNOSTICS_SLEEP, args, kwargs, queue=PARKING)

    assert expected in str(refused.value)
    assert refused.value.field == field


@pytest.mark.parametrize(
    "options, field",
    [
        pytest.param({"priority": TOO_HIGH}, "priority", id="priority above the broker's highest"),
        pytest.param({"priority": -1}, "priority", id="negative priority"),
        pytest.param({"priority": True}, "priority", id="priority not a number"),
        pytest.param(
            {"soft_time_limit": 50, "hard_time_limit": 50}, "hard_time_limit", id="hard not after soft"
        ),
        pytest.param({"soft_time_limit": 120}, "hard_time_limit", id="soft past the job's hard"),
        pytest.param({"hard_time_limit": 0}, "hard_time_limit", id="zero"),
        pytest.param({"hard_time_limit": 10**7}, "hard_time_limit", id="past the visibility timeout"),
        pytest.param({"countdown": 1, "eta": datetime.now(UTC)}, "countdown", id="countdown and eta"),
        pytest.param({"countdown": -1}, "countdown", id="negative countdown"),
        pytest.param({"eta": datetime(2030, 1, 1)}, "eta", id="naive eta"),  # noqa: DTZ001
        pytest.param({"countdown": 10, "expires": 5}, "expires", id="expires before the start"),
        pytest.param({"expires": datetime(2020, 1, 1, tzinfo=UTC)}, "expires", id="already expired"),
        pytest.param({"queue": " "}, "queue", id="blank queue"),
        pytest.param({"idempotency_key": ""}, "idempotency_key", id="empty key"),
    ],
)
def test_options_that_cannot_hold_are_refused_at_once(client, nothing_sent, options, field):
    options.setdefault("queue", PARKING)
    with pytest.raises(InvalidDispatchOption) as refused:
        client.dispatch(names.DIAGNOSTICS_SLEEP, kwargs={"seconds": 1}, **options)

    assert refused.value.field == field
    assert isinstance(refused.value, DispatchError)


# --- What is sent ---------------------------------------------------------------------------


def test_the_routing_table_is_the_catalog_the_workers_published(client, redis_client):
    published = {
        name.decode(): json.loads(value) for name, value in redis_client.hgetall(CATALOG_KEY).items()
    }

    for definition in JobDefinition.objects.all():
        entry = published[definition.name]
        assert (entry["queue"], entry["soft_time_limit"], entry["hard_time_limit"], entry["parameters"]) == (
            definition.queue,
            definition.soft_time_limit,
            definition.hard_time_limit,
            definition.parameters,
        )
        assert datetime.fromisoformat(entry["published_at"]) == definition.last_published_at
    assert set(names.BUILTIN_JOBS) <= set(client.jobs())

    # A job that leaves the catalog is refused at once; published again, it is accepted at once.
    redis_client.hdel(CATALOG_KEY, names.HEARTBEAT)
    with pytest.raises(UnknownJob):
        client.dispatch(names.HEARTBEAT, queue=PARKING)
    publish_catalog(worker="tests")
    assert client.dispatch(names.HEARTBEAT, queue=PARKING).queue == PARKING


def test_the_message_carries_priority_limits_and_origin(client):
    sent = client.dispatch(
        names.DIAGNOSTICS_SLEEP,
        kwargs={"seconds": 1},
        queue=PARKING,
        priority=3,
        soft_time_limit=5,
        hard_time_limit=8,
    )

    assert waiting_priorities(PARKING) == {sent.run_id: 3}
    (headers,) = waiting_messages(PARKING)
    assert (headers["id"], headers["task"], headers["timelimit"]) == (
        sent.run_id,
        "diagnostics.sleep",
        [8, 5],
    )
    assert (headers["run_origin"], headers["requested_by"], headers["eta"], headers["expires"]) == (
        "client",
        "sendonly-tests",
        None,
        None,
    )
    assert sent.api_path == f"/api/v1/runs/{sent.run_id}"


def test_an_idempotency_key_gives_every_call_the_same_run_id(client):
    first = client.dispatch(names.HEARTBEAT, queue=PARKING, idempotency_key="order-42")
    again = client.dispatch(names.HEARTBEAT, queue=PARKING, idempotency_key="order-42")
    other = client.dispatch(names.HEARTBEAT, queue=PARKING, idempotency_key="order-43")
    plain = client.dispatch(names.HEARTBEAT, queue=PARKING)

    assert first.run_id == again.run_id == run_id_for("heartbeat", "order-42")
    assert len({first.run_id, other.run_id, plain.run_id}) == 3
    assert run_id_for("reports.run_summary", "order-42") != first.run_id  # per job


# --- On the real worker -------------------------------------------------------------------


def log_lines(worker, run_id: str, text: str) -> list[str]:
    return [line for line in worker.log().splitlines() if f"[{run_id}]" in line and text in line]


def wait_for_log_lines(worker, run_id: str, text: str, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(worker, run_id, text)
        if len(lines) >= count:
            return lines
        time.sleep(0.2)
    raise AssertionError(
        f"{count} log line(s) with {run_id} and {text!r} expected: {log_lines(worker, run_id, '')}"
    )


def test_a_retried_call_with_the_same_key_runs_the_job_once(worker, client, clean_queues):
    calls = [
        client.dispatch(names.DIAGNOSTICS_SLEEP, kwargs={"seconds": 1}, idempotency_key="invoice-7")
        for _ in range(2)
    ]  # the second while the first is queued or running
    run_id = calls[0].run_id

    run = wait_for_run(run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.attempt == 1
    assert len(wait_for_log_lines(worker, run_id, "job not run", 1)) == 1

    # Retried after it ended: acknowledged and ignored, the record kept.
    client.dispatch(names.DIAGNOSTICS_SLEEP, kwargs={"seconds": 1}, idempotency_key="invoice-7")
    (ignored,) = wait_for_log_lines(worker, run_id, "job not run", 2)[1:]
    assert "already ended (succeeded)" in ignored
    assert JobRun.objects.filter(job="diagnostics.sleep").count() == 1
    after = JobRun.objects.get(pk=run_id)
    assert (after.status, after.attempt, after.finished_at) == (RunStatus.SUCCEEDED, 1, run.finished_at)
    assert len(log_lines(worker, run_id, "succeeded in")) == 1  # Celery's line for a task that ran


@pytest.mark.parametrize("how", ["countdown", "eta"])
def test_a_run_does_not_start_before_its_countdown_or_eta(worker, client, clean_queues, how):
    before = timezone.now()
    when = {"countdown": 2} if how == "countdown" else {"eta": before + timedelta(seconds=2)}
    sent = client.dispatch(names.HEARTBEAT, **when)

    run = wait_for_run(sent.run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert sent.eta is not None
    assert run.scheduled_for == sent.eta  # due at its eta: lateness counts from there
    assert run.started_at >= sent.eta
    assert 0 <= run.lateness_ms < 5000
    assert run.origin == RunOrigin.CLIENT


def test_a_message_that_expires_before_a_worker_takes_it_is_recorded_missed(worker, client):
    sent = client.dispatch(names.HEARTBEAT, queue=PARKING, expires=1)
    time.sleep(1.5)
    # A worker of the parking queue comes up too late: the message reaches the worker's queue expired.
    assert move_one(PARKING, "heartbeat")

    run = wait_for_run(sent.run_id, timeout=20)
    assert (run.status, run.error_type) == (RunStatus.MISSED, "StartingDeadlineExceeded")
    assert "expired" in run.error_message
    assert (run.started_at, run.attempt, run.origin, run.requested_by) == (
        None,
        0,
        RunOrigin.CLIENT,
        "sendonly-tests",
    )
    assert run.deadline == sent.expires


def test_per_call_limits_are_enforced_and_recorded(worker, client, clean_queues):
    sent = client.dispatch(names.DIAGNOSTICS_SLEEP, [5], soft_time_limit=1, hard_time_limit=3)

    run = wait_for_run(sent.run_id, timeout=30)
    assert run.status == RunStatus.SOFT_TIMEOUT, (run.status, run.error_message)
    assert (run.soft_time_limit, run.hard_time_limit, run.origin) == (1, 3, RunOrigin.CLIENT)
    assert run.duration_ms < 3000
