"""Beat entries: one enabled ``PeriodicTask`` with everything needed to fire it.

Rows are read with ``values_list`` (no model instances: 100,000 schedules
must load in well under two seconds) joining django-celery-beat's task and
schedule rows, our policy row and the job catalog. Arguments stay JSON text
until publish, which keeps memory per entry small.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import JobDefinition
from scheduler.beat.slots import CronSpec, next_clocked_slot, next_cron_slot, next_interval_slot
from scheduler.models import CatchUp, Overlap, SchedulePolicy

INTERVAL_UNITS = {
    "days": timedelta(days=1),
    "hours": timedelta(hours=1),
    "minutes": timedelta(minutes=1),
    "seconds": timedelta(seconds=1),
    "microseconds": timedelta(microseconds=1),
}

ROW_FIELDS = (
    "pk", "name", "task", "args", "kwargs", "queue", "one_off", "start_time", "expires",
    "crontab__minute", "crontab__hour", "crontab__day_of_month", "crontab__month_of_year",
    "crontab__day_of_week", "crontab__timezone", "interval__every", "interval__period",
    "clocked__clocked_time", "policy__soft_time_limit", "policy__hard_time_limit",
    "policy__queue", "policy__catchup", "policy__overlap", "policy__starting_deadline",
    "policy__anchor", "policy__jitter", "policy__created_at", "policy__last_slot_at",
)  # fmt: skip
# Everything but last_slot_at, which beat itself advances: a change here is an edit.
SIGNATURE_LENGTH = len(ROW_FIELDS) - 1
_TZ = ROW_FIELDS.index("crontab__timezone")


@dataclass(slots=True)
class Entry:
    task_id: int
    name: str
    job: str
    args_json: str
    kwargs_json: str
    queue: str
    soft_time_limit: int | None
    hard_time_limit: int | None
    starting_deadline: timedelta
    catchup: str
    overlap: str
    jitter: int
    created_at: datetime
    signature: int  # hash of the row's columns but last_slot_at: cheaper to keep than the tuple
    cron: CronSpec | None = None
    interval: timedelta | None = None
    anchor: datetime | None = None
    clocked: datetime | None = None
    not_before: datetime | None = None
    expires: datetime | None = None
    one_off: bool = False
    last_slot: datetime | None = None
    pending: datetime | None = None  # the slot this entry waits for in the heap
    version: int = 0

    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after``, within start_time/expires."""
        if self.not_before is not None and after < self.not_before:
            after = self.not_before - timedelta(microseconds=1)
        if self.cron is not None:
            slot = next_cron_slot(self.cron, after)
        elif self.interval is not None and self.anchor is not None:
            slot = next_interval_slot(self.anchor, self.interval, after)
        elif self.clocked is not None:
            slot = next_clocked_slot(self.clocked, after)
        else:
            slot = None  # solar schedules are not supported by this engine
        if slot is not None and self.expires is not None and slot > self.expires:
            return None
        return slot

    def fire_at(self, slot: datetime) -> datetime:
        """When to dispatch ``slot``: the slot plus this entry's stable jitter."""
        if not self.jitter:
            return slot
        digest = hashlib.blake2b(f"{self.task_id}:{slot.isoformat()}".encode(), digest_size=4).digest()
        return slot + timedelta(milliseconds=int.from_bytes(digest, "big") % (self.jitter * 1000))


@lru_cache(maxsize=4096)
def seconds(n: int) -> timedelta:
    """Shared timedelta objects: 100,000 entries hold a handful of distinct deadlines."""
    return timedelta(seconds=n)


@lru_cache(maxsize=4096)
def interval_of(every: int, period: str) -> timedelta:
    return every * INTERVAL_UNITS[period]


@lru_cache(maxsize=65536)
def cron_spec(expression: str, zone: str) -> CronSpec:
    """One shared ``CronSpec`` per (expression, zone)."""
    return CronSpec(expression, zone)


def job_defaults() -> dict[str, tuple[str, int, int]]:
    return {
        name: (queue, soft, hard)
        for name, queue, soft, hard in JobDefinition.objects.values_list(
            "name", "queue", "soft_time_limit", "hard_time_limit"
        )
    }


def fetch_rows(task_ids: Iterable[int] | None = None) -> Iterator[tuple]:
    """Enabled tasks with their schedule and policy columns (see ``ROW_FIELDS``)."""
    if connection.vendor == "postgresql" and task_ids is None:
        return _fetch_all_rows_postgresql()
    queryset = PeriodicTask.objects.filter(enabled=True)
    if task_ids is not None:
        queryset = queryset.filter(pk__in=list(task_ids))
    return queryset.values_list(*ROW_FIELDS).iterator(chunk_size=5000)


