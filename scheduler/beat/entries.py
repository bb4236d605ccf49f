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
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import CharField, Count, Max, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.catalog import parse_json_arguments
from jobs.models import JobDefinition
from scheduler.beat.slots import (
    CronSpec,
    interval_length,
    next_clocked_slot,
    next_interval_slot,
    shared_next_cron_slot,
)
from scheduler.models import CatchUp, Overlap, SchedulePolicy
from scheduler.validation import one_line, validate_cron, validate_interval, validate_time_limits

# Row layout, the same from the raw SQL (PostgreSQL) and the ORM (elsewhere):
# the task id, then the columns that define what runs and when (identical
# ones are shared by one ``Definition``), then the schedule's own timestamps.
ROW_FIELDS = (
    "pk",
    "task", "args", "kwargs", "queue", "one_off", "start_time", "expires",
    "crontab__minute", "crontab__hour", "crontab__day_of_month", "crontab__month_of_year",
    "crontab__day_of_week", "crontab__timezone", "interval__every", "interval__period",
    "clocked__clocked_time", "solar", "policy__soft_time_limit", "policy__hard_time_limit",
    "policy__queue", "policy__catchup", "policy__overlap", "policy__starting_deadline",
    "policy__jitter", "priority",
    "policy__anchor", "policy__created_at", "policy__last_slot_at",
    "policy__paused_at", "policy__paused_until", "policy__pause_note", "policy__paused_by",
)  # fmt: skip
DEFINITION_COLUMNS = slice(1, ROW_FIELDS.index("policy__anchor"))
ANCHOR = ROW_FIELDS.index("policy__anchor")
CREATED = ROW_FIELDS.index("policy__created_at")
LAST_SLOT = ROW_FIELDS.index("policy__last_slot_at")
PAUSE_COLUMNS = slice(ROW_FIELDS.index("policy__paused_at"), ROW_FIELDS.index("policy__paused_by") + 1)


class UnusableSchedule(ValueError):
    """A schedule row beat cannot evaluate; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class Definition:
    """What a schedule runs and when, less what is its own (id, anchor, progress).

    Immutable and shared: schedules whose columns are identical hold one
    ``Definition`` (``EntryFactory``), so 100,000 schedules of a few hundred
    kinds cost a few hundred of these, not 100,000.
    """

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
    priority: int | None  # the message's broker priority (PeriodicTask.priority); None: the broker's default
    cron: CronSpec | None
    interval: timedelta | None
    clocked: datetime | None
    not_before: datetime | None
    expires: datetime | None
    one_off: bool


@dataclass(slots=True, eq=False)
class Entry:
    """One enabled schedule in beat's memory: its definition and where it stands.

    Deliberately small (100,000 of them live in beat): the schedule's name
    stays in the database (the claim copies it into the run there), so does
    its last claimed slot (read when the entry is built; the claim advances
    it), and everything identical across schedules lives in the shared
    ``definition``. Reconcile compares rows with ``definition`` and
    ``anchor`` themselves, so no signature is kept either. An entry replaced
    by an edit or removed is *retired* (its definition dropped); the engine
    discards it when it comes off the heap.

    Entries are the heap's items themselves (no wrapping tuple: 100,000
    tuples and tie-breaker ints are ~10 MB), ordered by ``due_at`` and then
    ``task_id``. ``due_at`` must not change while the entry is in the heap.
    Without jitter it is the pending slot itself; ``JitteredEntry`` keeps the
    slot apart (most schedules have no jitter: one field less each).
    """

    task_id: int
    definition: Definition | None  # None once retired
    anchor: datetime | None = None  # intervals only
    due_at: datetime | None = None  # when to dispatch the pending slot; None: not in the heap

    def __lt__(self, other: Entry) -> bool:
        mine, theirs = self.due_at, other.due_at
        if mine == theirs:
            return self.task_id < other.task_id
        assert mine is not None and theirs is not None  # only entries in the heap are compared
        return mine < theirs

    @property
    def pending(self) -> datetime | None:
        """The slot this entry waits for in the heap (None when it is not in it)."""
        return self.due_at

    @property
    def heap_due(self) -> datetime:
        """``due_at`` of an entry in the heap (every entry there has one)."""
        due_at = self.due_at
        if due_at is None:
            raise RuntimeError(f"schedule {self.task_id}: its entry is in the heap with no due time")
        return due_at

    @property
    def live(self) -> Definition:
        """The definition of an entry that is not retired (the engine drops retired ones unread)."""
        definition = self.definition
        if definition is None:
            raise RuntimeError(f"schedule {self.task_id}: its entry was retired; it has no definition")
        return definition

    @property
    def retired(self) -> bool:
        return self.definition is None

    def retire(self) -> None:
        self.definition = None

    def wait_for(self, slot: datetime | None) -> None:
        """Make ``slot`` the pending one, or none (call only while out of the heap)."""
        self.due_at = slot

    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after``, within start_time/expires."""
        d = self.live
        if d.not_before is not None and after < d.not_before:
            after = d.not_before - timedelta(microseconds=1)
        if d.cron is not None:
            slot = shared_next_cron_slot(d.cron, after)
        elif d.interval is not None and self.anchor is not None:
            slot = next_interval_slot(self.anchor, d.interval, after)
        elif d.clocked is not None:
            slot = next_clocked_slot(d.clocked, after)
        else:
            slot = None  # not reached: a row with no usable schedule is refused when built
        if slot is not None and d.expires is not None and slot > d.expires:
            return None
        return slot


