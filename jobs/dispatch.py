"""Dispatch: the way in for a run that is not one of beat's slots.

Other services (an API, a management command, the admin's *run now*) run
jobs by name through ``dispatch`` (one run) or ``dispatch_many`` (a fan-out)
without importing worker code: the job's queue and default limits come from
the catalog table, the one routing table workers publish. Every dispatch
writes its ``JobRun`` first and publishes after commit through the outbox
(``jobs.publishing``), exactly like beat, so these runs appear in the same
history, with their origin and who asked.

Guarantees, for both forms:
- **Validated first.** An unknown job, arguments that do not bind to its
  signature or are not strict JSON, or impossible limits raise
  ``ValidationError``, and nothing is recorded or sent. ``dispatch_many``
  checks every call before it writes anything: one bad call refuses all.
- **Recorded before published.** The runs and their outbox batch commit in
  one transaction; messages go only after that commit.
- **Never lost, never raised after commit.** If the broker does not take the
  messages, the batch stays in the outbox (beat's leader sends it within
  about a minute) and ``run.delivery`` says ``OUTBOX``: the caller must not
  dispatch again, or the job runs twice.

The catalog is read through a per-process cache, kept ``CATALOG_TTL_SECONDS``
and emptied whenever this process saves or deletes a catalog row (a
``publish_catalog`` here, the admin): a job published for the first time is
seen at once (a name the cache does not know is always looked up); one
re-published by another process with a new queue, limits or signature
within that many seconds; and arguments the cached signature refuses are
judged again against the table before the caller is refused.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection as db
from django.db import transaction
from django.db.models import JSONField
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from jobs.catalog import check_argument_types, parse_json_arguments, signature_of, validate_job_call
from jobs.limits import validate_time_limits
from jobs.models import JobDefinition, JobRun, OutboxBatch, RunOrigin, RunStatus
from jobs.publishing import record_outbox, send_batch, validate_priority
from lib.sequences import CHUNK
from settings.celery_app import app

if TYPE_CHECKING:
    import inspect

    from django_celery_beat.models import PeriodicTask

logger = logging.getLogger(__name__)

# How long a process trusts its copy of a job's catalog row. Workers publish
# the catalog when they start, so a deploy that changes a job's queue or
# signature reaches dispatchers within this.
CATALOG_TTL_SECONDS = 5.0


class Delivery(StrEnum):
    """What became of a dispatched run's message; ``dispatch`` sets it as ``run.delivery``."""

    AT_COMMIT = "at commit"  # the caller's transaction is still open: sent when it commits
    SENT = "sent"  # the broker took it
    OUTBOX = "outbox"  # the broker did not: it waits in the outbox, beat's leader sends it