# The same columns as ROW_FIELDS, for the full load on PostgreSQL. Timestamps
# come back as integer microseconds since the epoch: parsing 200,000 ISO
# strings through Django's time-zone-aware loader was a third of a 100,000
# schedule start.
_TIMESTAMP_POSITIONS = frozenset(i for i, f in enumerate(ROW_FIELDS) if f in {
    "start_time", "expires", "clocked__clocked_time", "policy__anchor", "policy__created_at",
    "policy__last_slot_at"})  # fmt: skip
_FULL_LOAD_SQL = """
SELECT t.id, t.name, t.task, t.args, t.kwargs, t.queue, t.one_off,
       (EXTRACT(EPOCH FROM t.start_time) * 1000000)::int8,
       (EXTRACT(EPOCH FROM t.expires) * 1000000)::int8,
       c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week, c.timezone,
       i.every, i.period, (EXTRACT(EPOCH FROM k.clocked_time) * 1000000)::int8,
       p.soft_time_limit, p.hard_time_limit, p.queue, p.catchup, p.overlap, p.starting_deadline,
       (EXTRACT(EPOCH FROM p.anchor) * 1000000)::int8, p.jitter,
       (EXTRACT(EPOCH FROM p.created_at) * 1000000)::int8,
       (EXTRACT(EPOCH FROM p.last_slot_at) * 1000000)::int8
FROM django_celery_beat_periodictask t
LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id
LEFT JOIN scheduler_schedulepolicy p ON p.task_id = t.id
WHERE t.enabled
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _fetch_all_rows_postgresql() -> Iterator[tuple]:
    with transaction.atomic(), connection.cursor() as wrapper:
        # A server-side cursor streams the rows instead of holding all of them.
        with wrapper.connection.cursor(name="beat_full_load") as cursor:
            cursor.itersize = 5000
            cursor.execute(_FULL_LOAD_SQL)
            for raw in cursor:
                row = list(raw)
                for i in _TIMESTAMP_POSITIONS:
                    if row[i] is not None:
                        row[i] = _EPOCH + timedelta(microseconds=row[i])
                yield tuple(row)


def ensure_policies(now: datetime | None = None, task_ids: Iterable[int] | None = None) -> int:
    """Create the policy row of tasks that have none (data from before this app)."""
    queryset = PeriodicTask.objects.filter(policy__isnull=True)
    if task_ids is not None:
        queryset = queryset.filter(pk__in=list(task_ids))
    missing = queryset.values_list("pk", "start_time", "date_changed")
    rows = [
        SchedulePolicy(task_id=pk, anchor=start or changed or now or timezone.now())
        for pk, start, changed in missing
    ]
    SchedulePolicy.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows)


def entry_from_row(row: tuple, defaults: dict[str, tuple[str, int, int]]) -> Entry:
    (pk, name, job, args, kwargs, queue, one_off, start_time, expires,
     c_minute, c_hour, c_dom, c_month, c_dow, c_tz, i_every, i_period, clocked_time,
     p_soft, p_hard, p_queue, p_catchup, p_overlap, p_deadline, p_anchor, p_jitter,
     p_created, p_last) = row  # fmt: skip
    d_queue, d_soft, d_hard = defaults.get(job, ("", None, None))
    created = p_created or start_time or timezone.now()
    entry = Entry(
        task_id=pk,
        name=name,
        # Interned: 100,000 entries share a handful of these strings.
        job=sys.intern(job),
        args_json=sys.intern(args or "[]"),
        kwargs_json=sys.intern(kwargs or "{}"),
        queue=sys.intern(p_queue or queue or d_queue or "default"),
        soft_time_limit=p_soft or d_soft,
        hard_time_limit=p_hard or d_hard,
        starting_deadline=seconds(p_deadline or settings.JOB_DEFAULT_STARTING_DEADLINE),
        catchup=p_catchup or CatchUp.LATEST,
        overlap=p_overlap or Overlap.ALLOW,
        jitter=p_jitter or 0,
        created_at=created,
        # The zone may be a ZoneInfo (ORM) or its name (raw SQL): hash the name.
        signature=hash(
            (*row[:_TZ], str(c_tz) if c_tz is not None else None, *row[_TZ + 1 : SIGNATURE_LENGTH])
        ),
        not_before=start_time,
        expires=expires,
        one_off=one_off,
        last_slot=p_last,
    )
    if c_minute is not None:
        entry.cron = cron_spec(f"{c_minute} {c_hour} {c_dom} {c_month} {c_dow}", str(c_tz or "UTC"))
    elif i_every is not None:
        entry.interval = interval_of(i_every, i_period)
        entry.anchor = (start_time or p_anchor or created).replace(microsecond=0)
    elif clocked_time is not None:
        entry.clocked = clocked_time
    return entry
