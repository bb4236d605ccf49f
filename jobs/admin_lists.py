"""What keeps the admin's lists fast whatever the size of their tables.

The stock pieces each read a whole table per page: a related-field filter
renders every schedule (each ``str()`` loading its crontab or interval: over
9,000 queries and 7.6 s at 10,000 schedules), a filter on a text field runs
``SELECT DISTINCT`` over every run, ``date_hierarchy`` scans every run's
date, and the paginator counts every matching row. Here:

- ``ScheduleFilter``: by schedule id (``?schedule=<id>``, the link other
  pages use); the sidebar shows only the schedule filtered on;
- ``JobFilter``: the job names from the catalog (a few rows), not from runs
  (the schedule list uses it too, on ``PeriodicTask.task``);
- ``BoundedCountPaginator``: counts at most ``COUNT_LIMIT`` + 1 matching rows
  (``SELECT COUNT(*) FROM (… LIMIT n)``), so the page count is exact up to
  that many and "more" past it; an unfiltered list uses PostgreSQL's
  estimate of the table's rows;
- ``schedule_run_facts``: the last run and failure streak of a page of
  schedules in two queries, each reading a bounded number of index entries
  per schedule (``one_run_per_slot`` backwards), never a query per row;
- ``schedules_whose_last_run_is``: the schedules whose newest run has a
  status, for the schedule list's filter, without probing every schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils.functional import cached_property
from django_celery_beat.models import PeriodicTask

from jobs.models import JobDefinition, JobRun, RunStatus

COUNT_LIMIT = 10_000


class ScheduleFilter(admin.SimpleListFilter):
    title = "schedule"
    parameter_name = "schedule"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        # The admin applies a filter only while it offers a choice: the
        # value asked for is always one, so a bad value filters to nothing.
        value = self.value()
        if not value:
            return []
        if not value.isdigit():
            return [(value, f"{value!r} is not a schedule id")]
        name = PeriodicTask.objects.filter(pk=int(value)).values_list("name", flat=True).first()
        return [(value, name or f"schedule {value} (deleted)")]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            return queryset.none()  # not an id: nothing matches, rather than a server error
        return queryset.filter(schedule_id=int(value))


class JobFilter(admin.SimpleListFilter):
    """By job name, the choices from the catalog; ``job_field`` is the column holding the name."""

    title = "job"
    parameter_name = "job"
    job_field = "job"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in JobDefinition.objects.values_list("name", flat=True)]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.job_field: value}) if value else queryset


class BoundedCountPaginator(Paginator):
    """A paginator whose count never reads more than ``COUNT_LIMIT`` + 1 rows."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        if connection.vendor == "postgresql" and not queryset.query.where:
            estimate = _estimated_rows(queryset.model._meta.db_table)
            if estimate >= COUNT_LIMIT:
                return estimate
        return queryset[: COUNT_LIMIT + 1].count()


def _estimated_rows(table: str) -> int:
    """PostgreSQL's estimate of a table's rows (``pg_class.reltuples``; -1 before its first ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return max(0, int(row[0])) if row else 0


# A failure streak counts these; skipped, missed and unfinished runs neither break nor extend it.
FAILING_STATUSES = (RunStatus.FAILED, RunStatus.SOFT_TIMEOUT, RunStatus.HARD_TIMEOUT, RunStatus.LOST)
# How many of a schedule's newest runs a streak is counted over: a schedule failing every
# minute for a month must not make the list read 40,000 runs. A streak this long is shown "N+".
STREAK_WINDOW = 100
LAST_RUN_FIELDS = ("id", "schedule_id", "status", "scheduled_for", "started_at", "finished_at", "duration_ms")


@dataclass(frozen=True)
class ScheduleRunFacts:
    """What the schedule list shows of one schedule's runs."""

    last_run: JobRun | None
    failure_streak: int  # failed, timed-out or lost runs since the last success, within STREAK_WINDOW

    @property
    def streak_is_longer(self) -> bool:
        """Every run of the window failed: the streak is at least ``failure_streak``."""
        return self.failure_streak >= STREAK_WINDOW


