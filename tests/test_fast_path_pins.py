"""Hand-built fast paths, pinned to what they mirror.

``task_message`` writes Celery protocol-2 messages without Celery (beat
publishes thousands a tick), and beat's PostgreSQL load query lists its
columns by position to match ``ROW_FIELDS``, the ORM path's layout. Nothing
ties either copy to its original at run time; these tests fail, naming the
field, when one side changes and the other does not.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from celery.worker.request import Request
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.db.models import DateTimeField
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask
from kombu import Queue
from kombu.serialization import dumps, loads, prepare_accept_content

from jobs.catalog import publish_catalog
from jobs.dispatch import Delivery, dispatch
from jobs.limits import broker_is_redis
from jobs.models import JobRun
from jobs.publishing import send_batch, task_message
from jobs.sendonly.messages import celery_queue
from scheduler.beat.dispatch import ClaimedRun, PlannedSlot, claim_slots
from scheduler.beat.entries import (
    _FROM_SQL,
    _ROWS_SQL,
    ROW_FIELDS,
    EntryFactory,
    _from_epoch,
    entry_from_row,
    fetch_rows,
    job_defaults,
    orm_rows,
)
from scheduler.models import CatchUp, Overlap, SchedulePolicy
from settings.celery_app import app
from tests.support.queues import empty_queues

pytestmark = [pytest.mark.broker, pytest.mark.django_db]

SLOT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ORIGIN = f"beatplatform@{socket.gethostname()}"  # what publish_runs passes

# --- The task message ----------------------------------------------------------------

# Headers we add on purpose, for whoever inspects a queue (redis-cli, kombu):
# workers read the run's row, never these.
OUR_HEADERS = {"schedule", "scheduled_for"}
# Celery's headers we leave out, each with its reason. None today; a header a
# later Celery adds must go into task_message or here, with why.
CELERY_HEADERS_WE_OMIT: dict[str, str] = {}
# Not headers, and left out by the fast path:
# - the ``reply_to`` property (``send_task`` puts the sender's thread id):
#   results are ignored and there is no result backend, so nothing replies;
# - the ``task-sent`` event ``create_task_message`` prepares because
#   ``task_send_sent_event`` is on: publish_runs sends none, so event monitors
#   (Flower) never see these runs as sent; the run's ``enqueued_at`` records it.
CELERY_PROPERTIES_WE_OMIT = {"reply_to"}


def celery_message(run: JobRun | ClaimedRun, origin: str):
    """What Celery's own ``create_task_message`` builds for ``run`` (protocol 2: ``as_task_v2``)."""
    assert app.conf.task_protocol == 2, "task_message builds protocol 2 only"
    return app.amqp.create_task_message(
        str(run.pk),
        run.job,
        run.args,
        run.kwargs,
        time_limit=run.hard_time_limit,
        soft_time_limit=run.soft_time_limit,
        root_id=None,  # a run is its own workflow: Celery then makes it the task id
        parent_id=None,
        origin=origin,
        ignore_result=True,
        create_sent_event=app.conf.task_send_sent_event,
    )


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:100]}…{text[-100:]} ({len(text)} characters)"


def header_differences(ours: dict, celery: dict) -> list[str]:
    problems = [
        f"header {name!r} is one of ours but Celery sets it too ({celery[name]!r}): rename ours"
        for name in sorted(OUR_HEADERS & set(celery))
    ]
    problems += [f"header {name!r} (one of ours) is missing" for name in sorted(OUR_HEADERS - set(ours))]
    for name in sorted((set(ours) | set(celery)) - OUR_HEADERS):
        if name not in celery:
            problems.append(f"header {name!r}: ours is {ours[name]!r}, Celery sets none")
        elif name not in ours:
            if name not in CELERY_HEADERS_WE_OMIT:
                problems.append(f"header {name!r}: Celery sets {celery[name]!r}, ours has none")
        elif ours[name] != celery[name] or type(ours[name]) is not type(celery[name]):
            problems.append(
                f"header {name!r}: ours is {short(ours[name])}, Celery's is {short(celery[name])}"
            )
    return problems