@dataclass(slots=True, eq=False)
class JitteredEntry(Entry):
    """An entry whose dispatch is delayed by a stable jitter: it keeps its slot apart."""

    slot: datetime | None = None

    @property
    def pending(self) -> datetime | None:
        return self.slot

    def wait_for(self, slot: datetime | None) -> None:
        self.slot = slot
        self.due_at = None if slot is None else slot + self.jitter_of(slot)

    def jitter_of(self, slot: datetime) -> timedelta:
        """A stable delay in [0, jitter s): the same for the same schedule and slot."""
        digest = hashlib.blake2b(f"{self.task_id}:{slot.isoformat()}".encode(), digest_size=4).digest()
        return timedelta(milliseconds=int.from_bytes(digest, "big") % (self.live.jitter * 1000))


@dataclass(frozen=True, slots=True)
class Pause:
    """A schedule's pause as beat applies it; held only for paused schedules (most are not).

    A slot is *covered* (claimed ``skipped`` with ``message``, never run) when
    the pause holds at the slot's time or at the moment beat claims it: the
    first keeps a pause that began and ended while beat was down from being
    caught up, the second skips a slot that fell due just before the pause
    was written but is claimed after. It ends by itself at ``until`` (a slot
    at ``until`` runs); a resume by hand removes it through the change log.
    """

    since: datetime
    until: datetime | None
    message: str

    def holds_at(self, moment: datetime) -> bool:
        return self.since <= moment and (self.until is None or moment < self.until)

    def covers(self, slot: datetime, now: datetime) -> bool:
        return self.holds_at(slot) or self.holds_at(now)

    def over(self, now: datetime) -> bool:
        """Whether no slot claimed from ``now`` on can be covered (a later ``until`` is a new pause)."""
        return self.until is not None and now >= self.until


def pause_message(paused_by: str, until: datetime | None, note: str) -> str:
    """What a skipped run of a paused schedule says.

    E.g. 'paused by alice until 2026-12-01 10:00:00 UTC: deploy freeze'.
    """
    who = f" by {paused_by}" if paused_by else ""
    when = f" until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if until is not None else ""
    return f"paused{who}{when}: {note}" if note else f"paused{who}{when}"


def pause_of(row: tuple, after: datetime) -> Pause | None:
    """The pause in ``row`` that can still cover a slot after ``after``; None for the unpaused (most rows)."""
    paused_at, paused_until, note, paused_by = row[PAUSE_COLUMNS]
    if paused_at is None:
        return None
    since, until = _from_epoch(paused_at), _from_epoch(paused_until)
    assert since is not None
    if until is not None and until <= after:
        return None
    return Pause(since, until, pause_message(paused_by or "", until, note or ""))


@lru_cache(maxsize=4096)
def seconds(n: int) -> timedelta:
    """Shared timedelta objects: 100,000 entries hold a handful of distinct deadlines."""
    return timedelta(seconds=n)


@lru_cache(maxsize=4096)
def interval_of(every: int, period: str) -> timedelta:
    return interval_length(every, period)


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


# --- Reading rows ----------------------------------------------------------------------
# PostgreSQL: raw SQL. Timestamps come back as integer microseconds since the
# epoch (parsing 200,000 timestamps through Django's time-zone-aware loader
# was a third of a 100,000-schedule start).
_COLUMNS_SQL = """t.task, t.args, t.kwargs, t.queue, t.one_off,
       (EXTRACT(EPOCH FROM t.start_time) * 1000000)::int8,
       (EXTRACT(EPOCH FROM t.expires) * 1000000)::int8,
       c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week, c.timezone,
       i.every, i.period, (EXTRACT(EPOCH FROM k.clocked_time) * 1000000)::int8, t.solar_id,
       p.soft_time_limit, p.hard_time_limit, p.queue, p.catchup, p.overlap, p.starting_deadline,
       p.jitter, t.priority, (EXTRACT(EPOCH FROM p.anchor) * 1000000)::int8,
       (EXTRACT(EPOCH FROM p.created_at) * 1000000)::int8"""
