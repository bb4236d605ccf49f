"""State changes of a ``JobRun``, each a conditional UPDATE.

Every transition names the states it may start from and checks the row count,
so two processes racing on one run (a redelivered message, a worker's main
process recording a hard timeout while the child still reports) never both
win: the loser sees 0 rows and steps aside. No read-then-write.

An attempt writes only its own ending: the guard names the attempt number and
the worker as well as the state. A record of ``lost`` is a conclusion drawn
by another process (the worker looked dead); the attempt's real ending, if it
comes, replaces it. Nothing replaces a real ending.

This is the only module that changes ``JobRun.status`` (``tests/test_run_writers.py``
fails on any other writer). Creating a run is not a change: beat's claim
(``scheduler.beat.dispatch``) and ``jobs.client.dispatch`` insert runs with
their first status. Every function below that writes returns whether it won
(a bool, the run, the status written, or a count for a batch), and its
docstring names the states it moves from and to:

- ``start_run``: queued, retrying -> running; a redelivered copy of a dead
  attempt: running -> running (the next attempt) or lost;
- ``record_lost_process``: running (on this worker) -> retrying or lost;
- ``record_abandoned_attempts``: running (dead, long ago) -> lost;
- ``finish_run``, ``mark_retrying``: running, or lost (this attempt) -> an
  ending, or retrying;
- ``end_unstarted_run``, ``record_missed``: queued, retrying -> an ending;
- ``record_from_main_process``: running, or lost (this attempt on the
  worker) -> hard_timeout or failed;
- ``record_revoked``: queued, retrying -> skipped or missed; running -> failed;
- ``end_replaced_runs``: queued, retrying -> skipped; running -> failed.

Notes on a run that change no status, each one guarded UPDATE too:
``record_progress`` and ``add_progress`` (running only), ``note_waiting``
(queued, retrying: held back by its job's ``max_concurrency``).
"""

from __future__ import annotations

import json
import traceback as tb
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import BigIntegerField, Case, F, Field, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.limits import broker_is_redis
from jobs.models import ACTIVE_STATUSES, STARTABLE_STATUSES, JobRun, RunOrigin, RunStatus
from jobs.workers import attempt_is_alive
from lib.sequences import chunks


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


@dataclass(frozen=True)
class NotStarted:
    """Why a message does not run its run: it is acknowledged and the job is not called.

    ``warning``: something an operator should fix or know; ``reason`` says what.
    """

    reason: str
    warning: bool = False


