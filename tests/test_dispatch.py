"""One dispatch: the catalog copy it validates against, and the broker connection it keeps."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

import jobs.dispatch
from jobs.dispatch import Delivery, dispatch
from jobs.limits import broker_is_redis
from jobs.models import JobDefinition, JobRun, OutboxBatch
from jobs.publishing import kept_producer
from scheduler.celery import app
from tests.support.queues import empty_queues, queued_ids

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

# No test worker consumes these queues, so they hold exactly what was published.
QUEUE = "dispatch-tests"
OTHER_QUEUE = "dispatch-tests-other"


@pytest.fixture
def queues(catalog):
    empty_queues([QUEUE, OTHER_QUEUE])
    yield
    empty_queues([QUEUE, OTHER_QUEUE])


def define(name: str, parameters: list[dict], queue: str = QUEUE) -> None:
    JobDefinition.objects.update_or_create(
        name=name,
        defaults={
            "queue": queue,
            "parameters": parameters,
            "soft_time_limit": 10,
            "hard_time_limit": 20,
            "last_published_at": timezone.now(),
        },
    )


def republish_elsewhere(name: str, **changes) -> None:
    """What another process's ``publish_catalog`` does, as seen from here: no signal in this process."""
    JobDefinition.objects.filter(name=name).update(**changes)


AMOUNT = {"name": "amount", "kind": "POSITIONAL_OR_KEYWORD", "required": True, "types": ["integer"]}
NOTE = {"name": "note", "kind": "POSITIONAL_OR_KEYWORD", "required": False, "types": ["string"]}


def test_it_accepts_a_job_as_soon_as_it_is_published(queues):
    with pytest.raises(ValidationError, match="Unknown job 'billing.charge'"):
        dispatch("billing.charge", [5])

    define("billing.charge", [AMOUNT])

    assert dispatch("billing.charge", [5]).queue == QUEUE


def test_it_refuses_bad_arguments_from_its_copy_of_the_catalog_as_the_table_does(queues):
    define("billing.charge", [AMOUNT])
    dispatch("billing.charge", [5])  # the copy is cached now

    with pytest.raises(ValidationError, match="expected integer, got string"):
        dispatch("billing.charge", ["five"])
    with pytest.raises(ValidationError, match="missing a required argument: 'amount'"):
        dispatch("billing.charge")
    assert JobRun.objects.count() == 1


def test_arguments_its_copy_refuses_are_judged_again_by_the_newer_catalog(queues):
    define("billing.charge", [AMOUNT])
    dispatch("billing.charge", [5])
    republish_elsewhere("billing.charge", parameters=[AMOUNT, NOTE])

    run = dispatch("billing.charge", [5], {"note": "refund"})

    assert run.kwargs == {"note": "refund"}


def test_it_takes_a_republished_queue_once_its_copy_expires(queues, monkeypatch):
    define("billing.charge", [AMOUNT])
    assert dispatch("billing.charge", [1]).queue == QUEUE
    republish_elsewhere("billing.charge", queue=OTHER_QUEUE)

    assert dispatch("billing.charge", [2]).queue == QUEUE  # trusted for CATALOG_TTL_SECONDS
    monkeypatch.setattr(jobs.dispatch, "CATALOG_TTL_SECONDS", 0.0)
    run = dispatch("billing.charge", [3])

    assert run.queue == OTHER_QUEUE
    assert queued_ids(OTHER_QUEUE) == [str(run.pk)]


def test_a_catalog_saved_in_this_process_is_seen_at_once(queues):
    define("billing.charge", [AMOUNT])
    dispatch("billing.charge", [1])

    define("billing.charge", [AMOUNT], queue=OTHER_QUEUE)

    assert dispatch("billing.charge", [2]).queue == OTHER_QUEUE


def test_it_sends_over_a_kept_connection_that_died_without_falling_back_to_the_outbox(queues, redis_client):
    first = dispatch("heartbeat", queue=QUEUE)
    assert first.delivery == Delivery.SENT
    with kept_producer(app) as producer:
        ours = _local_addresses(producer)
    # As when the broker restarts between two dispatches: it closed the kept connection.
    if broker_is_redis():
        killed = [c["addr"] for c in redis_client.client_list() if c["addr"] in ours]
        for address in killed:
            redis_client.client_kill(address)
    else:
        killed = _close_rabbitmq_connections(ours)
    assert killed

    second = dispatch("heartbeat", queue=QUEUE)

    assert second.delivery == Delivery.SENT, second.delivery_error
    assert sorted(queued_ids(QUEUE)) == sorted([str(first.pk), str(second.pk)])
    assert not OutboxBatch.objects.exists()


def _local_addresses(producer) -> set[str]:
    """``host:port`` of the client sockets behind ``producer``'s channel (Redis's pool, or the AMQP one)."""
    if not broker_is_redis():
        host, port = producer.connection.connection.sock.getsockname()[:2]
        return {f"{host}:{port}"}
    pool = producer.channel.client.connection_pool
    addresses = set()
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        if connection._sock is not None:
            host, port = connection._sock.getsockname()[:2]
            addresses.add(f"{host}:{port}")
    return addresses


def _close_rabbitmq_connections(addresses: set[str]) -> list[str]:
    """Have RabbitMQ close the client connections from ``addresses`` (as a restart does): their names.

    Through ``rabbitmqctl`` on this machine (CI's RabbitMQ is local, and this
    is how CI sets up its virtual host); only these connections, never the server.
    """
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("closing a connection from RabbitMQ's side needs rabbitmqctl, for the local server")
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "name"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    closed = []
    for line in listed.splitlines():
        pid, _, name = line.partition("\t")
        if name.split(" -> ")[0] in addresses:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "closed by tests/test_dispatch.py"],
                capture_output=True,
                check=True,
                timeout=60,
            )
            closed.append(name)
    return closed