_FROM_SQL = """FROM django_celery_beat_periodictask t
LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id
LEFT JOIN scheduler_schedulepolicy p ON p.task_id = t.id
WHERE t.enabled"""
_ROWS_SQL = f"""SELECT t.id, {_COLUMNS_SQL},
       (EXTRACT(EPOCH FROM p.last_slot_at) * 1000000)::int8,
       (EXTRACT(EPOCH FROM p.paused_at) * 1000000)::int8,
       (EXTRACT(EPOCH FROM p.paused_until) * 1000000)::int8, p.pause_note, p.paused_by
{_FROM_SQL}"""  # noqa: S608 (constant text, no user input)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _raw_sql() -> bool:
    return connection.vendor == "postgresql"


def fetch_rows(task_ids: Iterable[int] | None = None) -> Iterator[tuple]:
    """Enabled tasks as ``ROW_FIELDS`` rows: all of them, or ``task_ids``.

    Timestamps are integer microseconds on PostgreSQL and datetimes
    elsewhere; ``EntryFactory`` reads both.
    """
    if _raw_sql():
        if task_ids is None:
            return _stream_postgresql(_ROWS_SQL, [])
        return _stream_postgresql(_ROWS_SQL + " AND t.id = ANY(%s)", [list(task_ids)])
    queryset = PeriodicTask.objects.filter(enabled=True)
    if task_ids is not None:
        queryset = queryset.filter(pk__in=list(task_ids))
    return orm_rows(queryset).iterator(chunk_size=5000)


# The ORM path reads the time zone as plain text: django-timezone-field's
# converter raises on a zone that does not exist (a row written with raw
# SQL), which would stop the whole load instead of quarantining that row.
_ORM_FIELDS = tuple("crontab_zone" if f == "crontab__timezone" else f for f in ROW_FIELDS)


def orm_rows(queryset: QuerySet[PeriodicTask]) -> QuerySet:
    """``queryset`` as ``ROW_FIELDS`` rows through the ORM (every database but PostgreSQL)."""
    return queryset.annotate(crontab_zone=Cast("crontab__timezone", CharField())).values_list(*_ORM_FIELDS)


def enabled_id_range() -> tuple[int, int]:
    """(highest id, count) of the enabled tasks: how to size beat's table of entries."""
    found = PeriodicTask.objects.filter(enabled=True).aggregate(highest=Max("id"), count=Count("id"))
    return found["highest"] or 0, found["count"]


def fetch_rows_after(after_id: int, limit: int) -> Iterator[tuple]:
    """Up to ``limit`` enabled tasks with ids above ``after_id``, by ascending id (reconcile)."""
    if _raw_sql():
        return _stream_postgresql(_ROWS_SQL + " AND t.id > %s ORDER BY t.id LIMIT %s", [after_id, limit])
    rows = orm_rows(PeriodicTask.objects.filter(enabled=True, pk__gt=after_id).order_by("pk"))
    return iter(rows[:limit])