def this_attempt(run: JobRun) -> Q:
    """The run's row while it is still ``run``'s attempt: running it, or recorded lost from it.

    ``lost`` was written by another process that took the attempt for dead (a
    redelivered message while its worker looked gone); if the attempt reports
    its own end, that end is the truth. Any other state (an ending, a later
    attempt of a takeover, a retry) is not this attempt's to change.
    """
    return Q(status__in=(RunStatus.RUNNING, RunStatus.LOST), attempt=run.attempt, worker=run.worker)


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
    message: Any = None,
) -> JobRun | NotStarted:
    """Move a run to ``running`` and return it, or say why this message must not run it.

    Not started: the run already ended or runs elsewhere (a duplicate
    message), or its starting deadline passed (recorded ``missed``). A message
    with no run row (sent by the send-only client, ``jobs.sendonly``, or by
    plain Celery) gets one, from what ``message`` (the task's request: its
    headers) says: origin and requester (the client's ``run_origin`` /
    ``requested_by``), time limits, due time (``scheduled_for``, else now) and
    deadline (``expires``); see ``unseen_run_fields``. Two copies of such a
    message (an idempotent call sent twice) make one row and one start: the
    insert and the start are both guarded.

    A *redelivered* message for a run still ``running`` is the broker giving
    back a message nobody acknowledged, and that means one of two things:

    - the attempt is dead: its worker stopped publishing presence, or was
      restarted under the same hostname since the attempt started. The run
      starts again as the next attempt if the job's retry policy allows, else
      it is recorded ``lost``;
    - the attempt is alive (its worker publishes presence, from the process
      that started it): the message was only unacknowledged for longer than
      the broker's visibility timeout (Redis). This copy is not run, with a
      warning; the attempt ends as it ends.

    The choice is made inside the takeover's UPDATE, so a takeover never
    wins against a live attempt. A pool process that died under a live main
    process is recorded by that main process before it requeues the message
    (``record_lost_process``), so its copy finds the run ``retrying`` or
    ``lost``, not ``running``.

    Attempts are numbered from the record: one more than the run's last, at
    least the message's own count, so the retry of a lost attempt (the same
    message, requeued) is a new attempt.

    From ``queued`` or ``retrying`` to ``running``, in one statement for the
    common case on PostgreSQL (``_start_waiting_run``); everything else (no row, a run
    already running, ended or past its deadline, a race lost) takes the
    general path below, which reads the row first and decides.
    """
    now = now or timezone.now()
    started = _start_waiting_run(run_id, attempt=attempt, worker=worker, now=now)
    if started is not None:
        return started
    run = _run_of_message(run_id, job=job, args=args, kwargs=kwargs, queue=queue, message=message, now=now)
    if run.status == RunStatus.RUNNING:
        if redelivered:
            return _take_over_lost_attempt(run, worker=worker, max_attempts=max_attempts, now=now)
        return NotStarted(f"its run is already running (attempt {run.attempt} on {run.worker or '?'})")
    if run.status not in STARTABLE_STATUSES:
        return NotStarted(f"its run already ended ({run.status})")
    if run.deadline is not None and now > run.deadline:
        record_missed(run.pk, run.deadline.isoformat(), now=now)
        return NotStarted(f"not started by its deadline {run.deadline.isoformat()}; run recorded missed")
    changed = {
        "status": RunStatus.RUNNING,
        "started_at": now,
        "attempt": max(attempt, run.attempt + 1),
        "worker": worker[:255],
        "lateness_ms": _millis(now, run.scheduled_for),
        "enqueued_at": run.enqueued_at or now,
        **FRESH_ATTEMPT,
    }
    won = JobRun.objects.filter(pk=run.pk, status__in=STARTABLE_STATUSES).update(**changed)
    if not won:
        return NotStarted("another delivery of its message started it first")
    for field, value in changed.items():
        setattr(run, field, value)
    return run


def _run_of_message(
    run_id: str, *, job: str, args: list | tuple, kwargs: dict | None, queue: str, message: Any, now: datetime
) -> JobRun:
    """The message's run: its row, or a new ``queued`` one made from the message (``unseen_run_fields``)."""
    run, _created = JobRun.objects.get_or_create(
        pk=run_pk(run_id) or uuid.uuid4(),
        defaults={
            "job": job,
            "args": list(args),
            "kwargs": kwargs or {},
            "queue": queue,
            "scheduled_for": now,
            "enqueued_at": now,
            "status": RunStatus.QUEUED,
            **unseen_run_fields(message),
        },
    )
    return run


def record_message_run(
    run_id: str,
    *,
    job: str,
    args: list | tuple = (),
    kwargs: dict | None = None,
    queue: str = "",
    message: Any = None,
    now: datetime | None = None,
) -> JobRun:
    """The message's run: its row, or one inserted ``queued`` from the message (``unseen_run_fields``).

    For a message that waits before it starts (its job's ``max_concurrency``)
    and has no row yet (the send-only client's): recorded now, the run's page
    shows it waiting. The insert is guarded (``get_or_create`` on the run id),
    so two copies make one row; ``start_run`` then finds it as any other.
    """
    now = now or timezone.now()
    return _run_of_message(run_id, job=job, args=args, kwargs=kwargs, queue=queue, message=message, now=now)


