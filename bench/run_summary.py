"""The run summary / SLA report at 1,000,000 runs: 500 schedules over 30 days, PostgreSQL.

    .venv/bin/python bench/run_summary.py                 # seed (~1 min), measure, print the plans, drop
    .venv/bin/python bench/run_summary.py --seed-only     # then --reuse-db to measure again
    .venv/bin/python bench/run_summary.py --reuse-db --no-explain  # the figures only

Database ``bench_run_summary`` (``--db``; created, migrated, dropped unless
``--keep-db``), Redis database 6 (unused by the report; Django's settings want
one). Schedules come from ``bench/seed.py`` (half crontab, half interval); their
job is spread over 25 job names. Runs: each schedule has a slot every 30 days /
(runs / schedules) (21.6 min at 1,000,000 runs / 500 schedules), phased at
random, inserted in slot order (as beat writes them). Endings: 97.1 % succeeded,
1 % failed, 0.2 % soft timeout, 0.1 % hard timeout, 0.1 % lost, 1 % missed,
0.5 % skipped; 5 schedules (1 %) are broken (90 % failed) so failure streaks are
long: about 23,000 bad runs in all (the streaks' cost grows with them).
Durations up to a minute and lateness up to 5 s, skewed (product of two
uniform draws). The table is analysed after seeding.

Measured: ``reports.builtin.run_summary.run_summary_rows`` over the last 30
days and over the last 24 hours, each the median of ``--repeats`` after one
warm-up, wall time in this process (statements plus reading the result rows);
then EXPLAIN (ANALYZE, BUFFERS) of each statement, in the report's own
transaction settings (``run_summary.tune_session``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.common import close_bench_database, fmt, open_bench_database, seeded_runs, short_sql  # noqa: E402

DB = "bench_run_summary"
REDIS_DB = 6
TARGET_S = 2.0
JOBS = 25
BROKEN_SCHEDULES = 5

# One row per (schedule, slot k): slots every ``step`` seconds from a random phase,
# the newest ending at ``now``. Status drawn once per row; missed and skipped runs
# never started (no start, end, duration or lateness), as beat records them.
INSERT_RUNS = """
INSERT INTO jobs_jobrun (
    id, schedule_id, schedule_name, origin, requested_by, job, args, kwargs, queue,
    scheduled_for, enqueued_at, started_at, finished_at, status, attempt, worker,
    error_type, error_message, traceback, lateness_ms, duration_ms, sentry_event_id,
    progress_message, waiting_for, created_at
)
SELECT gen_random_uuid(), r.id, r.name, 'beat', '', r.task, '[]', '{}', 'bench_idle',
       r.slot, r.slot, r.started, r.started + r.duration * interval '1 millisecond', r.status, 1,
       'bench-worker@127.0.0.1', '', '', '', r.lateness, r.duration, '', '', '', r.slot
FROM (
    SELECT t.id, t.name, t.task, s.slot, s.status,
           CASE WHEN s.started THEN (random() * random() * 5000)::int END AS lateness,
           CASE WHEN s.started THEN (random() * random() * 60000)::int END AS duration,
           CASE WHEN s.started THEN s.slot + interval '1 second' END AS started
    FROM django_celery_beat_periodictask t
    CROSS JOIN LATERAL (SELECT random() * %(step)s + t.id * 0 AS phase) p
    CROSS JOIN LATERAL (
        SELECT %(now)s::timestamptz - (k * %(step)s + p.phase) * interval '1 second' AS slot,
               st.status, st.status NOT IN ('missed', 'skipped') AS started
        FROM generate_series(0, %(per_schedule)s - 1) k
        CROSS JOIN LATERAL (
            SELECT CASE
                WHEN t.id %% 100 = 0 AND t.id <= %(broken)s * 100 THEN
                    CASE WHEN u < 0.9 THEN 'failed' ELSE 'succeeded' END
                WHEN u < 0.971 THEN 'succeeded'
                WHEN u < 0.981 THEN 'failed'
                WHEN u < 0.983 THEN 'soft_timeout'
                WHEN u < 0.984 THEN 'hard_timeout'
                WHEN u < 0.985 THEN 'lost'
                WHEN u < 0.995 THEN 'missed'
                ELSE 'skipped' END AS status
            FROM (SELECT random() + k * 0 AS u) d
        ) st
    ) s
) r
ORDER BY r.slot
"""


def seed(schedules: int, runs: int, days: int) -> tuple[int, datetime]:
    """``schedules`` from ``bench/seed.py`` and ``runs`` runs over ``days`` days before now."""
    from django.db import connection
    from seed import seed as seed_schedules

    now = datetime.now(UTC).replace(microsecond=0)
    seed_schedules(schedules, now, quiet_window=timedelta(minutes=40))
    per_schedule = runs // schedules
    step = days * 86400 / per_schedule
    with connection.cursor() as cursor:
        cursor.execute("UPDATE django_celery_beat_periodictask SET task = 'bench.job-' || (id %% %s)", [JOBS])
        cursor.execute(
            INSERT_RUNS,
            {"now": now, "step": step, "per_schedule": per_schedule, "broken": BROKEN_SCHEDULES},
        )
        cursor.execute("VACUUM ANALYZE jobs_jobrun")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        return cursor.fetchone()[0], now


def newest_slot() -> datetime:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT max(scheduled_for) FROM jobs_jobrun")
        return cursor.fetchone()[0]


def measure(window_start: datetime, window_end: datetime, repeats: int) -> tuple[list[float], int, list]:
    """Seconds per report (warm-up first), the rows it gave, the statements of the last one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from reports.builtin.run_summary import run_summary_rows

    list(run_summary_rows(window_start, window_end))  # warm-up
    times, rows, statements = [], 0, []
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            rows = len(list(run_summary_rows(window_start, window_end)))
            times.append(time.perf_counter() - started)
        statements = list(queries.captured_queries)
    return times, rows, statements


