"""State changes of a ``JobRun``, each a conditional UPDATE.

Every transition names the states it may start from and checks the row count,
so two processes racing on one run (a redelivered message, a worker's main
process recording a hard timeout while the child still reports) never both
win: the loser sees 0 rows and steps aside. No read-then-write.
"""

from __future__ import annotations

import json
import traceback as tb
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from jobs.models import STARTABLE_STATUSES, JobRun, RunStatus


@dataclass(frozen=True)
class RunError:
    type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> RunError:
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            message=str(exc)[:2000],
            traceback=bounded_tail(text, settings.RUN_TRACEBACK_LIMIT),
        )


def bounded_tail(text: str, limit: int) -> str:
    """The last ``limit`` characters: the end of a traceback is where the error is."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]


def summarize_result(value: Any) -> Any:
    """A JSON-safe result, or a truncated string of it when it is too large."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    if len(text) <= settings.RUN_RESULT_LIMIT:
        return json.loads(text)
    return {"truncated": True, "preview": text[: settings.RUN_RESULT_LIMIT - 100]}


def _millis(later: datetime, earlier: datetime) -> int:
    return int((later - earlier).total_seconds() * 1000)


def run_pk(run_id: Any) -> uuid.UUID | None:
    """The run's primary key, or ``None`` for a task id that cannot be one (plain Celery)."""
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        return None


def start_run(
    run_id: str,
    *,
    job: str,
    attempt: int,
    worker: str,
    args: list | tuple = (),
    kwargs: dict | None = None,
    queue: str = "",
    redelivered: bool = False,
    max_attempts: int = 1,
    now: datetime | None = None,
) -> JobRun | None:
    """Move a run to ``running`` and return it, or return ``None`` if it must not run.

    ``None`` means: the run already finished or is running elsewhere (a
    duplicate message, acknowledged and ignored), or its starting deadline
    passed (recorded as ``missed``). A message with no run row (sent by plain
    Celery, not through beat or the client) gets one, scheduled for now.

    A *redelivered* message for a run still marked ``running`` means the
    worker running it died (the broker gave the unacked message back): that
    attempt is lost. The run starts again as the next attempt if the job's
    retry policy allows, else it is recorded ``lost``.
    """
    now = now or timezone.now()
    run_uuid = run_pk(run_id) or uuid.uuid4()
    run, created = JobRun.objects.get_or_create(
        pk=run_uuid,
        defaults={
            "job": job,
            "args": list(args),
            "kwargs": kwargs or {},
            "queue": queue,
            "scheduled_for": now,
            "enqueued_at": now,
            "status": RunStatus.QUEUED,
        },
    )
    if run.status == RunStatus.RUNNING and redelivered:
        return _take_over_lost_attempt(run, worker=worker, max_attempts=max_attempts, now=now)
    if run.status not in STARTABLE_STATUSES:
        return None
    if run.deadline is not None and now > run.deadline:
        record_missed(run.pk, run.deadline.isoformat(), now=now)
        return None
    changed = {
        "status": RunStatus.RUNNING,
        "started_at": now,
        "attempt": attempt,
        "worker": worker[:255],
        "lateness_ms": _millis(now, run.scheduled_for),
        "enqueued_at": run.enqueued_at or now,
    }
    won = JobRun.objects.filter(pk=run.pk, status__in=STARTABLE_STATUSES).update(**changed)
    if not won:
        return None  # another delivery of this message got there first
    for field, value in changed.items():
        setattr(run, field, value)
    return run


def _take_over_lost_attempt(run: JobRun, *, worker: str, max_attempts: int, now: datetime) -> JobRun | None:
    lost = f"attempt {run.attempt} was lost: its worker {run.worker or '?'} died while running it"
    if run.attempt < max_attempts:
        changed = {
            "attempt": run.attempt + 1,
            "started_at": now,
            "worker": worker[:255],
            "error_type": "WorkerLostError",
            "error_message": lost,
        }
        won = JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).update(
            **changed
        )
        if not won:
            return None
        for field, value in changed.items():
            setattr(run, field, value)
        return run
    JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).update(
        status=RunStatus.LOST,
        finished_at=now,
        duration_ms=max(0, _millis(now, run.started_at)) if run.started_at else None,
        error_type="WorkerLostError",
        error_message=lost,
    )
    return None


def finish_run(
    run: JobRun,
    status: RunStatus,
    *,
    error: RunError | None = None,
    result: Any = None,
    now: datetime | None = None,
) -> bool:
    """Record the end of a running run; ``False`` if it was no longer running."""
    now = now or timezone.now()
    fields: dict[str, Any] = {"status": status, "finished_at": now}
    if run.started_at is not None:
        fields["duration_ms"] = max(0, _millis(now, run.started_at))
    if error is not None:
        fields.update(error_type=error.type, error_message=error.message, traceback=error.traceback)
    if result is not None:
        fields["result"] = summarize_result(result)
    return bool(JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(**fields))


def mark_retrying(run: JobRun, error: RunError, retry_at: datetime) -> bool:
    return bool(
        JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
            status=RunStatus.RETRYING,
            error_type=error.type,
            error_message=f"{error.message} (retry at {retry_at.isoformat()})",
            traceback=error.traceback,
        )
    )


def end_unstarted_run(
    run_id: Any, status: RunStatus, *, error_type: str, error_message: str, now: datetime | None = None
) -> bool:
    """End a run waiting to start (``queued``, or ``retrying``) as ``status``; ``True`` if it did.

    For a message that will never run the job: taken after the run's deadline,
    or discarded by the worker (revoked, expired). ``False``, and nothing
    written, when the run is not waiting: it started meanwhile (a running run
    ends through its own code or ``record_from_main_process``), it already
    ended (beat recorded it ``Replaced``, a duplicate message finished it), or
    there is no such run (a plain Celery task id).
    """
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return False
    return bool(
        JobRun.objects.filter(pk=run_uuid, status__in=STARTABLE_STATUSES).update(
            status=status,
            finished_at=now or timezone.now(),
            error_type=error_type,
            error_message=error_message,
        )
    )


def record_missed(run_id: Any, deadline: str, *, now: datetime | None = None) -> bool:
    """Record a run that did not start by ``deadline`` (shown as given) as ``missed``."""
    return end_unstarted_run(
        run_id,
        RunStatus.MISSED,
        error_type="StartingDeadlineExceeded",
        error_message=f"not started by its deadline {deadline}",
        now=now,
    )


def record_from_main_process(run_id: str, status: RunStatus, error: RunError) -> JobRun | None:
    """Record how a running run ended, written by the worker's main process.

    For a hard timeout, a lost worker or a termination by revoke: the child
    that ran the job was killed, so it cannot write anything; this is the only
    record of how the run ended. Returns the run, or ``None`` when the run was
    not running (already recorded, not started, or unknown).
    """
    now = timezone.now()
    run_uuid = run_pk(run_id)
    run = JobRun.objects.filter(pk=run_uuid).first() if run_uuid else None
    if run is None:
        return None
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "error_type": error.type,
        "error_message": error.message,
        "traceback": error.traceback,
    }
    if run.started_at is not None:
        fields["duration_ms"] = max(0, _millis(now, run.started_at))
    updated = JobRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(**fields)
    if not updated:
        return None
    for field, value in fields.items():
        setattr(run, field, value)
    return run
