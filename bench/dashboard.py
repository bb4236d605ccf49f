"""The admin dashboard's server time and query count at 100,000 schedules and 1,000,000 runs.

    .venv/bin/python bench/dashboard.py                            # seeding is most of it (~4 min)
    .venv/bin/python bench/dashboard.py --schedules 10000 --runs 100000
    .venv/bin/python bench/dashboard.py --seed-only                # then --reuse-db to measure again
    .venv/bin/python bench/dashboard.py --reuse-db --explain       # print each statement's plan
    .venv/bin/python bench/dashboard.py --reuse-db --append        # add the section to bench/results.md

Database ``h4_bench`` (``--db``; created, migrated, dropped unless
``--keep-db``), Redis database 7 (read only: the dashboard asks the broker
for queue lengths). Seeded with ``bench/seed.py``: its schedules, ``--runs``
finished runs over the last 7 days (0.2 % ending badly: failed, and a
third of those turned into timeouts or lost), ``--runs`` / 500 running and
as many queued in the last 5 minutes, 1 % of the schedules paused (half until
tomorrow), a beat leader publishing its status; clustered on ``run_history``
(slot order, as beat inserts runs; ``--random-heap`` skips that), analysed.

The page is rendered in this process by its view (a ``RequestFactory``
request from a superuser, the template rendered), so the time is the
server's: queries, the broker's queue lengths, the charts and the template;
no network. Median of ``--repeats`` after one warm-up.
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

from bench.common import (  # noqa: E402
    append_results,
    close_bench_database,
    fmt,
    open_bench_database,
    seeded_runs,
    short_sql,
)

DB = "h4_bench"
REDIS_DB = 7
TARGET_MS = 300


def seed(schedules: int, runs: int, random_heap: bool = False) -> int:
    from django.db import connection
    from seed import insert_runs, seed_schedules_and_a_week_of_runs

    from scheduler.models import BeatLease

    now = seed_schedules_and_a_week_of_runs(schedules, runs)
    for status in ("running", "queued"):
        insert_runs(max(1, runs // 500), now - timedelta(minutes=5), now, schedules, status=status)
    with connection.cursor() as cursor:
        # Every bad ending the dashboard lists, not only "failed".
        cursor.execute(
            "UPDATE jobs_jobrun SET status = (ARRAY['soft_timeout', 'hard_timeout', 'lost'])"
            "[1 + floor(random() * 3)::int] WHERE status = 'failed' AND random() < 0.33"
        )
        cursor.execute(
            "UPDATE scheduler_schedulepolicy SET paused_at = %s, pause_note = 'bench: paused', "
            "paused_until = CASE WHEN task_id %% 2 = 0 THEN %s::timestamptz END WHERE task_id %% 100 = 7",
            [now - timedelta(hours=1), now + timedelta(days=1)],
        )
    BeatLease.objects.update_or_create(
        name="beat",
        defaults={
            "holder": "bench-beat:1",
            "token": 1,
            # A leader for a day: the page shows it alive whenever it is measured.
            "expires_at": now + timedelta(days=1),
            "renewed_at": now,
            "status": {
                "schedules": schedules,
                "next_due": [
                    {
                        "slot": (now + timedelta(minutes=41 + i)).isoformat(),
                        "schedule": f"bench-cron-{i}",
                        "job": "heartbeat",
                    }
                    for i in range(10)
                ],
            },
        },
    )
    with connection.cursor() as cursor:
        if not random_heap:
            # Beat inserts runs as their slots come, so a real table's rows lie in slot
            # order; insert_runs draws slots at random. CLUSTER puts them back in order
            # (--random-heap keeps the worst case: every day's runs on every page).
            cursor.execute("CLUSTER jobs_jobrun USING run_history")
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        return cursor.fetchone()[0]


def render(user) -> tuple[float, list[dict]]:
    """Seconds to build and render the dashboard, and the statements it ran."""
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from scheduler.dashboard import dashboard_view

    request = RequestFactory().get("/admin/dashboard/")
    request.user = user
    request.session = {}
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        response = dashboard_view(request)
        response.render()
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.status_code
    return elapsed, list(queries.captured_queries)


def explain(statements: list[dict]) -> None:
    """Each statement's plan, with its real time (EXPLAIN ANALYZE: they only read)."""
    from django.db import connection

    for statement in statements:
        sql = statement["sql"]
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        print(f"\n-- {statement['time']} s\n{sql}\n{plan}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--db", default=DB, help=f"the PostgreSQL database (default {DB})")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--reuse-db", action="store_true", help="measure a database seeded before")
    parser.add_argument("--seed-only", action="store_true", help="seed and keep the database")
    parser.add_argument("--explain", action="store_true", help="print each statement's plan")
    parser.add_argument(
        "--random-heap",
        action="store_true",
        help="leave the runs in random slot order on disk (the worst case) instead of clustering them",
    )
    options = parser.parse_args()
    if options.seed_only or options.reuse_db:
        options.keep_db = True
    started = time.monotonic()
    reuse = open_bench_database(options.db, REDIS_DB, reuse=options.reuse_db)
    from django.conf import settings
    from django.contrib.auth import get_user_model

    settings.ALLOWED_HOSTS.append("testserver")
    try:
        runs = (
            seeded_runs(options.schedules)
            if reuse
            else seed(options.schedules, options.runs, options.random_heap)
        )
        if options.seed_only:
            print(f"seeded {options.schedules:,} schedules and {runs:,} runs in {options.db}")
            return 0
        user = get_user_model().objects.filter(username="bench").first()
        user = user or get_user_model().objects.create_superuser("bench", "bench@example.com", "unused")
        render(user)  # warm-up
        times, counts, slowest = [], [], []
        for _ in range(options.repeats):
            seconds, statements = render(user)
            times.append(seconds * 1000)
            counts.append(len(statements))
            slowest = statements
        if options.explain:
            explain(slowest)
    finally:
        close_bench_database(options.db, options.keep_db)
    median = statistics.median(times)
    by_time = sorted(slowest, key=lambda s: float(s["time"]), reverse=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## Dashboard at {options.schedules:,} schedules and {runs:,} runs ({when})",
        "",
        "`bench/dashboard.py`: the admin dashboard (`scheduler/dashboard.py`) built and rendered by its view "
        f"in-process (server time, no network: queries, broker queue lengths, SVG charts, template), "
        f"median of {options.repeats} after a warm-up; PostgreSQL, Redis. Target ≤ {TARGET_MS} ms. "
        + (
            "Runs left in random slot order on disk (--random-heap: the worst case)."
            if options.random_heap
            else "Runs in slot order on disk, as beat writes them (CLUSTER after seeding)."
        )
        + (" (Database seeded by an earlier run, --reuse-db.)" if reuse else ""),
        "",
        "| page | server time (median) | min – max | queries |",
        "|---|---:|---:|---:|",
        f"| dashboard | {fmt(median)} ms | {fmt(min(times))} – {fmt(max(times))} ms | {max(counts)} |",
        "",
        "Slowest statements of the last render:",
        "",
        *[f"- {float(s['time']) * 1000:.1f} ms: `{short_sql(s['sql'])}`" for s in by_time[:5]],
        "",
        f"- measured in {time.monotonic() - started:.0f} s; load average at the end: {load}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if options.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
