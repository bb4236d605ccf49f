"""Publishing recorded runs to the broker, through the outbox.

The one way a committed ``JobRun`` becomes a Celery message, for beat's
claims and for ``jobs.dispatch`` alike:

- ``record_outbox`` writes, inside the caller's transaction, one
  ``OutboxBatch`` row naming the runs to send;
- after commit, ``send_batch`` publishes them (``publish_runs``: one
  pipelined publish) and deletes the row;
- ``publish_outbox`` sends what a crash or a broker outage left behind.

A run is therefore recorded before it is published, and a run whose publish
failed is never lost: its batch stays until a later ``publish_outbox``.
A batch may be sent twice (a death between publish and delete); the worker
starts a run once and ignores the second message.

Priority: a run's ``priority`` (a schedule's ``PeriodicTask.priority``, or
``dispatch(priority=...)``) becomes the message's broker priority. On Redis
it is 0–9 and **0 goes first** (kombu keeps one list per level and pops the
lowest first; a message without one counts as 0); on RabbitMQ 0 to the queues'
``x-max-priority`` (``BROKER_QUEUE_MAX_PRIORITY``, 10 by default), higher first. ``validate_priority``
says what the configured broker takes. The outbox keeps run ids only, so a
run re-sent from it takes its schedule's priority (a client's dispatch with
no schedule is re-sent without one).

Messages go through kombu's producer pool for the app's current write URL,
so a process keeps its broker connection between publishes instead of
connecting (and importing the transport, and pinging) every time.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery import Celery
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection as db
from django.db.models import F
from django.utils import timezone
from kombu import Connection, Producer, pools

from jobs.limits import broker_is_redis
from jobs.models import JobRun, OutboxBatch, RunStatus
from jobs.sendonly.messages import build_task_message, publish_task_message
from lib.sequences import chunks


class PublishableRun(Protocol):
    """What publishing reads of a run: a ``JobRun`` or beat's lighter ``ClaimedRun``.

    Read-only members, so that both fit: a claimed run's ``schedule_id`` is
    always an int, a ``JobRun``'s may be None.
    """

    @property
    def pk(self) -> uuid.UUID: ...
    @property
    def job(self) -> str: ...
    @property
    def args(self) -> list: ...
    @property
    def kwargs(self) -> dict: ...
    @property
    def queue(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def soft_time_limit(self) -> int | None: ...
    @property
    def hard_time_limit(self) -> int | None: ...
    @property
    def schedule_id(self) -> int | None: ...
    @property
    def scheduled_for(self) -> datetime: ...


def task_message(run: PublishableRun, origin: str) -> tuple[dict[str, Any], str]:
    """Celery message protocol 2 headers and JSON body for ``run`` (``jobs.sendonly.messages``).

    The task id is the run's primary key; the message carries no eta or
    expiry (the run's row holds its deadline).
    """
    return build_task_message(
        str(run.pk),
        run.job,
        run.args,
        run.kwargs,
        soft_time_limit=run.soft_time_limit,
        hard_time_limit=run.hard_time_limit,
        origin=origin,
        schedule_id=run.schedule_id,
        scheduled_for=run.scheduled_for.isoformat(),
    )


REDIS_MAX_PRIORITY = 9  # kombu's Redis transport: levels 0-9 (settings: priority_steps)


def validate_priority(priority: int | None) -> None:
    """Refuse a message priority the configured broker cannot honour (``ValidationError`` on ``priority``).

    None means the broker's default. Redis: 0-9, 0 first. RabbitMQ: 0 to the
    queues' ``x-max-priority`` (``BROKER_QUEUE_MAX_PRIORITY``), higher first;
    with it 0, queues take no priorities and any but 0 is refused.
    """
    if priority is None:
        return
    if broker_is_redis():
        if not 0 <= priority <= REDIS_MAX_PRIORITY:
            raise ValidationError(
                {
                    "priority": f"Priority {priority} is out of range: with the Redis broker it is 0 to "
                    f"{REDIS_MAX_PRIORITY}, and 0 goes first (Redis reverses the order; 9 waits for all "
                    "others). Leave it empty for the default, 0."
                }
            )
        return
    highest = settings.BROKER_QUEUE_MAX_PRIORITY
    if not highest and priority:
        raise ValidationError(
            {
                "priority": "Priorities are off: the RabbitMQ queues are declared without x-max-priority "
                "(BROKER_QUEUE_MAX_PRIORITY=0). Leave it empty."
            }
        )
    if not 0 <= priority <= highest:
        raise ValidationError(
            {
                "priority": f"Priority {priority} is out of range: with RabbitMQ it is 0 to {highest} "
                "(BROKER_QUEUE_MAX_PRIORITY), and higher goes first. Leave it empty for none."
            }
        )


def message_priority(run: PublishableRun) -> int | None:
    """The broker priority of ``run``'s message: beat's ``ClaimedRun.priority``, or the attribute
    ``dispatch`` / ``publish_outbox`` set on a ``JobRun`` (no column: the schedule holds it)."""
    return getattr(run, "priority", None)


def _fail_fast(producer: Producer) -> None:
    # kombu's default retries block for seconds when the broker is down; the
    # caller keeps the runs in the outbox and tries later instead.
    connection = producer.connection
    assert connection is not None  # a pooled producer is bound to its connection
    closed = _closed_by_the_broker(connection)
    if closed:
        connection.collect()  # as after a failed publish: connected again just below
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
    if closed:
        producer.revive(connection.default_channel)  # its channel was the closed connection's


def _closed_by_the_broker(connection: Connection) -> bool:
    """Whether RabbitMQ closed this kept connection since its last use (a restart, an operator).

    RabbitMQ says so in a frame the client reads only when it next reads:
    until then kombu counts the connection as connected, and the next publish
    would fail on it and leave its runs to the outbox. Read what is pending
    now, without waiting. On Redis nothing to do: redis-py reconnects a dead
    socket and retries the command by itself.
    """
    if connection.transport.driver_type != "amqp" or not connection.connected:
        return False
    try:
        connection.drain_events(timeout=0)  # a producer's connection has no consumers to deliver to
    except TimeoutError:  # nothing pending (socket.timeout): still open
        return False
    except connection.connection_errors:
        return True
    return False


_write_connections: dict[tuple[int, str], Connection] = {}


def _write_connection(app: Celery) -> Connection:
    """The pool key for the app's write broker as configured now (building one costs ~1 ms of conf reads)."""
    key = (id(app), str(app.conf.broker_write_url or app.conf.broker_url))
    connection = _write_connections.get(key)
    if connection is None:
        connection = _write_connections[key] = app.connection_for_write()
    return connection


@contextmanager
def kept_producer(app: Celery) -> Iterator[Producer]:
    """A producer on a kept connection to the app's write broker, connected.

    The pool is kombu's, keyed by the broker URL as the app reads it now (a
    process, or a test, that points the app elsewhere gets that broker's
    pool). A connection that failed is closed before it goes back to the
    pool, so the next user reconnects instead of inheriting a dead socket.
    Raises the broker's error when it cannot connect (within about 2 s).
    """
    with pools.producers[_write_connection(app)].acquire(block=True, timeout=10) as producer:
        try:
            _fail_fast(producer)
            yield producer
        except BaseException:
            producer.connection.collect()
            raise


def publish_runs(app: Celery, runs: Sequence[PublishableRun]) -> int:
    """Send one message per queued run, pipelined; return how many were sent.

    All messages go over one kept producer in a kombu publish batch (one
    Redis pipeline per 1,000 messages; plain publishes on brokers without
    batches). Writes nothing: the caller's outbox batch says what is still to
    be sent (``send_batch``). Raises the broker's error if it cannot take them.

    A kept connection the broker closed since its last use (it restarted) is
    connected again, so the caller does not see it: by redis-py's retry on
    the next command, on RabbitMQ by ``_fail_fast`` reading the broker's close
    first (``tests/test_dispatch.py`` pins this on both).
    """
    queued = [r for r in runs if r.status == RunStatus.QUEUED]
    if not queued:
        return 0
    origin = f"beatplatform@{socket.gethostname()}"
    default_queue = app.conf.task_default_queue
    with kept_producer(app) as producer, _pipelined(producer, len(queued)):
        for run in queued:
            headers, body = task_message(run, origin)
            publish_task_message(
                producer,
                headers,
                body,
                queue=run.queue or default_queue,
                priority=message_priority(run),
                queue_max_priority=settings.BROKER_QUEUE_MAX_PRIORITY,
            )
    return len(queued)


def _pipelined(producer: Producer, count: int) -> AbstractContextManager[object]:
    """kombu's publish batch for many messages; none for one (building the pipeline cost more)."""
    if count == 1:
        return nullcontext()
    # Producer.batch is newer (kombu 5.7) than celery-types' kombu stubs.
    batch: AbstractContextManager[object] = producer.batch(max_size=1000)  # type: ignore[attr-defined]
    return batch


def record_outbox(run_ids: Sequence[uuid.UUID]) -> int | None:
    """Put ``run_ids`` in the outbox, inside the caller's transaction; return the batch id (None if empty)."""
    if not run_ids:
        return None
    return OutboxBatch.objects.create(run_ids=[str(run_id) for run_id in run_ids]).pk


def send_batch(app: Celery, runs: Sequence[PublishableRun], batch_id: int | None) -> int:
    """Publish ``runs`` (after their commit), then take their batch out of the outbox.

    If publishing raises, the batch stays and ``publish_outbox`` sends it
    later. If the process dies between the two steps, the batch is sent
    twice; the worker starts a run once and ignores the second message.
    """
    sent = publish_runs(app, runs)
    if batch_id is not None:
        take_out_of_outbox(batch_id)
    return sent


def take_out_of_outbox(batch_id: int) -> None:
    """Delete outbox batch ``batch_id``, without waiting for the disk on PostgreSQL.

    Losing this delete in a database crash only sends the batch again, which
    workers ignore, so on PostgreSQL (outside a caller's transaction) it
    commits with ``synchronous_commit`` off: no WAL flush to wait for, in one
    round trip. Elsewhere, an ordinary delete.
    """
    if db.vendor == "postgresql" and not db.in_atomic_block:
        table = OutboxBatch._meta.db_table
        with db.cursor() as cursor:
            cursor.execute(
                f"BEGIN; SET LOCAL synchronous_commit TO OFF; "  # noqa: S608 (an integer, no user input)
                f"DELETE FROM {table} WHERE id = {int(batch_id)}; COMMIT"
            )
        return
    OutboxBatch.objects.filter(pk=batch_id).delete()


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
            queued = JobRun.objects.filter(pk__in=chunk, status=RunStatus.QUEUED)
            for run in queued.annotate(schedule_priority=F("schedule__priority")):
                run.priority = run.schedule_priority  # the message's, not a column (jobs.models)
                runs.append(run)
        runs.sort(key=lambda run: run.scheduled_for)
        sent += send_batch(app, runs, batch.pk)
        if sent >= limit:
            break
    return sent


def warm_up_broker(app: Celery) -> None:
    """Connect once, so the first burst does not pay for importing the transport (~1 s)."""
    with kept_producer(app):
        pass
