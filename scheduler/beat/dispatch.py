"""Claim slots and publish their runs: the exactly-once core of beat.

Guarantees:
- **One run per slot.** ``claim_slots`` inserts one ``JobRun`` per (schedule,
  slot) in one transaction under the ``one_run_per_slot`` unique constraint;
  rows another beat (or an earlier life of this one) inserted first are not
  ours, and we do not publish them.
- **Fenced.** The same transaction first re-checks the leader lease
  (``fence``); a beat that lost it claims nothing (``LeaseLost``).
- **State advances with the claim.** Each schedule's ``last_slot_at`` is
  written in that transaction, so a restarted beat resumes after it.
- **No holes.** Slots that will not run are claimed too, as ``missed`` (catch-up
  policy) or ``skipped`` (overlap policy).
- **Publish after commit.** See ``jobs.client.publish_runs`` and the outbox.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from django.db import transaction
from django.utils import timezone

from jobs.client import CHUNK, chunks, publish_runs
from jobs.models import ACTIVE_STATUSES, JobRun, RunStatus
from scheduler.beat.entries import Entry
from scheduler.models import Overlap, SchedulePolicy

logger = logging.getLogger(__name__)

RUN = "run"
MISSED = "missed"


@dataclass(slots=True)
class PlannedSlot:
    entry: Entry
    slot: datetime
    outcome: str = RUN  # RUN or MISSED
    reason: str = ""


def schedules_with_active_runs(task_ids: Sequence[int]) -> dict[int, list[JobRun]]:
    active: dict[int, list[JobRun]] = defaultdict(list)
    for chunk in chunks(list(task_ids)):
        for run in JobRun.objects.filter(schedule_id__in=chunk, status__in=ACTIVE_STATUSES).only(
            "id", "schedule_id", "status"
        ):
            active[run.schedule_id].append(run)
    return active


def _run_for(planned: PlannedSlot, status: RunStatus, now: datetime, message: str = "") -> JobRun:
    entry = planned.entry
    finished = status not in (RunStatus.QUEUED,)
    return JobRun(
        id=uuid.uuid4(),
        schedule_id=entry.task_id,
        schedule_name=entry.name,
        job=entry.job,
        args=json.loads(entry.args_json),
        kwargs=json.loads(entry.kwargs_json),
        queue=entry.queue,
        soft_time_limit=entry.soft_time_limit,
        hard_time_limit=entry.hard_time_limit,
        scheduled_for=planned.slot,
        deadline=planned.slot + entry.starting_deadline,
        status=status,
        finished_at=now if finished else None,
        error_message=message,
    )


def _advance_last_slots(planned: Sequence[PlannedSlot]) -> None:
    newest: dict[int, datetime] = {}
    for p in planned:
        if p.slot > newest.get(p.entry.task_id, p.slot - p.slot.resolution):
            newest[p.entry.task_id] = p.slot
    by_slot: dict[datetime, list[int]] = defaultdict(list)
    for task_id, slot in newest.items():
        by_slot[slot].append(task_id)
    for slot, task_ids in by_slot.items():  # a burst shares one slot: few statements
        for chunk in chunks(task_ids):
            SchedulePolicy.objects.filter(task_id__in=chunk).update(last_slot_at=slot)


def claim_slots(
    planned: Sequence[PlannedSlot],
    fence: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> tuple[list[JobRun], list[JobRun]]:
    """Insert the runs of ``planned`` slots; return (ours to publish, ours to revoke).

    ``skip`` overlap: a slot of a schedule with a run still queued or running
    is claimed as ``skipped``. ``replace``: the older active runs are returned
    for revocation and recorded as ``skipped`` (queued) or ``failed`` (running).
    """
    if not planned:
        return [], []
    now = now or timezone.now()
    with transaction.atomic():
        if fence is not None:
            fence()
        overlapping = [p.entry.task_id for p in planned if p.outcome == RUN and p.entry.overlap != Overlap.ALLOW]
        active = schedules_with_active_runs(overlapping) if overlapping else {}
        runs, to_revoke = [], []
        for p in planned:
            if p.outcome == MISSED:
                runs.append(_run_for(p, RunStatus.MISSED, now, p.reason))
            elif p.entry.task_id in active and p.entry.overlap == Overlap.SKIP:
                runs.append(_run_for(p, RunStatus.SKIPPED, now, "the previous run was still queued or running"))
            else:
                if p.entry.task_id in active and p.entry.overlap == Overlap.REPLACE:
                    to_revoke.extend(active.pop(p.entry.task_id))
                runs.append(_run_for(p, RunStatus.QUEUED, now))
        JobRun.objects.bulk_create(runs, ignore_conflicts=True, batch_size=CHUNK)
        ours: set[uuid.UUID] = set()
        for chunk in chunks([r.pk for r in runs]):
            ours.update(JobRun.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        _advance_last_slots(planned)
        for old in to_revoke:
            replaced_status = RunStatus.SKIPPED if old.status != RunStatus.RUNNING else RunStatus.FAILED
            JobRun.objects.filter(pk=old.pk, status__in=ACTIVE_STATUSES).update(
                status=replaced_status, finished_at=now, error_type="Replaced",
                error_message="replaced by a newer slot (overlap policy: replace)",
            )
    return [r for r in runs if r.pk in ours], to_revoke


def revoke_replaced(app: Celery, runs: Sequence[JobRun]) -> None:
    for run in runs:
        app.control.revoke(str(run.pk), terminate=True, signal="SIGTERM")


def publish_outbox(app: Celery, limit: int = 10_000) -> int:
    """Publish claimed runs whose message never reached the broker (crash after commit)."""
    pending = list(
        JobRun.objects.filter(status=RunStatus.QUEUED, enqueued_at__isnull=True).order_by("scheduled_for")[:limit]
    )
    return publish_runs(app, pending)
