"""Admin page times and query counts at 100,000 schedules and 1,000,000 runs, ours beside the stock admin.

    .venv/bin/python bench/admin_pages.py                          # ~4 min (seeding is most of it)
    .venv/bin/python bench/admin_pages.py --schedules 10000 --runs 100000
    .venv/bin/python bench/admin_pages.py --append                 # add the section to bench/results.md

Database ``bench_admin_pages`` (``--db``; created, migrated, dropped unless
``--keep-db``; ``--seed-only`` then ``--reuse-db`` measure one seeding many
times): ``bench/seed.py``'s schedules and ``--runs`` finished runs over the
last 7 days (0.2 % failed), ``--runs`` / 500 running ones in the last 5
minutes, 1 % of the schedules paused (half of them until tomorrow), 0.1 %
with a problem, analysed.

Each page is rendered in this process by its ``ModelAdmin`` view (a
``RequestFactory`` request from a superuser, the template rendered), so the
time is the server's: queries and rendering, no network. Median of
``--repeats`` after one warm-up, with the statements counted.

"stock" is what the platform had before: django-celery-beat's
``PeriodicTaskAdmin`` as it ships, and the run list with the related-field
schedule filter, the job filter read from the runs, a date hierarchy and a
full count. The stock run list is measured only up to 10,000 schedules: its
schedule filter renders every schedule (one query each), minutes at 100,000.
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
)

DB = "bench_admin_pages"
STOCK_RUN_LIST_MAX_SCHEDULES = 10_000


def seed(schedules: int, runs: int) -> int:
    from django.db import connection
    from seed import insert_runs, seed_schedules_and_a_week_of_runs

    now = seed_schedules_and_a_week_of_runs(schedules, runs)
    # What the list's filters look for, in the shares a large platform might have:
    # runs still going, paused schedules (some with an end time) and problems.
    insert_runs(max(1, runs // 500), now - timedelta(minutes=5), now, schedules, status="running")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE scheduler_schedulepolicy SET paused_at = %s, pause_note = 'bench: paused', "
            "paused_until = CASE WHEN task_id %% 2 = 0 THEN %s::timestamptz END WHERE task_id %% 100 = 7",
            [now - timedelta(hours=1), now + timedelta(days=1)],
        )
        cursor.execute(
            "UPDATE scheduler_schedulepolicy SET problem = 'bench: no live worker serves queue bench_idle' "
            "WHERE task_id % 1000 = 3"
        )
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        return cursor.fetchone()[0]


def stock_admins():
    """The admins the platform had before, on a site of their own."""
    from django.contrib import admin
    from django.core.paginator import Paginator
    from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
    from django_celery_beat.models import PeriodicTask

    from jobs.admin import JobRunAdmin
    from jobs.models import JobRun

    class StockRunAdmin(JobRunAdmin):
        list_filter = ("status", "job", "schedule", "scheduled_for")
        date_hierarchy = "scheduled_for"
        paginator = Paginator

    site = admin.AdminSite(name="stock")
    return BeatPeriodicTaskAdmin(PeriodicTask, site), StockRunAdmin(JobRun, site)


def render(model_admin, path: str, query: dict, user, object_id: str | None = None) -> tuple[float, int]:
    """Seconds and statements to build and render one admin page."""
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    request = RequestFactory().get(path, query)
    request.user = user
    request.session = {}
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        if object_id is None:
            response = model_admin.changelist_view(request)
        else:
            response = model_admin.change_view(request, object_id)
        response.render()
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (path, query, response.status_code)
    return elapsed, len(queries)


def measure(pages: list[tuple[str, object, str, dict, str | None]], user, repeats: int) -> list[dict]:
    rows = []
    for label, model_admin, path, query, object_id in pages:
        render(model_admin, path, query, user, object_id)  # warm-up
        times, counts = [], []
        for _ in range(repeats):
            seconds, queries = render(model_admin, path, query, user, object_id)
            times.append(seconds * 1000)
            counts.append(queries)
        rows.append({"page": label, "ms": statistics.median(times), "queries": max(counts)})
        print(f"{label}: {statistics.median(times):.1f} ms, {max(counts)} queries", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--db", default=DB, help=f"the PostgreSQL database (default {DB})")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="measure what a previous --keep-db run seeded at these sizes (migrated again, not re-seeded)",
    )
    parser.add_argument(
        "--seed-only", action="store_true", help="seed and keep the database, measure nothing"
    )
    options = parser.parse_args()
    if options.seed_only:
        options.keep_db = True
    started = time.monotonic()
    reuse = open_bench_database(options.db, reuse=options.reuse_db)
    from django.conf import settings
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django_celery_beat.models import PeriodicTask

    from jobs.models import JobRun

    settings.ALLOWED_HOSTS.append("testserver")
    try:
        runs = seeded_runs(options.schedules) if reuse else seed(options.schedules, options.runs)
        if options.seed_only:
            print(f"seeded {options.schedules:,} schedules and {runs:,} runs in {options.db}")
            return 0
        user = get_user_model().objects.filter(username="bench").first()
        user = user or get_user_model().objects.create_superuser("bench", "bench@example.com", "unused")
        schedule_id = str(
            PeriodicTask.objects.order_by("id").values_list("id", flat=True)[options.schedules // 2]
        )
        run_id = str(JobRun.objects.filter(schedule_id=schedule_id).values_list("pk", flat=True).first())
        ours_schedules, ours_runs = admin.site._registry[PeriodicTask], admin.site._registry[JobRun]
        stock_schedules, stock_runs = stock_admins()
        schedules_url, runs_url = "/admin/django_celery_beat/periodictask/", "/admin/jobs/jobrun/"
        schedule_url = f"{schedules_url}{schedule_id}/change/"
        pages = [
            ("schedule list", ours_schedules, schedules_url, {}, None),
            ("schedule list, stock", stock_schedules, schedules_url, {}, None),
            ("schedule list filtered by job", ours_schedules, schedules_url, {"job": "heartbeat"}, None),
            (
                "schedule list filtered by job, stock",
                stock_schedules,
                schedules_url,
                {"task": "heartbeat"},
                None,
            ),
            ("schedule list, last run failed", ours_schedules, schedules_url, {"last_run": "failed"}, None),
            (
                "schedule list, last run succeeded",
                ours_schedules,
                schedules_url,
                {"last_run": "succeeded"},
                None,
            ),
            ("schedule list, last run running", ours_schedules, schedules_url, {"last_run": "running"}, None),
            (
                "schedule list, last run lost (none)",
                ours_schedules,
                schedules_url,
                {"last_run": "lost"},
                None,
            ),
            ("schedule list, paused", ours_schedules, schedules_url, {"paused": "yes"}, None),
            ("schedule list, with a problem", ours_schedules, schedules_url, {"problem": "yes"}, None),
            ("schedule list, search", ours_schedules, schedules_url, {"q": "heartbeat"}, None),
            ("schedule page (with its last 20 runs)", ours_schedules, schedule_url, {}, schedule_id),
            ("schedule page, stock", stock_schedules, schedule_url, {}, schedule_id),
            ("run list", ours_runs, runs_url, {}, None),
            ("run list, failed", ours_runs, runs_url, {"status__exact": "failed"}, None),
            ("run list, one schedule", ours_runs, runs_url, {"schedule": schedule_id}, None),
            ("run page", ours_runs, f"{runs_url}{run_id}/change/", {}, run_id),
        ]
        if options.schedules <= STOCK_RUN_LIST_MAX_SCHEDULES:
            pages += [
                ("run list, stock", stock_runs, runs_url, {}, None),
                ("run list, failed, stock", stock_runs, runs_url, {"status__exact": "failed"}, None),
            ]
        rows = measure(pages, user, options.repeats)
    finally:
        close_bench_database(options.db, options.keep_db)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## Admin pages at {options.schedules:,} schedules and {runs:,} runs ({when})",
        "",
        "`bench/admin_pages.py`: each page built and rendered by its admin view in-process (server time, "
        f"no network), median of {options.repeats} after a warm-up; PostgreSQL. "
        '"stock": django-celery-beat\'s admin as it ships, and the run list as it was (schedule and '
        "job filters over the tables, a date hierarchy, a full count).",
        "",
        "| page | server time | queries |",
        "|---|---:|---:|",
        *[f"| {row['page']} | {fmt(row['ms'])} ms | {row['queries']} |" for row in rows],
        "",
    ]
    if options.schedules > STOCK_RUN_LIST_MAX_SCHEDULES:
        lines.append(
            "- the stock run list is not measured at this size: its schedule filter renders every schedule, "
            "one query each."
        )
    lines += [f"- measured in {time.monotonic() - started:.0f} s; load average at the end: {load}", ""]
    text = "\n".join(lines)
    print(text)
    if options.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
