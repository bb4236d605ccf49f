"""Admin page times and query counts at 100,000 schedules and 1,000,000 runs, ours beside the stock admin.

    .venv/bin/python bench/admin_pages.py                          # ~4 min (seeding is most of it)
    .venv/bin/python bench/admin_pages.py --schedules 10000 --runs 100000
    .venv/bin/python bench/admin_pages.py --append                 # add the section to bench/results.md

Database ``bench_admin_pages`` (created, migrated, dropped unless
``--keep-db``): ``bench/seed.py``'s schedules and ``--runs`` finished runs
over the last 7 days (0.2 % failed), analysed.

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
    PYTHON,
    append_results,
    bench_env,
    create_database,
    drop_database,
    fmt,
    run_checked,
    setup_django,
)

DB = "bench_admin_pages"
STOCK_RUN_LIST_MAX_SCHEDULES = 10_000


def seed(schedules: int, runs: int) -> int:
    from django.db import connection
    from seed import insert_runs
    from seed import seed as seed_schedules

    now = datetime.now(UTC)
    seed_schedules(schedules, now, quiet_window=timedelta(minutes=40))
    step = 200_000
    for start in range(0, runs, step):
        insert_runs(min(step, runs - start), now - timedelta(days=7), now, schedules, failed_share=0.002)
    with connection.cursor() as cursor:
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
    parser.add_argument("--keep-db", action="store_true")
    options = parser.parse_args()
    started = time.monotonic()
    create_database(DB)
    run_checked([PYTHON, "manage.py", "migrate", "-v0"], bench_env(DB), "migrate", 300)
    setup_django(DB)
    from django.conf import settings
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django_celery_beat.models import PeriodicTask

    from jobs.models import JobRun

    settings.ALLOWED_HOSTS.append("testserver")
    try:
        runs = seed(options.schedules, options.runs)
        user = get_user_model().objects.create_superuser("bench", "bench@example.com", "unused")
        schedule_id = str(
            PeriodicTask.objects.order_by("id").values_list("id", flat=True)[options.schedules // 2]
        )
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
            ("schedule page", ours_schedules, schedule_url, {}, schedule_id),
            ("schedule page, stock", stock_schedules, schedule_url, {}, schedule_id),
            ("run list", ours_runs, runs_url, {}, None),
            ("run list, failed", ours_runs, runs_url, {"status__exact": "failed"}, None),
            ("run list, one schedule", ours_runs, runs_url, {"schedule": schedule_id}, None),
        ]
        if options.schedules <= STOCK_RUN_LIST_MAX_SCHEDULES:
            pages += [
                ("run list, stock", stock_runs, runs_url, {}, None),
                ("run list, failed, stock", stock_runs, runs_url, {"status__exact": "failed"}, None),
            ]
        rows = measure(pages, user, options.repeats)
    finally:
        from django.db import connections

        connections.close_all()
        if not options.keep_db:
            drop_database(DB)
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