class _CatalogCache:
    """Catalog rows by job name, each trusted for ``CATALOG_TTL_SECONDS`` in this process."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[float, JobDefinition, inspect.Signature]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def validate(self, job: str, args: list[Any], kwargs: dict[str, Any]) -> JobDefinition:
        """``catalog.validate_job_call``, without a query while the job's row is fresh.

        Raises what ``validate_job_call`` raises, always from the table: a
        call the cached row refuses is checked again against the database.
        """
        cached = self._rows.get(job)
        if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL_SECONDS:
            _, definition, signature = cached
            try:
                parse_json_arguments(args, kwargs)
                bound = signature.bind(*args, **kwargs)
                check_argument_types(definition, bound, positional=len(args))
            except (ValidationError, TypeError):
                pass  # refused on the cached row: the table decides, with its own message
            else:
                return definition
        definition = validate_job_call(job, args, kwargs)
        with self._lock:
            self._rows[job] = (time.monotonic(), definition, signature_of(definition))
        return definition


catalog_cache = _CatalogCache()


@receiver([post_save, post_delete], sender=JobDefinition, dispatch_uid="jobs.dispatch.catalog_cache")
def _forget_catalog(**_: Any) -> None:
    catalog_cache.clear()


def off_the_slot_grid(moment: datetime) -> datetime:
    """``moment``, one microsecond later if it falls on a whole second.

    Beat's slots of cron and interval schedules fall on whole seconds (cron
    on minutes; intervals from an anchor in whole seconds), so a run by hand
    at this moment can never hold (schedule, slot) under ``one_run_per_slot``
    and make beat's claim of that slot a no-op.
    """
    return moment + timedelta(microseconds=1) if moment.microsecond == 0 else moment


def _send_after_commit(runs: Sequence[JobRun], batch_id: int | None) -> None:
    try:
        send_batch(app, runs, batch_id)
    except Exception as exc:  # noqa: BLE001 (the runs are committed: never make the caller retry them)
        logger.warning(
            "%d run(s) queued but not sent yet (%s, first %s); beat sends them from the outbox",
            len(runs),
            exc,
            runs[0].pk,
        )
        error = str(exc) or type(exc).__name__
        for run in runs:
            run.delivery, run.delivery_error = Delivery.OUTBOX, error
    else:
        for run in runs:
            run.delivery = Delivery.SENT


def _new_run(
    job: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    *,
    queue: str | None,
    soft_time_limit: int | None,
    hard_time_limit: int | None,
    starting_deadline: int | None,
    schedule: PeriodicTask | None,
    origin: RunOrigin,
    requested_by: str,
    now: datetime,
    priority: int | None = None,
) -> JobRun:
    """A validated, unsaved run of ``job``; raises ``ValidationError`` (see ``dispatch``)."""
    if origin == RunOrigin.BEAT:
        raise ValueError("beat's runs are claimed slots (scheduler.beat.dispatch), not dispatches")
    args, kwargs = list(args or []), dict(kwargs or {})
    definition = catalog_cache.validate(job, args, kwargs)
    soft = soft_time_limit or definition.soft_time_limit
    hard = hard_time_limit or definition.hard_time_limit
    validate_time_limits(soft, hard)
    validate_priority(priority)
    deadline = starting_deadline or settings.JOB_DEFAULT_STARTING_DEADLINE
    run = JobRun(
        id=uuid.uuid4(),
        schedule=schedule,
        schedule_name=schedule.name[:200] if schedule is not None else "",
        origin=origin,
        requested_by=requested_by[:150],
        enqueued_at=now,
        job=job,
        args=args,
        kwargs=kwargs,
        queue=queue or definition.queue,
        soft_time_limit=soft,
        hard_time_limit=hard,
        scheduled_for=off_the_slot_grid(now) if schedule is not None else now,
        deadline=now + timedelta(seconds=deadline),
        status=RunStatus.QUEUED,
    )
    run.delivery, run.delivery_error = Delivery.AT_COMMIT, ""
    run.priority = priority  # the message's, not a column: like ``delivery`` (jobs.models)
    return run


def _siblings_of(first: JobRun) -> Callable[[list[Any], dict[str, Any]], JobRun]:
    """A maker of runs like ``first`` (same job, queue, limits, times) with their own id and arguments.

    Built positionally, in column order: Django's keyword ``__init__`` (a
    default looked up per field) was the largest cost of a large batch.
    """
    fields = JobRun._meta.concrete_fields
    values = [getattr(first, field.attname) for field in fields]
    at = {field.attname: i for i, field in enumerate(fields)}
    id_at, args_at, kwargs_at = at["id"], at["args"], at["kwargs"]
    positional: Callable[..., JobRun] = JobRun  # the plugin types keyword construction only

    def sibling(args: list[Any], kwargs: dict[str, Any]) -> JobRun:
        values[id_at], values[args_at], values[kwargs_at] = uuid.uuid4(), args, kwargs
        run = positional(*values)
        run.delivery, run.delivery_error = Delivery.AT_COMMIT, ""
        return run

    return sibling


def _column_values(run: JobRun) -> list[Any]:
    """``run``'s values in ``JobRun``'s column order, JSON columns as text (for SQL and COPY)."""
    values = []
    for field in JobRun._meta.concrete_fields:
        value = getattr(run, field.attname)
        if isinstance(field, JSONField) and value is not None:
            value = json.dumps(value)
        values.append(value)
    return values


@functools.cache
def _postgresql_statements() -> tuple[str, str]:
    """(one run's INSERT feeding its outbox INSERT, the COPY of many runs), built once per process."""
    fields = JobRun._meta.concrete_fields
    table = JobRun._meta.db_table
    # Concrete fields are those with a column (Django's definition): none is left out.
    columns = ", ".join(db.ops.quote_name(field.column) for field in fields if field.column is not None)
    placeholders = ", ".join("%s::jsonb" if isinstance(field, JSONField) else "%s" for field in fields)
    outbox = OutboxBatch._meta.db_table
    insert_one = (
        f"WITH run AS (INSERT INTO {table} ({columns}) VALUES ({placeholders}) RETURNING id) "  # noqa: S608
        f"INSERT INTO {outbox} (run_ids, created_at) SELECT jsonb_build_array(id::text), %s FROM run "
        "RETURNING id"
    )
    return insert_one, f"COPY {table} ({columns}) FROM STDIN"


def _record_postgresql(runs: list[JobRun]) -> int | None:
    """Insert ``runs`` and their outbox batch; return the batch id (None for no runs).

    One run: one statement (an INSERT feeding the outbox INSERT), so outside
    a transaction it commits on its own, in one round trip. Several (the
    runs of one ``dispatch_many``, alike but for id and arguments): COPY
    into the table and one outbox row, in a transaction. The ORM's save
    costs four round trips for the same (BEGIN, two INSERTs, COMMIT), and
    bulk_create spends most of its time preparing values.
    """
    insert_one, copy_many = _postgresql_statements()
    if len(runs) == 1:
        with db.cursor() as cursor:
            cursor.execute(insert_one, [*_column_values(runs[0]), runs[0].created_at])
            return cursor.fetchone()[0]
    # The runs of one dispatch_many differ only in id and arguments: one row
    # of values, three columns replaced per run.
    row = _column_values(runs[0])
    at = {field.attname: i for i, field in enumerate(JobRun._meta.concrete_fields)}
    id_at, args_at, kwargs_at = at["id"], at["args"], at["kwargs"]
    with transaction.atomic(), db.cursor() as cursor:
        with cursor.cursor.copy(copy_many) as copy:
            for run in runs:
                row[id_at] = run.id
                row[args_at], row[kwargs_at] = json.dumps(run.args), json.dumps(run.kwargs)
                copy.write_row(row)
        return record_outbox([run.pk for run in runs])


def _record_and_send(runs: list[JobRun]) -> None:
    """Record ``runs`` with their outbox batch (atomically), and send them once that commits."""
    now = runs[0].enqueued_at
    assert now is not None  # dispatch records every run as enqueued now
    for run in runs:
        run.created_at = now  # auto_now_add, which only the ORM's save would fill
    if db.vendor == "postgresql":
        batch_id = _record_postgresql(runs)
    else:
        with transaction.atomic():
            JobRun.objects.bulk_create(runs, batch_size=CHUNK)
            batch_id = record_outbox([run.pk for run in runs])
    # Outside the caller's transaction the runs are committed already, and
    # this sends them now; inside it, at its commit (and never on rollback).
    transaction.on_commit(lambda: _send_after_commit(runs, batch_id))


def dispatch(
    job: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    soft_time_limit: int | None = None,
    hard_time_limit: int | None = None,
    starting_deadline: int | None = None,
    schedule: PeriodicTask | None = None,
    origin: RunOrigin = RunOrigin.CLIENT,
    requested_by: str = "",
    priority: int | None = None,
) -> JobRun:
    """Validate, record and publish one run of ``job``; return its ``JobRun``.

    Raises ``ValidationError`` for an unknown job, arguments that do not bind,
    or impossible limits; nothing is recorded or sent then. Unset queue and
    limits are the job's defaults; a caller running a schedule passes the
    schedule's own (``scheduler.services.run_schedules_now``).

    ``schedule``: the run belongs to it (history, overlap policy) without
    taking a slot: its ``scheduled_for`` is now, off beat's slot grid
    (``off_the_slot_grid``), and its ``last_slot_at`` is not advanced.

    The message is sent once the run commits, and ``run.delivery`` says how
    that went: ``SENT``; ``OUTBOX`` when the broker could not take it
    (``run.delivery_error`` says why): the run stays queued in the outbox and
    the beat leader sends it within about a minute, so the caller must not
    dispatch it again (it would run twice); ``AT_COMMIT`` while the caller's
    own transaction is still open (the attribute changes at its commit).
    A broker failure never raises.

    ``priority``: the message's broker priority (``jobs.publishing.validate_priority``
    says the range; on Redis 0 goes first); None: the broker's default.
    """
    run = _new_run(
        job,
        args,
        kwargs,
        queue=queue,
        soft_time_limit=soft_time_limit,
        hard_time_limit=hard_time_limit,
        starting_deadline=starting_deadline,
        schedule=schedule,
        origin=origin,
        requested_by=requested_by,
        now=timezone.now(),
        priority=priority,
    )
    _record_and_send([run])
    return run


def dispatch_many(
    job: str,
    calls: Iterable[tuple[list[Any] | None, dict[str, Any] | None]],
    *,
    queue: str | None = None,
    soft_time_limit: int | None = None,
    hard_time_limit: int | None = None,
    starting_deadline: int | None = None,
    origin: RunOrigin = RunOrigin.CLIENT,
    requested_by: str = "",
) -> list[JobRun]:
    """Dispatch one run of ``job`` per ``(args, kwargs)`` in ``calls``, all or none; return them in order.

    The fan-out form of ``dispatch``, with its guarantees and ``delivery``
    attribute on every run: every call is validated before anything is
    written (the first bad one raises ``ValidationError`` naming its index,
    and no run is recorded), then all runs and one outbox batch are inserted
    in one transaction, and after commit one pipelined publish sends them.
    If the broker does not take them, all wait in the outbox together.
    An empty ``calls`` records nothing and returns ``[]``.
    """
    now = timezone.now()
    runs: list[JobRun] = []
    first: JobRun | None = None
    for index, (args, kwargs) in enumerate(calls):
        try:
            if first is None:
                first = _new_run(
                    job,
                    args,
                    kwargs,
                    queue=queue,
                    soft_time_limit=soft_time_limit,
                    hard_time_limit=hard_time_limit,
                    starting_deadline=starting_deadline,
                    schedule=None,
                    origin=origin,
                    requested_by=requested_by,
                    now=now,
                )
                sibling = _siblings_of(first)
                runs.append(first)
                continue
            args, kwargs = list(args or []), dict(kwargs or {})
            # Queue, limits and deadline are the first call's: only the arguments differ.
            catalog_cache.validate(job, args, kwargs)
        except ValidationError as exc:
            raise ValidationError(f"call {index} of {job}: {'; '.join(exc.messages)}") from exc
        runs.append(sibling(args, kwargs))
    if runs:
        _record_and_send(runs)
    return runs
