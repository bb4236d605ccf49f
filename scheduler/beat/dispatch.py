"""Claim slots and publish their runs: the exactly-once core of beat.

Guarantees:
- **One run per slot.** ``claim_slots`` inserts one ``JobRun`` per (schedule,
  slot) in one transaction under the ``one_run_per_slot`` unique constraint;
  rows another beat (or an earlier life of this one) inserted first are not
  ours, and we do not publish them.
- **Publish after commit.** Messages are sent only for committed rows, and a
  run is marked ``enqueued_at`` only after its message reached the broker. A
  crash in between leaves the run in the outbox (queued, not enqueued), and
  ``publish_outbox`` sends it again when a beat starts; a duplicate message is
  harmless because a worker starts a run with a conditional UPDATE.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from celery import Celery
from django.db import transaction
from django.utils import timezone

from jobs.client import CHUNK, chunks, publish_runs
from jobs.models import ACTIVE_STATUSES, JobRun, RunStatus
from scheduler.beat.entries import Entry
from scheduler.models import Overlap

def schedules_with_active_runs(task_ids: Sequence[int]) -> set[int]:
    active: set[int] = set()
    for chunk in chunks(list(task_ids)):
        active.update(
            JobRun.objects.filter(schedule_id__in=chunk, status__in=ACTIVE_STATUSES)
            .values_list("schedule_id", flat=True)
            .distinct()
        )
    return active


def claim_slots(due: Sequence[tuple[Entry, datetime]], now: datetime | None = None) -> list[JobRun]:
    """Insert the runs of ``due`` slots; return only those this call inserted.

    A slot of a schedule whose overlap policy is ``skip`` and that still has a
    run queued or running is claimed as ``skipped``, so history has no hole.
    """
    if not due:
        return []
    now = now or timezone.now()
    skip_candidates = [e.task_id for e, _ in due if e.overlap == Overlap.SKIP]
    busy = schedules_with_active_runs(skip_candidates) if skip_candidates else set()
    runs = []
    for entry, slot in due:
        skipped = entry.task_id in busy
        runs.append(
            JobRun(
                id=uuid.uuid4(),
                schedule_id=entry.task_id,
                schedule_name=entry.name,
                job=entry.job,
                args=entry.args,
                kwargs=entry.kwargs,
                queue=entry.queue,
                soft_time_limit=entry.soft_time_limit,
                hard_time_limit=entry.hard_time_limit,
                scheduled_for=slot,
                deadline=slot + entry.starting_deadline,
                status=RunStatus.SKIPPED if skipped else RunStatus.QUEUED,
                finished_at=now if skipped else None,
                error_message="the previous run was still queued or running" if skipped else "",
            )
        )
    with transaction.atomic():
        JobRun.objects.bulk_create(runs, ignore_conflicts=True, batch_size=CHUNK)
        ours: set[uuid.UUID] = set()
        for chunk in chunks([r.pk for r in runs]):
            ours.update(JobRun.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    return [r for r in runs if r.pk in ours]


def publish_outbox(app: Celery, limit: int = 10_000) -> int:
    """Publish claimed runs whose message never reached the broker (crash after commit)."""
    pending = list(
        JobRun.objects.filter(status=RunStatus.QUEUED, enqueued_at__isnull=True).order_by(
            "scheduled_for"
        )[:limit]
    )
    return publish_runs(app, pending)
