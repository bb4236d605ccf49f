"""The send-only client: dispatch jobs by name, from any process.

Other services (an API, a management command) run jobs through ``dispatch``
without importing worker code: the job's queue and default limits come from
the catalog table, the one routing table workers publish. Every dispatch
writes its ``JobRun`` first and publishes after commit, exactly like beat, so
manual runs appear in the same history, with their origin and who asked.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from celery import Celery
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.catalog import validate_job_call
from jobs.limits import validate_time_limits
from jobs.models import JobRun, OutboxBatch, RunOrigin, RunStatus
from lib.sequences import chunks
from settings.celery_app import app

if TYPE_CHECKING:
    from django_celery_beat.models import PeriodicTask

logger = logging.getLogger(__name__)


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(run: JobRun, origin: str) -> tuple[dict[str, Any], str]:
    """Celery message protocol 2 headers and JSON body for ``run``.

    Built directly (not through ``app.amqp.create_task_message``, which costs
    ~110 µs a message) because beat publishes thousands per tick. The task id
    is the run's primary key; ``timelimit`` is ``[hard, soft]``.
    """
    task_id = str(run.pk)
    headers = {
        "lang": "py",
        "task": run.job,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [run.hard_time_limit, run.soft_time_limit],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(run.args),
        "kwargsrepr": repr(run.kwargs),
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "schedule": run.schedule_id,
        "scheduled_for": run.scheduled_for.isoformat(),
    }
    return headers, json.dumps([run.args, run.kwargs, EMBED])


def publish_runs(app: Celery, runs: Sequence[JobRun]) -> int:
    """Send one message per queued run, pipelined; return how many were sent.

    All messages go over one producer in a kombu publish batch (one Redis
    pipeline per 1,000 messages; plain publishes on brokers without batches).
    Writes nothing: the caller's outbox batch says what is still to be sent
    (``send_batch``). Raises the broker's error if it cannot take them.
    """
    queued = [r for r in runs if r.status == RunStatus.QUEUED]
    if not queued:
        return 0
    origin = f"beatplatform@{socket.gethostname()}"
    with app.connection_for_write() as connection:
        # Fail fast when the broker is down (kombu's default retries block for
        # seconds); the caller keeps the runs in the outbox and tries later.
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        producer = connection.Producer()
        with producer.batch(max_size=1000):
            for run in queued:
                headers, body = task_message(run, origin)
                # The default exchange routes by queue name, on Redis and AMQP alike.
                producer.publish(
                    body,
                    exchange="",
                    routing_key=run.queue or app.conf.task_default_queue,
                    serializer=None,
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers=headers,
                    correlation_id=headers["id"],
                    delivery_mode=2,
                    retry=False,
                    declare=None,
                )
    return len(queued)


def record_outbox(run_ids: Sequence[uuid.UUID]) -> int | None:
    """Put ``run_ids`` in the outbox, inside the caller's transaction; return the batch id."""
    if not run_ids:
        return None
    return OutboxBatch.objects.create(run_ids=[str(run_id) for run_id in run_ids]).pk


def send_batch(app: Celery, runs: Sequence[JobRun], batch_id: int | None) -> int:
    """Publish ``runs`` (after their commit), then take their batch out of the outbox.

    If publishing raises, the batch stays and ``publish_outbox`` sends it
    later. If the process dies between the two steps, the batch is sent
    twice; the worker starts a run once and ignores the second message.
    """
    sent = publish_runs(app, runs)
    if batch_id is not None:
        OutboxBatch.objects.filter(pk=batch_id).delete()
    return sent


def publish_outbox(app: Celery, limit: int = 10_000, older_than: timedelta | None = None) -> int:
    """Send the runs of outbox batches left behind (a crash after commit, a broker outage).

    Oldest batch first, up to about ``limit`` runs per call; only runs still
    queued are sent (one that started or finished meanwhile needs nothing).
    ``older_than`` leaves younger batches to the process that is sending them.
    """
    sent = 0
    batches = OutboxBatch.objects.order_by("id")
    if older_than is not None:
        batches = batches.filter(created_at__lt=timezone.now() - older_than)
    for batch in batches.iterator():
        runs: list[JobRun] = []
        for chunk in chunks(batch.run_ids):
            runs.extend(JobRun.objects.filter(pk__in=chunk, status=RunStatus.QUEUED))
        runs.sort(key=lambda run: run.scheduled_for)
        sent += send_batch(app, runs, batch.pk)
        if sent >= limit:
            break
    return sent


class Delivery(StrEnum):
    """What became of a dispatched run's message; ``dispatch`` sets it as ``run.delivery``."""

    AT_COMMIT = "at commit"  # the caller's transaction is still open: sent when it commits
    SENT = "sent"  # the broker took it
    OUTBOX = "outbox"  # the broker did not: it waits in the outbox, beat's leader sends it


def _send_after_commit(app: Celery, run: JobRun, batch_id: int | None) -> None:
    try:
        send_batch(app, [run], batch_id)
    except Exception as exc:  # noqa: BLE001 (the run is committed: never make the caller retry it)
        logger.warning("run %s is queued but not sent yet (%s); beat sends it from the outbox", run.pk, exc)
        run.delivery, run.delivery_error = Delivery.OUTBOX, str(exc) or type(exc).__name__
    else:
        run.delivery = Delivery.SENT


def off_the_slot_grid(moment: datetime) -> datetime:
    """``moment``, one microsecond later if it falls on a whole second.

    Beat's slots of cron and interval schedules fall on whole seconds (cron
    on minutes; intervals from an anchor in whole seconds), so a run by hand
    at this moment can never hold (schedule, slot) under ``one_run_per_slot``
    and make beat's claim of that slot a no-op.
    """
    return moment + timedelta(microseconds=1) if moment.microsecond == 0 else moment


def warm_up_broker(app: Celery) -> None:
    """Connect once, so the first burst does not pay for importing the transport (~1 s)."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        connection.Producer()


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
    """
    if origin == RunOrigin.BEAT:
        raise ValueError("beat's runs are claimed slots (scheduler.beat.dispatch), not dispatches")
    args, kwargs = list(args or []), dict(kwargs or {})
    definition = validate_job_call(job, args, kwargs)
    soft = soft_time_limit or definition.soft_time_limit
    hard = hard_time_limit or definition.hard_time_limit
    validate_time_limits(soft, hard)
    now = timezone.now()
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
    with transaction.atomic():
        run.save(force_insert=True)
        batch_id = record_outbox([run.pk])
        transaction.on_commit(lambda: _send_after_commit(app, run, batch_id))
    return run