def body_differences(ours: str, celery: tuple) -> list[str]:
    """Both bodies as a worker decodes them (Celery's serialised by kombu, as it would send it)."""
    accept = prepare_accept_content(app.conf.accept_content)
    ours_decoded = loads(ours, "application/json", "utf-8", accept=accept)
    content_type, encoding, data = dumps(celery, serializer=app.conf.task_serializer)
    celery_decoded = loads(data, content_type, encoding, accept=accept)
    if len(ours_decoded) != len(celery_decoded):
        return [f"body has {len(ours_decoded)} parts, Celery's has {len(celery_decoded)}"]
    return [
        f"body {part}: ours is {mine!r}, Celery's is {theirs!r}"
        for part, mine, theirs in zip(("args", "kwargs", "embed"), ours_decoded, celery_decoded, strict=True)
        if mine != theirs
    ]


def assert_same_message_as_celery(run: JobRun | ClaimedRun) -> None:
    headers, body = task_message(run, ORIGIN)
    reference = celery_message(run, ORIGIN)
    problems = header_differences(headers, reference.headers) + body_differences(body, reference.body)
    assert not problems, "task_message differs from Celery's create_task_message:\n" + "\n".join(problems)
    assert headers["schedule"] == run.schedule_id
    assert headers["scheduled_for"] == run.scheduled_for.isoformat()


def sleep_schedule(queue: str = "") -> PeriodicTask:
    """A crontab schedule with arguments and every policy override the message carries."""
    publish_catalog(worker="tests")
    crontab = CrontabSchedule.objects.create(minute="0", hour="*/2", timezone="Europe/Paris")
    task = PeriodicTask.objects.create(
        name="pinned sleep",
        task="diagnostics.sleep",
        crontab=crontab,
        args=json.dumps([2]),
        kwargs=json.dumps({"ignore_soft_limit": True}),
    )
    policy = SchedulePolicy.objects.get(task=task)
    policy.soft_time_limit, policy.hard_time_limit, policy.queue = 7, 11, queue
    policy.save()
    return task


def claimed_run(task: PeriodicTask) -> ClaimedRun:
    """A queued run as beat claims it for ``task``'s slot (not yet published)."""
    (row,) = fetch_rows([task.pk])
    (run,) = claim_slots([PlannedSlot(entry_from_row(row, job_defaults()), SLOT)]).runs
    return run


def test_it_builds_the_message_celery_builds_for_a_beat_slot():
    run = claimed_run(sleep_schedule())

    assert isinstance(run, ClaimedRun)
    assert (run.args, run.kwargs, run.hard_time_limit, run.soft_time_limit) == (
        [2],
        {"ignore_soft_limit": True},
        11,
        7,
    )
    assert_same_message_as_celery(run)


def test_it_builds_the_message_celery_builds_for_a_dispatched_run():
    publish_catalog(worker="tests")
    run = dispatch(
        "heartbeat",
        # Positional: with no positional arguments argsrepr differs (see the repr cases below).
        [[{"tcp": "db.internal:5432", "timeout": 2.5}, {"url": "https://x.test/é"}]],
        soft_time_limit=12,
        hard_time_limit=20,
    )

    assert isinstance(run, JobRun)
    assert run.schedule_id is None
    assert_same_message_as_celery(run)


def test_it_builds_the_message_celery_builds_for_a_run_of_a_schedule_by_hand():
    task = sleep_schedule()
    run = dispatch("diagnostics.sleep", [0], {"ignore_soft_limit": False}, schedule=task)

    assert run.schedule_id == task.pk
    assert_same_message_as_celery(run)


