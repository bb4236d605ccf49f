"""The batch form of dispatch: all runs or none, one transaction, one outbox batch, one publish."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.dispatch import Delivery, dispatch_many
from jobs.limits import broker_is_redis
from jobs.models import JobRun, OutboxBatch, RunOrigin, RunStatus
from jobs.publishing import publish_outbox
from scheduler.celery import app
from tests.support.broker import app_broker, closed_port_url
from tests.support.queues import empty_queues, queued_ids

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

# No test worker consumes this queue, so it holds exactly what was published.
QUEUE = "dispatch-many-tests"


@pytest.fixture
def queue(catalog):
    empty_queues([QUEUE])
    yield QUEUE
    empty_queues([QUEUE])


def sleeps(n: int) -> list[tuple[list, dict]]:
    return [([], {"seconds": i / 10}) for i in range(n)]


def test_it_records_and_publishes_each_run_once(queue):
    runs = dispatch_many("diagnostics.sleep", sleeps(50), queue=queue, requested_by="fan-out")

    assert [run.delivery for run in runs] == [Delivery.SENT] * 50
    stored = JobRun.objects.in_bulk([run.pk for run in runs])
    assert len(stored) == 50
    assert [stored[run.pk].kwargs for run in runs] == [{"seconds": i / 10} for i in range(50)]
    assert {(r.status, r.queue, r.origin, r.requested_by, r.hard_time_limit) for r in stored.values()} == {
        (RunStatus.QUEUED, queue, RunOrigin.CLIENT, "fan-out", 90)
    }
    assert sorted(queued_ids(QUEUE)) == sorted(str(run.pk) for run in runs)
    assert not OutboxBatch.objects.exists()


def test_it_refuses_the_whole_batch_when_one_call_is_invalid(queue):
    calls = [*sleeps(3), ([], {"seconds": "abc"}), *sleeps(3)]

    with pytest.raises(ValidationError, match=r"call 3 of diagnostics\.sleep: .*expected number"):
        dispatch_many("diagnostics.sleep", calls, queue=queue)

    assert not JobRun.objects.exists()
    assert not OutboxBatch.objects.exists()
    assert queued_ids(QUEUE) == []


def test_it_refuses_an_unknown_job_before_recording_anything(queue):
    with pytest.raises(ValidationError, match="Unknown job 'reports.gone'"):
        dispatch_many("reports.gone", [([], {})], queue=queue)

    assert not JobRun.objects.exists()


def test_with_the_broker_down_it_keeps_every_run_in_one_outbox_batch(queue):
    with app_broker(closed_port_url(scheme="redis" if broker_is_redis() else "amqp")):
        runs = dispatch_many("diagnostics.sleep", sleeps(5), queue=queue)

    assert {run.delivery for run in runs} == {Delivery.OUTBOX}
    assert all(run.delivery_error for run in runs)
    assert [batch.run_ids for batch in OutboxBatch.objects.all()] == [[str(run.pk) for run in runs]]
    assert JobRun.objects.filter(status=RunStatus.QUEUED).count() == 5
    assert queued_ids(QUEUE) == []

    assert publish_outbox(app) == 5
    assert sorted(queued_ids(QUEUE)) == sorted(str(run.pk) for run in runs)
    assert not OutboxBatch.objects.exists()


def test_inside_a_callers_transaction_it_sends_at_commit_and_nothing_on_rollback(queue):
    with transaction.atomic():
        runs = dispatch_many("diagnostics.sleep", sleeps(2), queue=queue)
        assert [run.delivery for run in runs] == [Delivery.AT_COMMIT] * 2
        assert queued_ids(QUEUE) == []
    assert [run.delivery for run in runs] == [Delivery.SENT] * 2
    assert sorted(queued_ids(QUEUE)) == sorted(str(run.pk) for run in runs)

    empty_queues([QUEUE])
    with pytest.raises(RuntimeError), transaction.atomic():
        dispatch_many("diagnostics.sleep", sleeps(2), queue=queue)
        raise RuntimeError("the caller changes its mind")
    assert JobRun.objects.count() == 2
    assert queued_ids(QUEUE) == []


def test_it_records_nothing_for_no_calls(queue):
    assert dispatch_many("diagnostics.sleep", [], queue=queue) == []

    assert not JobRun.objects.exists()
    assert not OutboxBatch.objects.exists()