def unseen_run_fields(message: Any) -> dict[str, Any]:
    """What a run the worker records from its message (no row yet) takes from the message's headers.

    ``message`` is the task's request (Celery's ``Context``: headers are
    attributes) or None. ``run_origin`` / ``requested_by``: the send-only
    client's headers (``jobs.sendonly.messages``); ``timelimit``: Celery's
    ``[hard, soft]``; ``scheduled_for``: when the run was due (the client's
    eta, or when it was sent); ``expires``: its deadline. A header that is
    missing or does not parse leaves the column to its default, so a plain
    Celery message is recorded as before.
    """
    if message is None:
        return {}
    fields: dict[str, Any] = {}
    origin = getattr(message, "run_origin", None)
    if origin in RunOrigin.values and origin != RunOrigin.BEAT:
        fields["origin"] = origin
    requested_by = getattr(message, "requested_by", None)
    if isinstance(requested_by, str) and requested_by:
        fields["requested_by"] = requested_by[:150]
    limits = getattr(message, "timelimit", None)
    if isinstance(limits, (list, tuple)) and len(limits) == 2:
        hard, soft = limits
        if isinstance(hard, int) and hard > 0:
            fields["hard_time_limit"] = hard
        if isinstance(soft, int) and soft > 0:
            fields["soft_time_limit"] = soft
    scheduled_for = _aware_time(getattr(message, "scheduled_for", None))
    if scheduled_for is not None:
        fields["scheduled_for"] = scheduled_for
    deadline = _aware_time(getattr(message, "expires", None))
    if deadline is not None:
        fields["deadline"] = deadline
    return fields


def _aware_time(value: Any) -> datetime | None:
    """An aware datetime from a header (ISO 8601 text or a datetime), else None."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return None


# What every start of an attempt resets: the progress of an earlier attempt
# (a retry counts again from zero, and a page must not show a stale figure),
# and what the run waited for (``waiting_since`` is kept: how long it waited).
FRESH_ATTEMPT: dict[str, Any] = {
    "progress_done": None,
    "progress_total": None,
    "progress_message": "",
    "progress_updated_at": None,
    "waiting_for": "",
}

# The run's start, as the general path writes it, in one UPDATE … RETURNING:
# the new attempt is at least the message's count and one more than the
# record's; lateness is truncated to whole ms. PostgreSQL only: on SQLite (the
# embedded default, one writer at a time) the worker suite saw "database is
# locked" with it, so SQLite keeps the general path.
_START_WAITING_RUN = (
    "UPDATE {table} SET status = %s, started_at = %s, attempt = greatest(%s, attempt + 1), worker = %s, "
    "lateness_ms = trunc(extract(epoch from (%s - scheduled_for)) * 1000)::integer, "
    "enqueued_at = coalesce(enqueued_at, %s), "
    "progress_done = NULL, progress_total = NULL, progress_message = '', progress_updated_at = NULL, "
    "waiting_for = '' "
    "WHERE id = %s AND status IN (%s, %s) AND (deadline IS NULL OR deadline >= %s) "
    "RETURNING {columns}"
)
# The same UPDATE in its own transaction that does not wait for the disk
# (one round trip; Django's psycopg cursors bind parameters client-side, so
# the four statements go as one query string). A start is only a step: the
# run's end, committed durably, flushes it too. What a database crash within
# a moment of the start could lose is the mark "running" of a run whose end
# then cannot be written either (the crash broke the worker's connection).
_START_WAITING_RUN_NO_FLUSH = "BEGIN; SET LOCAL synchronous_commit TO OFF; {update}; COMMIT"


@dataclass(frozen=True)
class _StartStatement:
    """The start's SQL and how to read the row it returns, built once per process."""

    sql: str
    attnames: list[str]  # of the RETURNING columns, in order
    converted: tuple[tuple[int, Field], ...]  # the columns the ORM converts on reading (JSON)