# Celery writes argsrepr/kwargsrepr with celery.utils.saferepr: empty args as
# the tuple ``()``, at most 1,024 characters, 3 levels deep, its own quoting.
@pytest.mark.parametrize(
    "args, kwargs",
    [
        pytest.param([1, 2.5, None, True, "é"], {"window_hours": 24, "name": 'say "hi"'}, id="plain"),
        pytest.param(
            [[{"tcp": "db:5432"}]], {"targets": [{"url": "https://x.test/"}]}, id="three levels deep"
        ),
        pytest.param(
            [],
            {"seconds": 1},
            id="no positional arguments",
        ),
        pytest.param(
            [1],
            {"message": "it's a drill"},
            id="apostrophe",
        ),
        pytest.param(
            ["a\u2028b"],
            {},
            id="unprintable character",
        ),
        pytest.param(
            [1],
            {"filters": {"region": {"eu": {"west": 1}}}},
            id="four levels deep",
        ),
        pytest.param(
            ["x" * 2000],
            {},
            id="long",
        ),
    ],
)
def test_it_writes_the_argument_reprs_celery_writes(args, kwargs):
    run = JobRun(
        id=uuid.uuid4(),
        job="diagnostics.fail",
        args=args,
        kwargs=kwargs,
        soft_time_limit=30,
        hard_time_limit=45,
        scheduled_for=SLOT,
    )

    assert_same_message_as_celery(run)


# --- End to end: what a worker reads off the real broker -----------------------------


@pytest.fixture
def throwaway_queues():
    """New queue names; the queues are gone after the test (RabbitMQ keeps a declared queue)."""
    names: list[str] = []

    def new() -> str:
        names.append(f"pins-{uuid.uuid4().hex}")
        return names[-1]

    yield new
    if broker_is_redis():
        empty_queues(names)  # a queue on Redis is its lists: gone once empty
        return
    with app.connection_for_write() as conn:
        for name in names:
            conn.default_channel.queue_delete(name)


def take_message(queue: str):
    """The next message of ``queue`` as the worker's consumer decodes it (kombu, the app's accept list)."""
    with app.connection_for_read() as conn:
        message = (
            Queue(queue, no_declare=True)
            .bind(conn.default_channel)
            .get(no_ack=True, accept=app.conf.accept_content)
        )
    assert message is not None, f"no message in {queue}"
    return message


def send_with_celery(run: JobRun | ClaimedRun, queue: str) -> None:
    """The same task sent by Celery's own ``send_task``, as a reference envelope.

    Through the default exchange, as ours goes. RabbitMQ drops a message for a
    queue nobody declared, so there the queue is declared first, as a worker
    declares it (ours declares its own queue the same way when it publishes).
    """
    if not broker_is_redis():
        with app.connection_for_write() as conn:
            celery_queue(queue, settings.BROKER_QUEUE_MAX_PRIORITY)(conn.default_channel).declare()
    app.send_task(
        run.job,
        args=run.args,
        kwargs=run.kwargs,
        task_id=str(run.pk),
        queue=Queue(queue, no_declare=True),
        time_limit=run.hard_time_limit,
        soft_time_limit=run.soft_time_limit,
    )


def worker_view(message) -> dict:
    """What the worker's ``Request`` makes of ``message``: what it runs, with which limits."""
    request = Request(message, app=app)
    time_limit, soft_time_limit = request.time_limits  # as Request.execute_using_pool unpacks it
    return {
        "task": request.task_name,
        "id": request.id,
        "args": request.args,
        "kwargs": request.kwargs,
        "time_limit": time_limit,
        "soft_time_limit": soft_time_limit,
        "eta": request.eta,
        "expires": request.expires,
        "retries": request.request_dict["retries"],
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "ignore_result": request.ignore_result,
        "correlation_id": request.correlation_id,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
    }


# Per message or per queue: the tag, the queue, how many were left behind it.
PER_DELIVERY = {"delivery_tag", "routing_key", "message_count"}


