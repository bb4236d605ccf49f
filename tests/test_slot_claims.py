"""One run per slot, and the outbox: the exactly-once core of beat, on the real database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobs.models import JobRun, OutboxBatch, RunStatus
from scheduler.beat.dispatch import MISSED, PlannedSlot, claim_slots
from scheduler.models import Overlap
from tests.support.schedules import every_minute_heartbeat_entry

pytestmark = pytest.mark.django_db

SLOT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def entry():
    return every_minute_heartbeat_entry()


def claim(entry, *slots, outcome="run"):
    return claim_slots([PlannedSlot(entry, slot, outcome) for slot in slots]).runs


def test_a_slot_claimed_twice_yields_one_run(entry):
    first = claim(entry, SLOT)
    second = claim(entry, SLOT)

    assert len(first) == 1
    assert second == []
    assert JobRun.objects.filter(schedule_id=entry.task_id, scheduled_for=SLOT).count() == 1


def test_a_batch_claims_only_the_slots_nobody_claimed_yet(entry):
    claim(entry, SLOT)
    later = SLOT + timedelta(minutes=1)

    claimed = claim(entry, SLOT, later)

    assert [r.scheduled_for for r in claimed] == [later]


def test_a_claimed_run_carries_its_deadline_and_waits_in_the_outbox(entry):
    (run,) = claim(entry, SLOT)
    run = JobRun.objects.get(pk=run.pk)

    assert run.status == RunStatus.QUEUED
    # Not yet published: the claim put it in an outbox batch, which the sender deletes.
    assert [batch.run_ids for batch in OutboxBatch.objects.all()] == [[str(run.pk)]]
    assert run.deadline == SLOT + entry.definition.starting_deadline


def test_it_records_skipped_when_the_previous_run_is_still_running(entry):
    entry.definition = replace(entry.definition, overlap=Overlap.SKIP)
    (first,) = claim(entry, SLOT)
    JobRun.objects.filter(pk=first.pk).update(status=RunStatus.RUNNING)

    (second,) = claim(entry, SLOT + timedelta(minutes=1))

    second = JobRun.objects.get(pk=second.pk)
    assert second.status == RunStatus.SKIPPED
    assert second.finished_at is not None


def test_the_claim_advances_the_schedule_state_in_the_same_transaction(entry):
    claim(entry, SLOT, SLOT + timedelta(minutes=1))

    from scheduler.models import SchedulePolicy

    assert SchedulePolicy.objects.get(task_id=entry.task_id).last_slot_at == SLOT + timedelta(minutes=1)


def test_a_missed_slot_is_recorded_and_not_published(entry):
    (run,) = claim(entry, SLOT, outcome=MISSED)

    run = JobRun.objects.get(pk=run.pk)
    assert run.status == RunStatus.MISSED
    assert run.finished_at is not None


def test_replace_records_the_older_active_runs_and_returns_them_for_revocation(entry):
    entry.definition = replace(entry.definition, overlap=Overlap.REPLACE)
    (running,) = claim(entry, SLOT)
    JobRun.objects.filter(pk=running.pk).update(status=RunStatus.RUNNING)
    later = SLOT + timedelta(minutes=1)

    claimed, to_revoke, _ = claim_slots([PlannedSlot(entry, later)])

    assert [r.scheduled_for for r in claimed] == [later]
    assert [r.pk for r in to_revoke] == [running.pk]
    replaced = JobRun.objects.get(pk=running.pk)
    assert (replaced.status, replaced.error_type) == (RunStatus.FAILED, "Replaced")
