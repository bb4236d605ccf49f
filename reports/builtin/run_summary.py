"""Run summary / SLA: per job and per schedule over a window, computed by the database.

One row per job, followed by one row per schedule of that job (``scope`` says
which), over the runs whose slot (``scheduled_for``) lies in
``[window_start, window_end)``:

- runs in total and by status;
- success rate: succeeded over the runs that ended with an outcome (succeeded,
  failed, timed out, lost); missed and skipped slots say nothing of the job;
  ``None`` when no run ended with an outcome;
- p50 / p95 / max duration and p95 / max lateness (``percentile_cont``:
  interpolated between neighbours, as PostgreSQL defines it), over the runs
  that have one; ``None`` when none has;
- missed and skipped slots (their status counts);
- the longest failure streak: the most bad runs (failed, timed out, lost) in a
  row by slot, within the window. Only a success ends a streak: missed,
  skipped and unfinished runs neither extend nor break it. Runs of one slot
  are ordered by id, so the order is total. A streak that began before the
  window counts only its runs inside it.

Per schedule means per (job, schedule): a schedule whose job was changed in
the window has a row per job. Runs with no schedule (dispatched by job name)
count in their job's row only.

Everything is aggregated by the database; Python sees the result rows only
(a row per job and per schedule), never a run. PostgreSQL: one statement —
one hashed pass over the window's runs gives each (job, schedule)'s counts,
maxima and its durations and lateness as arrays; each group's percentiles
come from its own arrays and each job's from its schedules' (no sort of the
whole window); the streaks are gaps and islands over the window's *bad*
runs only (the ``run_failed`` partial index): two bad runs are in one streak
unless a success lies between them, which one index probe answers
(``one_run_per_slot`` per schedule, the slot index per job), so their cost
follows the bad runs, not the window. Memory: the arrays hold 8 bytes per
run of the window (8 MB at 1,000,000). SQLite (no ``percentile_cont``, no
arrays): the same streak SQL, and exact ``percentile_cont`` computed with
``row_number()`` per group, one statement per grouping; the same figures.
Measured at 1,000,000 runs by ``bench/run_summary.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from jobs.models import RunStatus
from jobs.reports import BAD_STATUSES
from jobs.sendonly import names
from reports.framework import Window, report

STATUS_COLUMNS = [status.value for status in RunStatus]
COLUMNS = [
    "scope",
    "job",
    "schedule_id",
    "schedule",
    "runs",
    *STATUS_COLUMNS,
    "success_rate",
    "p50_duration_ms",
    "p95_duration_ms",
    "max_duration_ms",
    "p95_lateness_ms",
    "max_lateness_ms",
    "longest_failure_streak",
]
# Settings of the report's own transaction (PostgreSQL), each measured at 1,000,000 runs
# (bench/run_summary.py):
# - work_mem: the grouping sorts the window's runs, and percentile_cont sorts each
#   group's values, in memory up to work_mem; at the default (4 MB) a 30-day window
#   spills to disk;
# - jit off: compiling this statement cost 0.7 s, more than running most of it;
# - no bitmap scans: with the slots of its probe unknown when planning, the planner
#   prices a bitmap AND of run_by_job and the schedule index (0.12 ms a probe) a hair
#   below one_run_per_slot, which answers in 0.006 ms.
SESSION_SETTINGS = {"work_mem": "128MB", "jit": "off", "enable_bitmapscan": "off"}

_BAD_SQL = ", ".join(f"'{status}'" for status in BAD_STATUSES)
_STATUS_COUNTS = ",\n".join(
    f"count(*) FILTER (WHERE r.status = '{status}') AS {status}" for status in STATUS_COLUMNS
)

# Gaps and islands over the window's bad runs. Each bad run looks back at the
# previous bad run of its job (and of its schedule); it starts a new streak
# (a break) when there is none or when a success lies between the two, found by
# one index probe. A running sum of the breaks numbers the streaks; the longest
# is the largest count of one number. Portable: PostgreSQL and SQLite.
_STREAKS_SQL = f"""
bad AS (
    SELECT r.id, r.job, r.schedule_id, r.scheduled_for,
           lag(r.scheduled_for) OVER by_job AS job_prev_at, lag(r.id) OVER by_job AS job_prev_id,
           lag(r.scheduled_for) OVER by_schedule AS schedule_prev_at,
           lag(r.id) OVER by_schedule AS schedule_prev_id
    FROM jobs_jobrun r
    WHERE r.status IN ({_BAD_SQL})
      AND r.scheduled_for >= %(window_start)s AND r.scheduled_for < %(window_end)s
    WINDOW by_job AS (PARTITION BY r.job ORDER BY r.scheduled_for, r.id),
           by_schedule AS (PARTITION BY r.job, r.schedule_id ORDER BY r.scheduled_for, r.id)
),
breaks AS (
    SELECT b.id, b.job, b.schedule_id, b.scheduled_for,
           CASE WHEN b.job_prev_at IS NULL OR EXISTS (
               SELECT 1 FROM jobs_jobrun s
               WHERE s.job = b.job AND s.status = 'succeeded'
                 AND s.scheduled_for >= b.job_prev_at AND s.scheduled_for <= b.scheduled_for
                 AND (s.scheduled_for, s.id) > (b.job_prev_at, b.job_prev_id)
                 AND (s.scheduled_for, s.id) < (b.scheduled_for, b.id)
           ) THEN 1 ELSE 0 END AS job_break,
           CASE WHEN b.schedule_id IS NULL THEN 0
                WHEN b.schedule_prev_at IS NULL OR EXISTS (
               SELECT 1 FROM jobs_jobrun s
               WHERE s.schedule_id = b.schedule_id
                 AND s.scheduled_for > b.schedule_prev_at AND s.scheduled_for < b.scheduled_for
                 AND s.status = 'succeeded' AND s.job = b.job
           ) THEN 1 ELSE 0 END AS schedule_break
    FROM bad b
),
islands AS (
    SELECT job, schedule_id,
           sum(job_break) OVER (PARTITION BY job ORDER BY scheduled_for, id) AS job_island,
           sum(schedule_break) OVER (PARTITION BY job, schedule_id ORDER BY scheduled_for, id)
               AS schedule_island
    FROM breaks
),
streaks AS (
    SELECT job, 0 AS schedule_key, 1 AS per_job, max(n) AS streak
    FROM (SELECT job, count(*) AS n FROM islands GROUP BY job, job_island) j
    GROUP BY job
    UNION ALL
    SELECT job, schedule_id, 0, max(n)
    FROM (SELECT job, schedule_id, count(*) AS n FROM islands WHERE schedule_id IS NOT NULL
          GROUP BY job, schedule_id, schedule_island) s
    GROUP BY job, schedule_id
)"""  # noqa: S608 (constant text: status names; the window is a parameter)

_STATUS_SUMS = ", ".join(f"sum(g.{status})::bigint AS {status}" for status in STATUS_COLUMNS)
_G_STATUSES = ", ".join(f"g.{status}" for status in STATUS_COLUMNS)

# Counts, maxima and each group's values (as arrays) in one hashed pass over the
# window; then each group's percentiles from its own array (small sorts), and each
# job's from its schedules' arrays. No sort of the whole window: a sorted
# GROUP BY with percentile_cont took 2.7-3.2 s at 1,000,000 runs, this 1.2 s.
_POSTGRESQL_SQL = f"""
WITH groups AS MATERIALIZED (
    SELECT r.job, r.schedule_id, count(*) AS runs,
           {_STATUS_COUNTS},
           max(r.duration_ms) AS max_duration, max(r.lateness_ms) AS max_lateness,
           array_agg(r.duration_ms) FILTER (WHERE r.duration_ms IS NOT NULL) AS durations,
           array_agg(r.lateness_ms) FILTER (WHERE r.lateness_ms IS NOT NULL) AS latenesses
    FROM jobs_jobrun r
    WHERE r.scheduled_for >= %(window_start)s AND r.scheduled_for < %(window_end)s
    GROUP BY r.job, r.schedule_id
),
figures AS (
    SELECT 0 AS per_job, g.job, g.schedule_id, g.runs, {_G_STATUSES},
           (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY v) FROM unnest(g.durations) v)
               AS duration_pcts,
           g.max_duration,
           (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) FROM unnest(g.latenesses) v)
               AS p95_lateness,
           g.max_lateness
    FROM groups g
    WHERE g.schedule_id IS NOT NULL
    UNION ALL
    SELECT 1, j.job, NULL, j.runs, {", ".join(f"j.{status}" for status in STATUS_COLUMNS)},
           (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY v)
            FROM groups g CROSS JOIN unnest(g.durations) v WHERE g.job = j.job),
           j.max_duration,
           (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v)
            FROM groups g CROSS JOIN unnest(g.latenesses) v WHERE g.job = j.job),
           j.max_lateness
    FROM (
        SELECT g.job, sum(g.runs)::bigint AS runs, {_STATUS_SUMS},
               max(g.max_duration) AS max_duration, max(g.max_lateness) AS max_lateness
        FROM groups g GROUP BY g.job
    ) j
),
{_STREAKS_SQL}
SELECT f.per_job, f.job, f.schedule_id, t.name, f.runs,
       {", ".join(f"f.{status}" for status in STATUS_COLUMNS)},
       f.duration_pcts[1], f.duration_pcts[2], f.max_duration, f.p95_lateness, f.max_lateness,
       coalesce(st.streak, 0)
