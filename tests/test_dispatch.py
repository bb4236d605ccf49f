"""One dispatch: the catalog copy it validates against, and the broker connection it keeps."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

import jobs.dispatch
from jobs.dispatch import Delivery, dispatch
from jobs.models import JobDefinition, JobRun, OutboxBatch
from jobs.publishing import kept_producer
from scheduler.celery import app

pytestmark = pytest.mark.django_db(transaction=True)

# No test worker consumes these queues, so they hold exactly what was published.
QUEUE = "dispatch-tests"
OTHER_QUEUE = "dispatch-tests-other"


@pytest.fixture
def queues(catalog, redis_client):
    redis_client.delete(QUEUE, OTHER_QUEUE)
    yield
    redis_client.delete(QUEUE, OTHER_QUEUE)


def published_ids(redis_client, queue: str = QUEUE) -> list[str]:
    return [json.loads(message)["headers"]["id"] for message in redis_client.lrange(queue, 0, -1)]


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


def test_it_takes_a_republished_queue_once_its_copy_expires(queues, monkeypatch, redis_client):
    define("billing.charge", [AMOUNT])
    assert dispatch("billing.charge", [1]).queue == QUEUE
    republish_elsewhere("billing.charge", queue=OTHER_QUEUE)

    assert dispatch("billing.charge", [2]).queue == QUEUE  # trusted for CATALOG_TTL_SECONDS
    monkeypatch.setattr(jobs.dispatch, "CATALOG_TTL_SECONDS", 0.0)
    run = dispatch("billing.charge", [3])

    assert run.queue == OTHER_QUEUE
    assert published_ids(redis_client, OTHER_QUEUE) == [str(run.pk)]


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
    # As when Redis restarts between two dispatches: the kept sockets are dead.
    killed = [c["addr"] for c in redis_client.client_list() if c["addr"] in ours]
    for address in killed:
        redis_client.client_kill(address)
    assert killed

    second = dispatch("heartbeat", queue=QUEUE)

    assert second.delivery == Delivery.SENT
    assert published_ids(redis_client) == [str(second.pk), str(first.pk)]
    assert not OutboxBatch.objects.exists()


def _local_addresses(producer) -> set[str]:
    """``host:port`` of the Redis client sockets behind ``producer``'s channel."""
    pool = producer.channel.client.connection_pool
    addresses = set()
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        if connection._sock is not None:
            host, port = connection._sock.getsockname()[:2]
            addresses.add(f"{host}:{port}")
    return addresses
