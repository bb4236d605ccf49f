"""Claim slots and publish their runs: the exactly-once core of beat.

Guarantees:
- **One run per slot.** ``claim_slots`` inserts one ``JobRun`` per (schedule,
  slot) in one transaction under the ``one_run_per_slot`` unique constraint;
  rows another beat (or an earlier life of this one) inserted first are not
  ours, and we do not publish them.
- **Fenced.** The same transaction re-checks the leader lease before it
  commits (``fence``); a beat that lost it claims nothing (``LeaseLost``).
- **State advances with the claim.** Each schedule's ``last_slot_at`` is
  written in that transaction, so a restarted beat resumes after it.
- **No holes.** Slots that will not run are claimed too, as ``missed`` (catch-up
  policy) or ``skipped`` (overlap policy, or the schedule is paused: the run
  carries the pause's note).
- **Publish after commit, through the outbox.** The claim also writes one
  ``OutboxBatch`` row naming the runs to publish; the caller publishes after
  commit and deletes it (``jobs.publishing.send_batch``). A batch left behind by
  a crash or a broker outage is sent by ``jobs.publishing.publish_outbox``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from celery import Celery
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import ACTIVE_STATUSES, JobRun, RunStatus
from jobs.publishing import record_outbox
from jobs.runs import end_replaced_runs
from lib.sequences import CHUNK, chunks
from scheduler.beat.entries import Entry
from scheduler.models import Overlap, SchedulePolicy

logger = logging.getLogger(__name__)

RUN = "run"
MISSED = "missed"
SKIPPED = "skipped"  # the schedule is paused: recorded with its pause's note, never run


@dataclass(slots=True)
class PlannedSlot:
    entry: Entry
    slot: datetime
    outcome: str = RUN  # RUN, MISSED or SKIPPED
    reason: str = ""


def schedules_with_active_runs(task_ids: Sequence[int]) -> dict[int, list[JobRun]]:
    active: dict[int, list[JobRun]] = defaultdict(list)
    for chunk in chunks(list(task_ids)):
        for run in JobRun.objects.filter(schedule_id__in=chunk, status__in=ACTIVE_STATUSES).only(
            "id", "schedule_id", "status"
        ):
            assert run.schedule_id is not None  # selected by schedule_id__in
            active[run.schedule_id].append(run)
    return active


@dataclass(slots=True)
class ClaimedRun:
    """A run as beat inserts and publishes it (no model instance: bursts are large)."""

    id: uuid.UUID
    schedule_id: int
    job: str
    args: list
    kwargs: dict
    queue: str
    soft_time_limit: int | None
    hard_time_limit: int | None
    priority: int | None
    scheduled_for: datetime
    deadline: datetime
    status: str
    finished_at: datetime | None
    error_message: str

    @property
    def pk(self) -> uuid.UUID:
        return self.id


# The columns beat writes; the rest take their defaults ('' or NULL, attempt 0).
INSERT_COLUMNS = (
    "id", "schedule_id", "schedule_name", "job", "args", "kwargs", "queue", "soft_time_limit",
    "hard_time_limit", "scheduled_for", "deadline", "status", "finished_at", "error_message",
    "attempt", "worker", "error_type", "traceback", "created_at", "enqueued_at",
)  # fmt: skip


def _run_for(planned: PlannedSlot, status: RunStatus, now: datetime, message: str = "") -> ClaimedRun:
    definition = planned.entry.live
    return ClaimedRun(
        id=uuid.uuid4(),
        schedule_id=planned.entry.task_id,
        job=definition.job,
        args=json.loads(definition.args_json),
        kwargs=json.loads(definition.kwargs_json),
        queue=definition.queue,
        soft_time_limit=definition.soft_time_limit,
        hard_time_limit=definition.hard_time_limit,
        priority=definition.priority,
        scheduled_for=planned.slot,
        deadline=planned.slot + definition.starting_deadline,
        status=status,
        finished_at=None if status == RunStatus.QUEUED else now,
        error_message=message,
    )


def _row(run: ClaimedRun, now: datetime, schedule_name: str = "") -> tuple:
    return (
        run.id, run.schedule_id, schedule_name[:200], run.job, json.dumps(run.args),
        json.dumps(run.kwargs), run.queue, run.soft_time_limit, run.hard_time_limit,
        run.scheduled_for, run.deadline, str(run.status), run.finished_at, run.error_message,
        0, "", "", "", now, now if run.status == RunStatus.QUEUED else None,
    )  # fmt: skip


def insert_runs(runs: Sequence[ClaimedRun], now: datetime) -> set[uuid.UUID]:
    """Insert ``runs`` and advance their schedules' ``last_slot_at``; return the ids inserted.

    Slots already claimed are skipped. The schedule's name is copied into
    the run from the database (beat does not keep names in memory).
    PostgreSQL: COPY into a temporary table, one INSERT … SELECT … ON
    CONFLICT DO NOTHING RETURNING id joining the names, one UPDATE of the
    policies from the same table (10,000 rows in a fraction of a second; the
    ORM's bulk_create spent most of its time preparing values). Elsewhere
    (SQLite): the ORM, a read-back of which ids exist, and grouped UPDATEs.
    """
    if connection.vendor == "postgresql":
        return _insert_runs_postgresql(runs, now)
    names: dict[int, str] = {}
    for chunk in chunks(list({run.schedule_id for run in runs})):
        names.update(PeriodicTask.objects.filter(pk__in=chunk).values_list("pk", "name"))
    JobRun.objects.bulk_create(
        [
            JobRun(**dict(zip(INSERT_COLUMNS, _row(run, now, names.get(run.schedule_id, "")), strict=True)))
            for run in runs
        ],
        ignore_conflicts=True,
        batch_size=CHUNK,
    )
    ours: set[uuid.UUID] = set()
    for run_ids in chunks([r.id for r in runs]):
        ours.update(JobRun.objects.filter(pk__in=run_ids).values_list("pk", flat=True))
    _advance_last_slots(runs)
    return ours


def _insert_runs_postgresql(runs: Sequence[ClaimedRun], now: datetime) -> set[uuid.UUID]:
    table = JobRun._meta.db_table
    policies = SchedulePolicy._meta.db_table
    tasks = PeriodicTask._meta.db_table
    columns = ", ".join(INSERT_COLUMNS)
    selected = ", ".join(
        "coalesce(left(t.name, 200), '')" if column == "schedule_name" else f"c.{column}"
        for column in INSERT_COLUMNS
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS beat_claims "  # noqa: S608 (no user input)
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        raw = cursor.cursor  # psycopg's own cursor, for COPY
        with raw.copy(f"COPY beat_claims ({columns}) FROM STDIN") as copy:
            for run in runs:
                copy.write_row(_row(run, now))
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {selected} FROM beat_claims c "  # noqa: S608
            f"LEFT JOIN {tasks} t ON t.id = c.schedule_id "
            "ON CONFLICT (schedule_id, scheduled_for) DO NOTHING RETURNING id"
        )
        ours = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            f"UPDATE {policies} p SET last_slot_at = c.slot "  # noqa: S608
            "FROM (SELECT schedule_id, max(scheduled_for) AS slot FROM beat_claims GROUP BY 1) c "
            "WHERE p.task_id = c.schedule_id AND (p.last_slot_at IS NULL OR p.last_slot_at < c.slot)"
        )
    return ours


def _advance_last_slots(runs: Sequence[ClaimedRun]) -> None:
    newest: dict[int, datetime] = {}
    for run in runs:
        if run.scheduled_for > newest.get(run.schedule_id, run.scheduled_for - run.scheduled_for.resolution):
            newest[run.schedule_id] = run.scheduled_for
    by_slot: dict[datetime, list[int]] = defaultdict(list)
    for task_id, slot in newest.items():
        by_slot[slot].append(task_id)
    for slot, task_ids in by_slot.items():  # a burst shares one slot: few statements
        for chunk in chunks(task_ids):
            SchedulePolicy.objects.filter(task_id__in=chunk).update(last_slot_at=slot)


class Claim(NamedTuple):
    """What one claim transaction committed."""

    runs: list[ClaimedRun]  # the runs this claim inserted, any status; the queued ones are published
    to_revoke: list[JobRun]  # older runs an overlap=replace slot displaced
    outbox_batch: int | None  # the outbox row listing ``runs``, deleted once they are sent


def claim_slots(
    planned: Sequence[PlannedSlot],
    fence: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> Claim:
    """Insert the runs of ``planned`` slots, and an outbox batch of those to publish.

    ``skip`` overlap: a slot of a schedule with a run still queued or running
    is claimed as ``skipped``. ``replace``: the older active runs are returned
    for revocation and recorded as ``skipped`` (queued) or ``failed`` (running)
    by ``jobs.runs.end_replaced_runs``, in the claim's transaction.
    """
    if not planned:
        return Claim([], [], None)
    now = now or timezone.now()
    with transaction.atomic():
        overlapping = [
            p.entry.task_id for p in planned if p.outcome == RUN and p.entry.live.overlap != Overlap.ALLOW
        ]
        active = schedules_with_active_runs(overlapping) if overlapping else {}
        runs, to_revoke = [], []
        for p in planned:
            if p.outcome == MISSED:
                runs.append(_run_for(p, RunStatus.MISSED, now, p.reason))
            elif p.outcome == SKIPPED:
                runs.append(_run_for(p, RunStatus.SKIPPED, now, p.reason))
            elif p.entry.task_id in active and p.entry.live.overlap == Overlap.SKIP:
                runs.append(
                    _run_for(p, RunStatus.SKIPPED, now, "the previous run was still queued or running")
                )
            else:
                if p.entry.task_id in active and p.entry.live.overlap == Overlap.REPLACE:
                    to_revoke.extend(active.pop(p.entry.task_id))
                runs.append(_run_for(p, RunStatus.QUEUED, now))
        ours = insert_runs(runs, now)
        if to_revoke:
            # skipped or failed is decided by the UPDATE, not from what was read above.
            end_replaced_runs([old.pk for old in to_revoke], now)
        claimed = [r for r in runs if r.pk in ours]
        batch = record_outbox([r.pk for r in claimed if r.status == RunStatus.QUEUED])
        if fence is not None:
            # Last, so the lease row is locked only for an instant: a deposed
            # leader's whole claim rolls back here.
            fence()
    return Claim(claimed, to_revoke, batch)


def revoke_replaced(app: Celery, runs: Sequence[JobRun]) -> None:
    """Stop replaced runs: one broadcast revoking them all (terminating a started one)."""
    if runs:
        app.control.revoke([str(run.pk) for run in runs], terminate=True, signal="SIGTERM")