@cache
def _start_statement(in_transaction: bool) -> _StartStatement:
    """The start's SQL (see above) and the fields its RETURNING lists, in order."""
    ops = connection.ops
    fields = tuple(JobRun._meta.concrete_fields)
    update = _START_WAITING_RUN.format(
        table=ops.quote_name(JobRun._meta.db_table),
        columns=", ".join(ops.quote_name(str(f.column)) for f in fields),
    )
    return _StartStatement(
        sql=update if in_transaction else _START_WAITING_RUN_NO_FLUSH.format(update=update),
        attnames=[f.attname for f in fields],
        converted=tuple((i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value")),
    )


def _start_waiting_run(run_id: str, *, attempt: int, worker: str, now: datetime) -> JobRun | None:
    """Start a waiting run (``queued``, ``retrying``) within its deadline: the run, or ``None``.

    One guarded UPDATE … RETURNING, the statement a worker runs for almost
    every message: a run's cost on the worker is this and ``finish_run``.
    Outside a caller's transaction (a worker) it commits without waiting for
    the disk (``_START_WAITING_RUN_NO_FLUSH`` says why that loses nothing the
    run's end keeps). The row comes back as a ``JobRun`` built from the
    returned columns directly (``Model.from_db``), not through a RawQuerySet.
    ``None`` changes nothing, and the caller decides as before: no such row,
    or not waiting, or past its deadline, or another delivery won (or SQLite).
    """
    run_uuid = run_pk(run_id)
    if run_uuid is None or connection.vendor != "postgresql":
        return None
    in_transaction = connection.in_atomic_block
    statement = _start_statement(in_transaction)
    params: list[Any] = [
        RunStatus.RUNNING.value, now, attempt, worker[:255], now, now,
        run_uuid, RunStatus.QUEUED.value, RunStatus.RETRYING.value, now,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        try:
            cursor.execute(statement.sql, params)
            row = _returned_row(cursor.cursor)
        except Exception:
            if not in_transaction:
                _roll_back_quietly(cursor)
            raise
    if row is None:
        return None
    values = list(row)
    for index, field in statement.converted:
        values[index] = field.from_db_value(values[index], None, connection)  # type: ignore[attr-defined]
    return JobRun.from_db(connection.alias, statement.attnames, values)


def _returned_row(cursor: Any) -> tuple | None:
    """The first row of the first result that has rows (the UPDATE's RETURNING), or ``None``."""
    while True:
        if cursor.description is not None:
            return cursor.fetchone()
        if not cursor.nextset():
            return None


def _roll_back_quietly(cursor: Any) -> None:
    """End the explicit transaction a failed start left open; the first error is the one to raise."""
    try:
        cursor.execute("ROLLBACK")
    except Exception:  # noqa: S110 (the connection is broken: Django closes it at the task's edge)
        pass


def _take_over_lost_attempt(
    run: JobRun, *, worker: str, max_attempts: int, now: datetime
) -> JobRun | NotStarted:
    dead = JobRun.objects.filter(
        pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt, worker=run.worker
    ).exclude(attempt_is_alive(now))
    lost = (
        f"attempt {run.attempt} was lost: its worker {run.worker or '?'} died or was restarted "
        "while running it"
    )
    if run.attempt < max_attempts:
        changed = {
            "attempt": run.attempt + 1,
            "started_at": now,
            "worker": worker[:255],
            "error_type": "WorkerLostError",
            "error_message": lost,
            **FRESH_ATTEMPT,
        }
        if dead.update(**changed):
            for field, value in changed.items():
                setattr(run, field, value)
            return run
    elif dead.update(
        status=RunStatus.LOST,
        finished_at=now,
        duration_ms=max(0, _millis(now, run.started_at)) if run.started_at else None,
        error_type="WorkerLostError",
        error_message=lost,
    ):
        return NotStarted(f"{lost}; run recorded lost", warning=True)
    current = JobRun.objects.filter(pk=run.pk).values("status", "attempt", "worker").first()
    if current != {"status": RunStatus.RUNNING, "attempt": run.attempt, "worker": run.worker}:
        return NotStarted(f"its run changed meanwhile (now {current})")
    return NotStarted(_still_running(run, now), warning=True)


def _still_running(run: JobRun, now: datetime) -> str:
    """The warning for a copy of a message whose attempt is alive: what happened and the fix."""
    ran_for = f", for {int((now - run.started_at).total_seconds())} s" if run.started_at else ""
    if not broker_is_redis():
        # RabbitMQ gives a message back when the channel that took it closes: the
        # worker's connection dropped, or the delivery outlived consumer_timeout.
        return (
            f"redelivered while attempt {run.attempt} still runs on {run.worker}{ran_for} (the broker "
            "gave its unacknowledged message back, e.g. after that worker's connection dropped or "
            "RabbitMQ's consumer_timeout, BROKER_CONSUMER_TIMEOUT, passed); "
            "this copy is not run, the attempt ends as it ends"
        )
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    hard = f" (this run's is {run.hard_time_limit} s)" if run.hard_time_limit else ""
    return (
        f"redelivered after the visibility timeout while attempt {run.attempt} still runs on "
        f"{run.worker}{ran_for}; this copy is not run, the attempt ends as it ends. Raise "
        f"BROKER_VISIBILITY_TIMEOUT (now {timeout} s) above the longest hard time limit{hard}, "
        "with room for the time a message waits in a worker before it starts"
    )


def record_lost_process(
    run_id: Any, *, worker: str, max_attempts: int, reason: str, now: datetime | None = None
) -> RunStatus | None:
    """Record that the pool process running a run on ``worker`` died; return what was written.

    Written by the worker's main process, which saw its pool process die
    (``WorkerLostError``: killed, out of memory), before it gives the message
    back to the broker (late ack, reject on worker loss). The copy then finds
    the attempt over; it would otherwise find the run ``running`` on a worker
    that still publishes presence, and take the attempt for alive.

    ``retrying`` when the job's retry policy allows another attempt (the
    redelivered copy starts it, as the next attempt), else ``lost``. ``None``,
    and nothing written, when the run is not running on ``worker`` (it ended,
    was taken over, or this was an ignored copy of its message).
    """
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return None
    now = now or timezone.now()
    worker = worker[:255]
    run = JobRun.objects.filter(pk=run_uuid, status=RunStatus.RUNNING, worker=worker).first()
    if run is None:
        return None
    running_here = JobRun.objects.filter(
        pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt, worker=worker
    )
    lost = f"attempt {run.attempt} was lost: its pool process on {worker} died ({reason})"
    if run.attempt < max_attempts:
        won = running_here.update(
            status=RunStatus.RETRYING,
            error_type="WorkerLostError",
            error_message=f"{lost}; its message goes back to the queue for attempt {run.attempt + 1}",
            traceback="",
        )
        return RunStatus.RETRYING if won else None
    won = running_here.update(
        status=RunStatus.LOST,
        finished_at=now,
        duration_ms=max(0, _millis(now, run.started_at)) if run.started_at else None,
        error_type="WorkerLostError",
        error_message=lost,
        traceback="",
    )
    return RunStatus.LOST if won else None


# Beyond twice the visibility timeout after an attempt started, it has met its
# hard limit (kept below the timeout: scheduler.E006) and any copy of its
# message has been given back (kombu sweeps for expired messages about every
# 100 s); the margin covers that sweep and clock skew between hosts.
ABANDONED_MARGIN_SECONDS = 600


def abandoned_after_seconds() -> int:
    """How long after an attempt started no copy of its message can still come back to take it over.

    Redis gives an unacknowledged message back after its visibility timeout:
    twice that, plus the margin. RabbitMQ gives it back when the channel that
    took it closes, which a dead worker's already has: the copy is delivered
    at once (or waits in the queue), so the margin alone.
    """
    if broker_is_redis():
        timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout") or 3600
        return 2 * timeout + ABANDONED_MARGIN_SECONDS
    return ABANDONED_MARGIN_SECONDS


def record_abandoned_attempts(now: datetime | None = None, limit: int = 100) -> int:
    """Record ``lost`` the runs still ``running`` on a dead worker that nothing will end; return how many.

    Normally a dead attempt is ended by its message: the broker gives it back
    and the copy takes the attempt over. That cannot happen when no message is
    left: a copy ignored while the attempt ran was acknowledged, so if the
    worker then died, nothing comes back. A run is abandoned when it started
    more than ``abandoned_after_seconds()`` ago and its attempt is not alive
    (``attempt_is_alive``: no fresh presence from the process that started
    it). A live attempt is never touched, and if a dead-looking one reports
    its end after all, that end replaces ``lost``.
    Called by every worker's presence thread; each run is one guarded UPDATE.
    """
    now = now or timezone.now()
    window = abandoned_after_seconds()
    cutoff = now - timedelta(seconds=window)
    candidates = (
        JobRun.objects.filter(status=RunStatus.RUNNING, started_at__lt=cutoff)
        .exclude(attempt_is_alive(now))
        .values_list("pk", "attempt", "worker", "started_at")[:limit]
    )
    recorded = 0
    for pk, attempt, worker, started_at in candidates:
        assert started_at is not None  # selected by started_at__lt
        recorded += (
            JobRun.objects.filter(pk=pk, status=RunStatus.RUNNING, attempt=attempt, worker=worker)
            .exclude(attempt_is_alive(now))
            .update(
                status=RunStatus.LOST,
                finished_at=now,
                duration_ms=max(0, _millis(now, started_at)),
                error_type="WorkerLostError",
                error_message=(
                    f"attempt {attempt} was lost: its worker {worker or '?'} stopped while running it, and "
                    f"no copy of its message came back to take it over within {window} s"
                ),
            )
        )
    return recorded


def finish_run(
    run: JobRun,
    status: RunStatus,
    *,
    error: RunError | None = None,
    result: Any = None,
    now: datetime | None = None,
) -> bool:
    """Record how ``run``'s attempt ended; ``False`` if the record is no longer this attempt's.

    Wins from ``running``, and from ``lost`` recorded for this same attempt
    (same number, same worker) while it was in fact still running: the real
    ending replaces the conclusion, and the lost error is cleared. Never wins
    over another ending or a later attempt (the guard of ``this_attempt``).

    One UPDATE written out, not built by the ORM: every run ends here, and
    building the statement cost more than running it.
    """
    now = now or timezone.now()
    ops = connection.ops
    sets = ["status = %s", "finished_at = %s"]
    params: list[Any] = [str(status), ops.adapt_datetimefield_value(now)]
    if run.started_at is not None:
        sets.append("duration_ms = %s")
        params.append(max(0, _millis(now, run.started_at)))
    if error is not None:
        sets += ["error_type = %s", "error_message = %s", "traceback = %s"]
        params += [error.type, error.message, error.traceback]
    else:
        # SET sees the row as it was: a lost error was not this attempt's.
        sets += [
            f"{name} = CASE WHEN status = %s THEN '' ELSE {name} END"
            for name in ("error_type", "error_message")
        ]
        params += [RunStatus.LOST.value, RunStatus.LOST.value]
    if result is not None:
        sets.append("result = %s")
        params.append(
            JobRun._meta.get_field("result").get_db_prep_value(summarize_result(result), connection)
        )
    sql = (
        f"UPDATE {ops.quote_name(JobRun._meta.db_table)} SET {', '.join(sets)} "  # noqa: S608 (no input)
        "WHERE id = %s AND status IN (%s, %s) AND attempt = %s AND worker = %s"
    )
    params += [
        JobRun._meta.pk.get_db_prep_value(run.pk, connection),
        RunStatus.RUNNING.value, RunStatus.LOST.value, run.attempt, run.worker,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount == 1


def mark_retrying(run: JobRun, error: RunError, retry_at: datetime) -> bool:
    """Record that ``run``'s attempt failed and the job retries; from ``this_attempt`` only."""
    return bool(
        JobRun.objects.filter(this_attempt(run), pk=run.pk).update(
            status=RunStatus.RETRYING,
            finished_at=None,
            duration_ms=None,
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


def record_from_main_process(
    run_id: str, status: RunStatus, error: RunError, *, worker: str = ""
) -> JobRun | None:
    """Record how a running run ended, written by the worker's main process.

    For a hard timeout or a termination by revoke: the child that ran the job
    was killed, so it cannot write anything; this is the only record of how
    the run ended. Returns the run, or ``None`` when the run was not running
    (already recorded, not started, or unknown).

    With ``worker`` (the main process's hostname), a run recorded ``lost``
    while it ran on that worker is ended too: the attempt was alive after all,
    and this is its real end.
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
    ended_here = Q(status=RunStatus.RUNNING)
    if worker:
        ended_here |= Q(status=RunStatus.LOST, attempt=run.attempt, worker=worker[:255])
    updated = JobRun.objects.filter(ended_here, pk=run.pk).update(**fields)
    if not updated:
        return None
    for field, value in fields.items():
        setattr(run, field, value)
    return run


REPLACED = ("Replaced", "replaced by a newer slot (overlap policy: replace)")


def end_replaced_runs(run_ids: Sequence[Any], now: datetime) -> int:
    """End the runs a newer slot replaces (overlap ``replace``); return how many this ended.

    From ``queued`` or ``retrying`` to ``skipped`` (the run never ran), from
    ``running`` to ``failed`` (it was cut short), with ``error_type``
    ``Replaced``. The status is decided by the UPDATE, not from what the
    caller read: a worker may have started a run since, and then it is
    ``failed``, not ``skipped``. A run that ended meanwhile keeps its record
    and is not counted. Beat calls this in its claim transaction, then
    revokes the runs (``terminate=True``); the worker's revoke record
    (``record_revoked``) then finds them ended and keeps them.
    """
    error_type, error_message = REPLACED
    ended = 0
    for chunk in chunks(list(run_ids)):
        ended += JobRun.objects.filter(pk__in=chunk, status__in=ACTIVE_STATUSES).update(
            status=Case(
                When(status=RunStatus.RUNNING, then=Value(RunStatus.FAILED)),
                default=Value(RunStatus.SKIPPED),
            ),
            finished_at=now,
            error_type=error_type,
            error_message=error_message,
        )
    return ended


def revoke_cause(*, terminated_by: str | None, expired: bool) -> str:
    """How a revoke reads in a record or a log line: ``terminated by SIGTERM``, ``expired``, ``revoked``."""
    return f"terminated by {terminated_by}" if terminated_by else "expired" if expired else "revoked"


def record_revoked(
    run_id: Any,
    *,
    terminated_by: str | None = None,
    expired: bool = False,
    expires: Any = None,
    worker: str = "",
    message: Any = None,
) -> RunStatus | None:
    """Record a run whose message a worker discarded or whose process it terminated; return what was written.

    ``terminated_by``: the signal's name when the pool process running the
    job was killed (``revoke(id, terminate=True)``); ``expired``: the message
    was discarded because its ``expires`` (shown as given) passed.

    - ``queued`` or ``retrying`` (not started): ``missed`` /
      ``StartingDeadlineExceeded`` for an expired message, as for a message
      taken after the run's deadline; otherwise ``skipped`` / ``Revoked``;
    - ``running`` and terminated (or ``lost`` for this worker's attempt):
      ``failed`` / ``Terminated``, naming the signal, with ``finished_at`` and
      ``duration_ms``. A job that survives the signal keeps running, but its
      own end is then not recorded: the run was ended by hand;
    - ``running`` and *not* terminated (a duplicate message discarded while
      the run runs elsewhere): ``None``, the process running it records it;
    - already ended (beat recorded it ``Replaced`` before revoking it, or it
      finished while the revoke was on its way): ``None``, record kept.

    The waiting state is tried first: a terminated child may have been killed
    before it moved the run to ``running``. The order follows the run's own
    (queued -> running), so a child starting it meanwhile is still caught.
    """
    how = revoke_cause(terminated_by=terminated_by, expired=expired)
    if expired:
        missed = record_missed(run_id, f"{expires} (its message expired)")
        if not missed and message is not None and run_pk(run_id) is not None:
            # A message with no row yet (the send-only client's) expired: record its run, then end it.
            _run_of_message(
                str(run_id),
                job=str(getattr(message, "task", "") or ""),
                args=getattr(message, "args", None) or [],
                kwargs=getattr(message, "kwargs", None) or {},
                queue=str((getattr(message, "delivery_info", None) or {}).get("routing_key") or ""),
                message=message,
                now=timezone.now(),
            )
            missed = record_missed(run_id, f"{expires} (its message expired)")
        return RunStatus.MISSED if missed else None
    if end_unstarted_run(
        run_id,
        RunStatus.SKIPPED,
        error_type="Revoked",
        error_message=f"{how} before it started; its message was discarded",
    ):
        return RunStatus.SKIPPED
    if terminated_by is None:
        return None
    message = f"{how} while running (revoked with terminate=True)"
    error = RunError(type="Terminated", message=message, traceback="")
    if record_from_main_process(run_id, RunStatus.FAILED, error, worker=worker) is None:
        return None
    return RunStatus.FAILED


def current_status(run_id: Any) -> str | None:
    """The run's status as stored now, ``None`` when there is no such run (for log lines only)."""
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return None
    return JobRun.objects.filter(pk=run_uuid).values_list("status", flat=True).first()


PROGRESS_MESSAGE_LIMIT = 200  # JobRun.progress_message's length


def check_progress(*, done: int | None = None, delta: int | None = None, total: int | None = None) -> None:
    """Raise ``ValueError`` for a progress figure a run cannot show: negative, or not a whole number."""
    for name, value in (("done", done), ("delta", delta), ("total", total)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"progress {name} must be a whole number, got {value!r}")
        if value < 0:
            raise ValueError(f"progress {name} must be 0 or more, got {value}")


def record_progress(
    run_id: Any, *, done: int, total: int | None = None, message: str = "", now: datetime | None = None
) -> bool:
    """Write how far a running run is: ``done`` of ``total`` (None: unknown), and what it is doing.

    One guarded UPDATE, from ``running`` only: progress reported by an
    attempt that already ended (or a run recorded ``lost``) is dropped, and
    ``False`` says so. Every figure is replaced, so ``total=None`` clears a
    total written before. ``message`` is cut to 200 characters. ``done`` may
    exceed ``total`` (an estimate that was short). Bad figures raise
    ``ValueError`` (``check_progress``). Status is not touched.
    """
    check_progress(done=done, total=total)
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return False
    return bool(
        JobRun.objects.filter(pk=run_uuid, status=RunStatus.RUNNING).update(
            progress_done=done,
            progress_total=total,
            progress_message=message[:PROGRESS_MESSAGE_LIMIT],
            progress_updated_at=now or timezone.now(),
        )
    )


def add_progress(
    run_id: Any, *, delta: int, total: int | None = None, message: str = "", now: datetime | None = None
) -> bool:
    """Add ``delta`` to a running run's ``progress_done`` (a run made of parts, each adding its own).

    One guarded UPDATE, from ``running`` only (``False``: the run is not
    running, nothing written): ``progress_done = COALESCE(progress_done, 0)
    + delta``, so parts writing at once on several workers never lose each
    other's counts. ``total`` and ``message`` are written only when given
    (None / ""), keeping what another part wrote. Bad figures raise
    ``ValueError``. Status is not touched.
    """
    check_progress(delta=delta, total=total)
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return False
    changed: dict[str, Any] = {
        "progress_done": Coalesce(F("progress_done"), Value(0), output_field=BigIntegerField())
        + Value(delta),
        "progress_updated_at": now or timezone.now(),
    }
    if total is not None:
        changed["progress_total"] = total
    if message:
        changed["progress_message"] = message[:PROGRESS_MESSAGE_LIMIT]
    return bool(JobRun.objects.filter(pk=run_uuid, status=RunStatus.RUNNING).update(**changed))


WAITING_FOR_LIMIT = 300  # JobRun.waiting_for's length


def note_waiting(run_id: Any, reason: str, *, now: datetime | None = None) -> bool:
    """Note on a run that has not started that it waits, and for what (its job's ``max_concurrency``).

    One guarded UPDATE, from ``queued`` or ``retrying`` and within the run's
    deadline: ``waiting_since`` keeps the first time it waited (``COALESCE``),
    ``waiting_for`` says what for (cut to 300 characters). The status does
    not change: the run waits as ``queued``, its message back in the broker.
    ``start_run`` clears ``waiting_for`` and keeps ``waiting_since``.
    ``False``, nothing written: no such row (a send-only client's message,
    recorded when it starts), the run started or ended, or its deadline passed.
    """
    run_uuid = run_pk(run_id)
    if run_uuid is None:
        return False
    now = now or timezone.now()
    return bool(
        JobRun.objects.filter(
            Q(deadline__isnull=True) | Q(deadline__gte=now), pk=run_uuid, status__in=STARTABLE_STATUSES
        ).update(
            waiting_since=Coalesce(F("waiting_since"), Value(now)),
            waiting_for=reason[:WAITING_FOR_LIMIT],
        )
    )
