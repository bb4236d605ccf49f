"""The send-only client: dispatch jobs by name, from any process.

Other services (an API, a management command) run jobs through ``dispatch``
without importing worker code: the job's queue and default limits come from
the catalog table, the one routing table workers publish. Every dispatch
writes its ``JobRun`` first and publishes after commit, exactly like beat, so
manual runs appear in the same history.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.catalog import validate_job_call
from jobs.models import JobRun, RunStatus
from scheduler.models import validate_time_limits

# Keep IN (...) lists below SQLite's and Postgres' comfortable limits.
CHUNK = 900


def chunks(items: Sequence, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def publish_runs(app: Celery, runs: Sequence[JobRun], now: datetime | None = None) -> int:
    """Send one message per queued run, pipelined; then mark them enqueued.

    All messages go over one producer in a kombu publish batch (one Redis
    pipeline per 1,000 messages; plain publishes on brokers without batches).
    ``enqueued_at`` is written only after the broker took every message, so
    a failure leaves the runs in the outbox to be sent again.
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
    now = now or timezone.now()
    for chunk in chunks([r.pk for r in queued]):
        JobRun.objects.filter(pk__in=chunk, enqueued_at__isnull=True).update(enqueued_at=now)
    return len(queued)


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
) -> JobRun:
    """Validate, record and publish one run of ``job``; return its ``JobRun``.

    Raises ``ValidationError`` for an unknown job, arguments that do not bind,
    or impossible limits; nothing is recorded or sent then.
    """
    from scheduler.celery import app

    args, kwargs = list(args or []), dict(kwargs or {})
    definition = validate_job_call(job, args, kwargs)
    soft = soft_time_limit or definition.soft_time_limit
    hard = hard_time_limit or definition.hard_time_limit
    validate_time_limits(soft, hard)
    now = timezone.now()
    deadline = starting_deadline or settings.JOB_DEFAULT_STARTING_DEADLINE
    run = JobRun(
        id=uuid.uuid4(),
        job=job,
        args=args,
        kwargs=kwargs,
        queue=queue or definition.queue,
        soft_time_limit=soft,
        hard_time_limit=hard,
        scheduled_for=now,
        deadline=now + timedelta(seconds=deadline),
        status=RunStatus.QUEUED,
    )
    with transaction.atomic():
        run.save(force_insert=True)
        transaction.on_commit(lambda: publish_runs(app, [run]))
    return run