def schedule_run_facts(schedule_ids: Sequence[int]) -> dict[int, ScheduleRunFacts]:
    """The last run and failure streak of each schedule, in two queries whatever the number of ids.

    The first reads, per schedule, its newest ``STREAK_WINDOW`` runs from the
    ``one_run_per_slot`` index read backwards (a correlated subquery per id,
    PostgreSQL and SQLite alike): the newest run's id and the failures before
    the newest success. The second loads those last runs' few columns. A
    schedule with no run gets ``last_run=None`` and a streak of 0.
    """
    ids = list(dict.fromkeys(schedule_ids))
    if not ids:
        return {}
    quote = connection.ops.quote_name
    runs = quote(JobRun._meta.db_table)
    tasks = quote(PeriodicTask._meta.db_table)
    failing = ", ".join(["%s"] * len(FAILING_STATUSES))
    in_ids = ", ".join(["%s"] * len(ids))
    # successes = the successes at or after this run (newest first): 0 means before the newest success.
    sql = f"""
        SELECT t.id,
            (SELECT r.id FROM {runs} r WHERE r.schedule_id = t.id ORDER BY r.scheduled_for DESC LIMIT 1),
            (SELECT count(*) FROM (
                SELECT w.status, sum(CASE WHEN w.status = %s THEN 1 ELSE 0 END)
                    OVER (ORDER BY w.scheduled_for DESC ROWS UNBOUNDED PRECEDING) AS successes
                FROM (
                    SELECT r.status, r.scheduled_for FROM {runs} r
                    WHERE r.schedule_id = t.id ORDER BY r.scheduled_for DESC LIMIT %s
                ) w
            ) x WHERE x.successes = 0 AND x.status IN ({failing}))
        FROM {tasks} t WHERE t.id IN ({in_ids})
    """  # noqa: S608 (table names from the models, values as parameters)
    params: list[Any] = [RunStatus.SUCCEEDED.value, STREAK_WINDOW, *FAILING_STATUSES, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    last_ids = [run_id for _, run_id, _ in rows if run_id is not None]
    last_runs = {run.pk: run for run in JobRun.objects.filter(pk__in=last_ids).only(*LAST_RUN_FIELDS)}
    return {
        schedule_id: ScheduleRunFacts(
            last_run=last_runs.get(_as_uuid(run_id)) if run_id is not None else None,
            failure_streak=int(streak or 0),
        )
        for schedule_id, run_id, streak in rows
    }


def _as_uuid(value: Any) -> Any:
    """A run id as the ORM returns it (SQLite hands raw SQL the hex text of a UUID column)."""
    return JobRun._meta.pk.to_python(value)


def schedules_whose_last_run_is(status: str, limit: int | None = None) -> list[int] | None:
    """The ids of the schedules whose newest run has ``status``; ``None`` when ``limit`` or more do.

    ``limit`` defaults to the list's count bound, ``COUNT_LIMIT`` + 1.

    Read from the runs, not the schedules: each run of that status is kept if
    no newer run of its schedule exists (one probe of ``one_run_per_slot``).
    Probing every schedule's newest run instead costs a heap read per schedule
    (211 ms at 100,000 schedules, and the list asks twice: page and count).
    Runs in ``run_active``'s states are found through that index; others by a
    scan of the run table (~130 ms at 1,000,000 runs, bench/results.md). Past
    ``limit`` matches the caller filters with ``newest_run_status`` instead,
    which stops early then (most schedules match).
    """
    limit = COUNT_LIMIT + 1 if limit is None else limit
    quote = connection.ops.quote_name
    runs = quote(JobRun._meta.db_table)
    sql = f"""
        SELECT r.schedule_id FROM {runs} r
        WHERE r.status = %s AND r.schedule_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {runs} n WHERE n.schedule_id = r.schedule_id AND n.scheduled_for > r.scheduled_for
        )
        LIMIT %s
    """  # noqa: S608 (table name from the model, values as parameters)
    with connection.cursor() as cursor:
        cursor.execute(sql, [status, limit])
        ids = [row[0] for row in cursor.fetchall()]
    return ids if len(ids) < limit else None


def newest_run_status() -> Subquery:
    """The status of a schedule's newest run, as an expression on ``PeriodicTask`` rows."""
    newest = JobRun.objects.filter(schedule_id=OuterRef("pk")).order_by("-scheduled_for")
    return Subquery(newest.values("status")[:1])


def format_duration(ms: int | None) -> str:
    """A run's duration for people: "850 ms", "12.3 s", "4 min 5 s", "2 h 3 min"; "" when unknown."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def format_utc(value: datetime | None) -> str:
    """A time as the admin's run pages show it: UTC to the second, the zone named; "" for none."""
    if value is None:
        return ""
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