def explain(window_start: datetime, window_end: datetime) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement of the report, in the report's own session settings."""
    from django.db import connection, transaction

    from reports.builtin import run_summary

    plans = []
    with transaction.atomic(), connection.cursor() as cursor:
        run_summary.tune_session(cursor)
        for sql, params in run_summary.statements(window_start, window_end):
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plans.append(sql.strip() + "\n" + "\n".join(row[0] for row in cursor.fetchall()))
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", default=DB, help=f"the PostgreSQL database (default {DB})")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--reuse-db", action="store_true", help="measure a database seeded before")
    parser.add_argument("--seed-only", action="store_true", help="seed and keep the database")
    parser.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="skip EXPLAIN (ANALYZE, BUFFERS) of each statement",
    )
    options = parser.parse_args()
    if options.seed_only or options.reuse_db:
        options.keep_db = True
    started = time.monotonic()
    reuse = open_bench_database(options.db, REDIS_DB, reuse=options.reuse_db)
    results = []
    plans: list[tuple[str, list[str]]] = []
    try:
        if reuse:
            runs, now = seeded_runs(options.schedules), newest_slot()
        else:
            runs, now = seed(options.schedules, options.runs, options.days)
        if options.seed_only:
            print(f"seeded {options.schedules:,} schedules and {runs:,} runs in {options.db}")
            return 0
        end = now + timedelta(seconds=1)
        for label, length in (
            (f"{options.days} days", timedelta(days=options.days)),
            ("24 h", timedelta(hours=24)),
        ):
            times, rows, statements = measure(end - length, end, options.repeats)
            results.append((label, times, rows, statements))
            if options.explain:
                plans.append((label, explain(end - length, end)))
    finally:
        close_bench_database(options.db, options.keep_db)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Run summary at {options.schedules:,} schedules and {runs:,} runs ({when})",
        "",
        "`bench/run_summary.py`: `reports.builtin.run_summary.run_summary_rows` (per job and per schedule: "
        "runs by status, success rate, p50/p95/max duration, p95/max lateness, longest failure streak), "
        f"in-process wall time, median of {options.repeats} after a warm-up; PostgreSQL. "
        f"Target ≤ {TARGET_S} s." + (" (Database seeded by an earlier run, --reuse-db.)" if reuse else ""),
        "",
        "| window | median | min – max | result rows | statements |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, times, rows, statements in results:
        lines.append(
            f"| {label} | {fmt(statistics.median(times) * 1000)} ms | {fmt(min(times) * 1000)} – "
            f"{fmt(max(times) * 1000)} ms | {rows} | {len(statements)} |"
        )
    for label, _, _, statements in results:
        lines += ["", f"Statements ({label}):", ""]
        lines += [f"- {float(s['time']) * 1000:.1f} ms: `{short_sql(s['sql'])}`" for s in statements]
    lines += ["", f"- measured in {time.monotonic() - started:.0f} s; load average at the end: {load}", ""]
    print("\n".join(lines))
    for label, statement_plans in plans:
        for plan in statement_plans:
            print(f"\n-- plan ({label})\n{plan}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