def _stream_postgresql(sql: str, params: list) -> Iterator[tuple]:
    """Rows as the server sends them (psycopg's ``stream``: chunked rows mode).

    Unlike a server-side cursor, there is no round trip per batch: the
    server computes and sends while beat builds entries (0.4 s instead of
    0.8 s for 100,000 rows here), and memory holds one chunk, not the result.
    The connection must not be used for anything else until the rows are read.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.cursor() as cursor:
        yield from cursor.stream(sql, params, size=1000)


def _from_epoch(value: int | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return _EPOCH + timedelta(microseconds=value)


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


class EntryFactory:
    """Builds entries from ``fetch_rows`` rows, sharing identical definitions.

    A row whose definition columns were seen before costs a dictionary
    lookup on a slice of the row; only a new combination builds a
    ``Definition``. ``defaults`` are the catalog's (queue, soft, hard) per job,
    used where the schedule's policy leaves them unset.
    """

    def __init__(self, defaults: dict[str, tuple[str, int, int]]) -> None:
        self.defaults = defaults
        self.definitions: dict[tuple, Definition] = {}

    def build(self, row: tuple) -> tuple[Entry, datetime | None, datetime]:
        """The entry of ``row``, its last claimed slot, and when its schedule was created."""
        definition = self.definition_of(row)
        created = _from_epoch(row[CREATED]) or definition.not_before or timezone.now()
        kind = JitteredEntry if definition.jitter else Entry
        entry = kind(task_id=row[0], definition=definition, anchor=self.anchor_of(definition, row, created))
        return entry, _from_epoch(row[LAST_SLOT]), created

    def definition_of(self, row: tuple) -> Definition:
        key = row[DEFINITION_COLUMNS]
        definition = self.definitions.get(key)
        if definition is None:
            definition = self.definitions[key] = self._definition(key)
        return definition

    @staticmethod
    def anchor_of(definition: Definition, row: tuple, created: datetime | None = None) -> datetime | None:
        """An interval's anchor: start_time, else the policy's anchor, else creation (whole seconds)."""
        if definition.interval is None:
            return None
        created = created or _from_epoch(row[CREATED]) or definition.not_before or timezone.now()
        return (definition.not_before or _from_epoch(row[ANCHOR]) or created).replace(microsecond=0)

    def matches(self, entry: Entry, row: tuple) -> bool:
        """Whether ``entry`` is what ``row`` builds now (else the row was edited behind beat's back).

        Compares the shared definition (by identity, else by value: a new
        factory, or new catalog defaults, build equal objects anew) and the
        anchor. ``last_slot_at`` is beat's own progress, not an edit.
        """
        definition = self.definition_of(row)
        if definition is not entry.definition and definition != entry.definition:
            return False
        return definition.interval is None or self.anchor_of(definition, row) == entry.anchor

    def keep_only(self, live: Iterable[Entry]) -> None:
        """Forget definitions no entry uses (they would pile up over months of edits)."""
        used = {id(entry.definition) for entry in live}
        self.definitions = {k: d for k, d in self.definitions.items() if id(d) in used}

    def _definition(self, key: tuple) -> Definition:
        """Build the shared definition of ``key``; ``UnusableSchedule`` when beat cannot run it.

        Applies the save-time rules (``scheduler.validation``) to what the
        row holds, because a row written with raw SQL never went through
        them: strict JSON arguments (jsonb refuses NaN and NUL, so a claim
        carrying one would fail for every schedule in its batch), a job in
        the catalog (else there are no limits to enforce), effective time
        limits that can hold, a positive starting deadline, exactly one
        usable schedule (no solar), a valid cron and time zone, an interval
        of at least the minimum.
        """
        (job, args, kwargs, queue, one_off, start_time, expires, c_minute, c_hour, c_dom, c_month,
         c_dow, c_tz, i_every, i_period, clocked_time, solar_id, p_soft, p_hard, p_queue, p_catchup,
         p_overlap, p_deadline, p_jitter, priority) = key  # fmt: skip
        if job not in self.defaults:
            raise UnusableSchedule(
                f"unknown job {job!r}: it is not in the job catalog, so no worker serves it and it has "
                "no time limits. Fix the job name, or start a worker that has it."
            )
        d_queue, d_soft, d_hard = self.defaults[job]
        soft, hard = p_soft or d_soft, p_hard or d_hard
        cron = interval = clocked = None
        try:
            parse_json_arguments(args or "[]", kwargs or "{}")
            validate_time_limits(soft, hard)
            if c_minute is not None:
                expression = f"{c_minute} {c_hour} {c_dom} {c_month} {c_dow}"
                validate_cron(expression, str(c_tz or "UTC"))
                cron = cron_spec(expression, str(c_tz or "UTC"))
            elif i_every is not None or i_period is not None:
                validate_interval(i_every, i_period)
                interval = interval_of(i_every, i_period)
            elif clocked_time is not None:
                clocked = _from_epoch(clocked_time)
        except ValidationError as exc:
            raise UnusableSchedule(one_line(exc)) from None
        if solar_id is not None and cron is None and interval is None and clocked is None:
            raise UnusableSchedule(
                "solar schedules are not supported: use a crontab in the place's time zone"
            )
        if cron is None and interval is None and clocked is None:
            raise UnusableSchedule("no crontab, interval or clocked time: there is nothing to run it on")
        if p_deadline is not None and p_deadline <= 0:
            raise UnusableSchedule(
                f"a starting deadline of {p_deadline} s would make every run missed; "
                "leave it empty for the default"
            )
        return Definition(
            # Interned: many definitions share these strings.
            job=sys.intern(job),
            args_json=sys.intern(args or "[]"),
            kwargs_json=sys.intern(kwargs or "{}"),
            queue=sys.intern(p_queue or queue or d_queue or "default"),
            soft_time_limit=soft,
            hard_time_limit=hard,
            starting_deadline=seconds(p_deadline or settings.JOB_DEFAULT_STARTING_DEADLINE),
            catchup=p_catchup or CatchUp.LATEST,
            overlap=p_overlap or Overlap.ALLOW,
            jitter=p_jitter or 0,
            priority=priority,
            cron=cron,
            interval=interval,
            clocked=clocked,
            not_before=_from_epoch(start_time),
            expires=_from_epoch(expires),
            one_off=bool(one_off),
        )


def entry_from_row(row: tuple, defaults: dict[str, tuple[str, int, int]]) -> Entry:
    """One entry from one ``fetch_rows`` row (no sharing: for single rows and tests)."""
    return EntryFactory(defaults).build(row)[0]