def envelope(message) -> dict:
    """The message's properties and delivery info, less what differs per message or per queue.

    Headers are compared apart (``worker_view``, and ours against
    ``task_message``). Redis's transport keeps the delivery info and tag among
    the properties, RabbitMQ's apart (with the headers as a property).
    """
    properties = {
        name: value
        for name, value in message.properties.items()
        if name not in {"delivery_tag", "delivery_info", "application_headers"}
    }
    properties["delivery_info"] = {k: v for k, v in message.delivery_info.items() if k not in PER_DELIVERY}
    return properties


def assert_a_worker_reads_the_run(run: JobRun | ClaimedRun, ours, celerys) -> None:
    seen = worker_view(ours)
    assert seen == {
        **seen,
        "task": run.job,
        "id": str(run.pk),
        "args": run.args,
        "kwargs": run.kwargs,
        "time_limit": run.hard_time_limit,
        "soft_time_limit": run.soft_time_limit,
        "eta": None,
        "expires": None,
        "ignore_result": True,
    }
    reference = worker_view(celerys)
    assert seen == reference, "a worker reads another task from ours than from Celery's: " + ", ".join(
        f"{name} {seen.get(name)!r} vs {reference.get(name)!r}"
        for name in sorted(set(seen) | set(reference))
        if seen.get(name) != reference.get(name)
    )
    ours_envelope, celerys_envelope = envelope(ours), envelope(celerys)
    for name in CELERY_PROPERTIES_WE_OMIT:
        assert name not in ours_envelope, f"property {name!r} is sent now: take it out of the omitted list"
        celerys_envelope.pop(name, None)
    assert ours_envelope == celerys_envelope, (
        "publish_runs sends other properties than send_task: "
        + ", ".join(
            f"{name} {ours_envelope.get(name)!r} vs Celery's {celerys_envelope.get(name)!r}"
            for name in sorted(set(ours_envelope) | set(celerys_envelope))
            if ours_envelope.get(name) != celerys_envelope.get(name)
        )
    )
    assert ours.headers == task_message(run, ORIGIN)[0]


def test_it_publishes_a_beat_slot_a_worker_reads_as_the_run(throwaway_queues):
    ours, celerys = throwaway_queues(), throwaway_queues()
    (row,) = fetch_rows([sleep_schedule(queue=ours).pk])
    claim = claim_slots([PlannedSlot(entry_from_row(row, job_defaults()), SLOT)])
    (run,) = claim.runs

    assert send_batch(app, claim.runs, claim.outbox_batch) == 1
    send_with_celery(run, celerys)

    assert_a_worker_reads_the_run(run, take_message(ours), take_message(celerys))


def test_it_publishes_a_dispatched_run_a_worker_reads_as_the_run(
    throwaway_queues, django_capture_on_commit_callbacks
):
    publish_catalog(worker="tests")
    ours, celerys = throwaway_queues(), throwaway_queues()
    with django_capture_on_commit_callbacks(execute=True):
        run = dispatch("diagnostics.sleep", [1], {"ignore_soft_limit": True}, queue=ours, soft_time_limit=5)

    assert run.delivery == Delivery.SENT, run.delivery_error
    send_with_celery(run, celerys)

    assert_a_worker_reads_the_run(run, take_message(ours), take_message(celerys))


# --- Beat's load query ----------------------------------------------------------------


def column_of(path: str) -> tuple[str, str, bool]:
    """(table, column, is a timestamp) of a ``ROW_FIELDS`` path, from the models."""
    model = PeriodicTask
    *relations, last = path.split("__")
    for name in relations:
        model = model._meta.get_field(name).related_model
    field = model._meta.pk if last == "pk" else model._meta.get_field(last)
    return model._meta.db_table, field.column, isinstance(field, DateTimeField)


def select_list(sql: str) -> list[str]:
    """The expressions between the first SELECT and its FROM (commas and FROM in parentheses do not count)."""
    start = re.match(r"\s*SELECT\s", sql, flags=re.IGNORECASE).end()
    expressions, depth = [], 0
    for match in re.compile(r"[(),]|\bFROM\b", flags=re.IGNORECASE).finditer(sql, start):
        token = match.group()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            expressions.append(sql[start : match.start()].strip())
            if token.upper() == "FROM":
                return expressions
            start = match.end()
    raise AssertionError("no FROM after the SELECT list")