FROM figures f
LEFT JOIN streaks st
       ON st.job = f.job AND st.per_job = f.per_job AND st.schedule_key = coalesce(f.schedule_id, 0)
LEFT JOIN django_celery_beat_periodictask t ON t.id = f.schedule_id
ORDER BY f.job, f.per_job DESC, t.name, f.schedule_id
"""  # noqa: S608 (constant text: status names; the window is a parameter)


def _sqlite_percentile(fraction: float) -> str:
    """``percentile_cont(fraction)`` of ``v`` over a group ranked ``rn`` of ``n`` (PostgreSQL's formula).

    The value at 0-based position ``(n - 1) × fraction``, interpolated between
    the ranks below and above it. CAST truncates, which is floor here (positive).
    """
    pos = f"((n - 1) * {fraction})"
    low = f"max(CASE WHEN rn = CAST({pos} AS INTEGER) + 1 THEN v END)"
    high = f"max(CASE WHEN rn = CAST({pos} AS INTEGER) + 2 THEN v END)"
    part = f"max({pos} - CAST({pos} AS INTEGER))"
    return f"({low} + {part} * (coalesce({high}, {low}) - {low}))"


def _sqlite_sql(per_job: bool) -> str:
    """One grouping (per job, or per job and schedule) on SQLite, streaks included."""
    group = "job" if per_job else "job, schedule_id"
    key = "0" if per_job else "schedule_id"
    joined = " AND ".join(f"{{g}}.{column} = f.{column}" for column in group.split(", "))

    def ranked(column: str) -> str:
        return f"""SELECT {group}, {column} AS v,
                   row_number() OVER (PARTITION BY {group} ORDER BY {column}) AS rn,
                   count(*) OVER (PARTITION BY {group}) AS n
            FROM runs WHERE {column} IS NOT NULL"""  # noqa: S608 (column names of ours)

    counts = ",\n".join(f"sum(status = '{status}') AS {status}" for status in STATUS_COLUMNS)
    return f"""
WITH runs AS (
    SELECT job, schedule_id, status, duration_ms, lateness_ms FROM jobs_jobrun
    WHERE scheduled_for >= %(window_start)s AND scheduled_for < %(window_end)s
),
figures AS (
    SELECT {group}, count(*) AS runs, {counts},
           max(duration_ms) AS max_duration, max(lateness_ms) AS max_lateness
    FROM runs {"" if per_job else "WHERE schedule_id IS NOT NULL"} GROUP BY {group}
),
durations AS (
    SELECT {group}, {_sqlite_percentile(0.5)} AS p50, {_sqlite_percentile(0.95)} AS p95
    FROM ({ranked("duration_ms")}) GROUP BY {group}
),
lateness AS (
    SELECT {group}, {_sqlite_percentile(0.95)} AS p95 FROM ({ranked("lateness_ms")}) GROUP BY {group}
),
{_STREAKS_SQL}
SELECT {1 if per_job else 0}, f.job, {"NULL" if per_job else "f.schedule_id"},
       {"NULL" if per_job else "t.name"}, f.runs,
       {", ".join(f"f.{status}" for status in STATUS_COLUMNS)},
       d.p50, d.p95, f.max_duration, l.p95, f.max_lateness, coalesce(st.streak, 0)
FROM figures f
LEFT JOIN durations d ON {joined.format(g="d")}
LEFT JOIN lateness l ON {joined.format(g="l")}
LEFT JOIN streaks st ON st.job = f.job AND st.per_job = {1 if per_job else 0}
                    AND st.schedule_key = {"0" if per_job else "f." + key}
{"" if per_job else "LEFT JOIN django_celery_beat_periodictask t ON t.id = f.schedule_id"}
"""  # noqa: S608 (constant text of ours; the window is a parameter)


def statements(window_start: datetime, window_end: datetime) -> list[tuple[str, dict[str, Any]]]:
    """The SQL the report runs on this connection's database, and its parameters (the bench explains them)."""
    params = {
        "window_start": connection.ops.adapt_datetimefield_value(window_start),
        "window_end": connection.ops.adapt_datetimefield_value(window_end),
    }
    if connection.vendor == "postgresql":
        return [(_POSTGRESQL_SQL, params)]
    return [(_sqlite_sql(per_job=True), params), (_sqlite_sql(per_job=False), params)]


def tune_session(cursor) -> None:
    """Apply ``SESSION_SETTINGS`` to the current transaction only (PostgreSQL; nothing elsewhere)."""
    if connection.vendor == "postgresql":
        for name, value in SESSION_SETTINGS.items():
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _row(found: tuple) -> list[Any]:
    """A result row in ``COLUMNS`` order, with the success rate worked out and percentiles rounded."""
    per_job, job, schedule_id, schedule_name, runs, *rest = found
    counts = dict(zip(STATUS_COLUMNS, rest[: len(STATUS_COLUMNS)], strict=True))
    p50, p95, max_duration, p95_lateness, max_lateness, streak = rest[len(STATUS_COLUMNS) :]
    outcomes = counts[RunStatus.SUCCEEDED] + sum(counts[status] for status in BAD_STATUSES)
    rate = round(counts[RunStatus.SUCCEEDED] / outcomes, 4) if outcomes else None
    return [
        "job" if per_job else "schedule",
        job,
        None if per_job else schedule_id,
        "" if per_job else schedule_name,
        runs,
        *(counts[status] for status in STATUS_COLUMNS),
        rate,
        _rounded(p50),
        _rounded(p95),
        max_duration,
        _rounded(p95_lateness),
        max_lateness,
        streak,
    ]


def _sort_key(row: list[Any]) -> tuple:
    return (row[1], row[0] != "job", row[3], row[2] or 0)


def run_summary_rows(window_start: datetime, window_end: datetime) -> Iterator[list[Any]]:
    """The summary's rows (``COLUMNS``) over ``[window_start, window_end)``: each job, then its schedules.

    An empty window gives no rows. ``ValueError`` when the window ends
    before it starts (an empty window is allowed: it has no runs).
    """
    if window_end < window_start:
        raise ValueError(
            f"the window ends ({window_end.isoformat()}) before it starts ({window_start.isoformat()})"
        )
    found: list[list[Any]] = []
    with transaction.atomic(), connection.cursor() as cursor:
        tune_session(cursor)
        for sql, params in statements(window_start, window_end):
            cursor.execute(sql, params)
            found.extend(_row(row) for row in cursor.fetchall())
    if connection.vendor != "postgresql":
        found.sort(key=_sort_key)  # two statements there; PostgreSQL's one already orders them
    yield from found


@report(
    names.REPORTS_RUN_SUMMARY,
    columns=COLUMNS,
    chunk_size=None,
    formats=["csv", "html", "json"],
    title="Run summary / SLA",
    queue="reports",
    soft_time_limit=240,
    hard_time_limit=300,
)
def run_summary(window: Window) -> Iterator[list[Any]]:
    """Per job and per schedule: runs by status, success rate, duration, lateness, longest failure streak.

    Over the window (default: the last 24 hours): runs by status (missed and
    skipped slots among them), success rate, p50/p95/max duration, p95/max
    lateness and the longest failure streak. Computed by the database.
    """
    return run_summary_rows(window.start, window.end)