def test_it_selects_one_column_per_row_field_in_the_same_order():
    aliases = {
        alias: table for table, alias in re.findall(r"(?:FROM|JOIN)\s+(\w+)\s+(\w+)", _FROM_SQL, flags=re.I)
    }
    expressions = select_list(_ROWS_SQL)

    assert len(expressions) == len(ROW_FIELDS), (
        f"_ROWS_SQL selects {len(expressions)} columns, ROW_FIELDS has {len(ROW_FIELDS)}"
    )
    for position, (path, expression) in enumerate(zip(ROW_FIELDS, expressions, strict=True)):
        (alias, column), *more = re.findall(r"\b([a-z]\w*)\.(\w+)\b", expression) or [(None, None)]
        table, expected_column, timestamp = column_of(path)
        where = f"column {position} ({path!r}) is {expression!r}"
        assert not more, f"{where}: one column per expression"
        assert (aliases.get(alias), column) == (table, expected_column), (
            f"{where}, not {table}.{expected_column}"
        )
        ref = re.escape(f"{alias}.{column}")
        form = rf"\(EXTRACT\(EPOCH FROM {ref}\) \* 1000000\)::int8" if timestamp else ref
        assert re.fullmatch(form, expression), (
            f"{where}: timestamps are read as integer microseconds, other columns as they are"
        )


def schedules_of_every_kind() -> list[int]:
    """Enabled schedules of every kind the load query joins, and one disabled (read by neither path)."""
    publish_catalog(worker="tests")
    now = timezone.now()

    paris = CrontabSchedule.objects.create(minute="30", hour="2", day_of_week="1-5", timezone="Europe/Paris")
    cron = PeriodicTask.objects.create(
        name="cron in Paris, every override",
        task="diagnostics.sleep",
        crontab=paris,
        queue="default",
        kwargs=json.dumps({"seconds": 1, "ignore_soft_limit": True}),
    )
    policy = SchedulePolicy.objects.get(task=cron)
    policy.soft_time_limit, policy.hard_time_limit, policy.queue = 20, 40, "reports"
    policy.catchup, policy.overlap, policy.starting_deadline, policy.jitter = (
        CatchUp.ALL,
        Overlap.SKIP,
        600,
        30,
    )
    policy.save()
    SchedulePolicy.objects.filter(task=cron).update(last_slot_at=SLOT)

    every_90s = IntervalSchedule.objects.create(every=90, period=IntervalSchedule.SECONDS)
    window = PeriodicTask.objects.create(
        name="interval within start_time and expires",
        task="heartbeat",
        interval=every_90s,
        start_time=now + timedelta(hours=1, microseconds=123457),
        expires=now + timedelta(days=30, microseconds=1),
    )

    every_5m = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    minutes = PeriodicTask.objects.create(
        name="interval, jitter only",
        task="reports.run_summary",
        interval=every_5m,
        kwargs='{"window_hours": 6}',
    )
    SchedulePolicy.objects.filter(task=minutes).update(jitter=59, anchor=now - timedelta(days=2))

    once = ClockedSchedule.objects.create(clocked_time=now + timedelta(days=1, microseconds=999))
    clocked = PeriodicTask.objects.create(
        name="one-off",
        task="diagnostics.fail",
        clocked=once,
        one_off=True,
        kwargs=json.dumps({"message": "it's a drill"}),
    )

    # bulk_create sends no signals: no policy row, as for data from before this app.
    utc = CrontabSchedule.objects.create(minute="0", hour="6", timezone="UTC")
    no_policy, disabled = PeriodicTask.objects.bulk_create(
        [
            PeriodicTask(name="no policy row", task="heartbeat", crontab=utc),
            PeriodicTask(name="disabled", task="heartbeat", crontab=utc, enabled=False),
        ]
    )
    assert not SchedulePolicy.objects.filter(task=no_policy).exists()
    return [cron.pk, window.pk, minutes.pk, clocked.pk, no_policy.pk, disabled.pk]


def value_at(task: PeriodicTask, path: str):
    """A ``ROW_FIELDS`` value read through model instances: the reference both paths must give."""
    instance = task
    *relations, last = path.split("__")
    for name in relations:
        try:
            instance = getattr(instance, name)
        except ObjectDoesNotExist:  # no policy row
            return None
        if instance is None:
            return None
    value = instance.pk if last == "pk" else getattr(instance, instance._meta.get_field(last).attname)
    return str(value) if path == "crontab__timezone" else value  # a ZoneInfo; both paths read text


TIMESTAMPS = [position for position, path in enumerate(ROW_FIELDS) if column_of(path)[2]]


def with_datetimes(row: tuple) -> tuple:
    """``row`` with its timestamps as datetimes (raw SQL reads integer microseconds since the epoch)."""
    return tuple(_from_epoch(value) if i in TIMESTAMPS else value for i, value in enumerate(row))


def row_differences(name: str, row: tuple, expected: tuple) -> list[str]:
    if len(row) != len(ROW_FIELDS):
        return [f"{name}: a row of {len(row)} values for {len(ROW_FIELDS)} ROW_FIELDS"]
    return [
        f"{name}: {path} is {mine!r}, expected {theirs!r}"
        for path, mine, theirs in zip(ROW_FIELDS, row, expected, strict=True)
        if mine != theirs
    ]


def test_it_reads_rows_in_the_row_fields_layout_through_the_orm():
    ids = schedules_of_every_kind()
    tasks = PeriodicTask.objects.filter(pk__in=ids, enabled=True).order_by("pk")
    expected = {task.pk: tuple(value_at(task, path) for path in ROW_FIELDS) for task in tasks}

    rows = {row[0]: row for row in orm_rows(PeriodicTask.objects.filter(pk__in=ids, enabled=True))}

    assert sorted(rows) == sorted(expected) == sorted(ids[:-1])
    problems = [p for pk, row in rows.items() for p in row_differences(f"task {pk}", row, expected[pk])]
    assert not problems, "orm_rows does not follow ROW_FIELDS:\n" + "\n".join(problems)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="beat reads rows with raw SQL on PostgreSQL only"
)
def test_it_reads_the_same_rows_with_raw_sql_as_with_the_orm():
    ids = schedules_of_every_kind()
    raw = {row[0]: row for row in fetch_rows(ids)}
    orm = {row[0]: row for row in orm_rows(PeriodicTask.objects.filter(pk__in=ids, enabled=True))}

    assert sorted(raw) == sorted(orm) == sorted(ids[:-1]), "the disabled schedule is read by neither"
    lengths = {pk: len(row) for pk, row in raw.items() if len(row) != len(ROW_FIELDS)}
    assert not lengths, f"_ROWS_SQL rows of {lengths} values (task: length) for {len(ROW_FIELDS)} ROW_FIELDS"
    assert all(isinstance(raw[pk][i], int | None) for pk in raw for i in TIMESTAMPS), "epoch microseconds"
    problems = [
        p for pk, row in raw.items() for p in row_differences(f"task {pk}", with_datetimes(row), orm[pk])
    ]
    assert not problems, "_ROWS_SQL and ROW_FIELDS disagree:\n" + "\n".join(problems)

    defaults = job_defaults()
    for pk in raw:
        # Frozen: a row with no policy row is "created" now.
        with time_machine.travel(SLOT, tick=False):
            from_sql, sql_last_slot, sql_created = EntryFactory(defaults).build(raw[pk])
            from_orm, orm_last_slot, orm_created = EntryFactory(defaults).build(orm[pk])
        assert (from_sql.definition, from_sql.anchor, sql_last_slot, sql_created) == (
            from_orm.definition,
            from_orm.anchor,
            orm_last_slot,
            orm_created,
        ), f"task {pk}: beat builds another entry from the raw SQL row"
