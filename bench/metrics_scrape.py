"""``/metrics`` scrape time (server side) and body size at 100,000 schedules and 1,000,000 runs.

    .venv/bin/python bench/metrics_scrape.py                          # seeding is most of it (~4 min)
    .venv/bin/python bench/metrics_scrape.py --seed-only              # then --reuse-db to measure again
    .venv/bin/python bench/metrics_scrape.py --reuse-db --explain     # print each statement's plan
    .venv/bin/python bench/metrics_scrape.py --reuse-db --append      # add the section to bench/results.md

Database ``hd_bench`` (``--db``; created, migrated, dropped unless
``--keep-db``), Redis database 7 (read only: queue lengths). Seeded exactly as
``bench/dashboard.py`` seeds (its ``seed``: ``bench/seed.py``'s schedules,
finished runs over 7 days, running and queued ones, 1 % paused, a beat
leader), so the two benches read the same data.

Each scrape is the view itself called in this process with the bearer token
(``scheduler.metrics.metrics_view``: every query, the broker's queue lengths,
the exposition), so the time is the server's, no network. Measured with the
per-schedule series on (cold: the cached per-schedule block dropped before
each scrape; warm: served from the cache) and off (``METRICS_PER_SCHEDULE``),
median of ``--repeats`` after one warm-up each; the parts are also timed alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
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
from bench.dashboard import seed  # noqa: E402  (the same data as the dashboard's bench)

DB = "hd_bench"
REDIS_DB = 7
TARGET_MS = 500
TOKEN = "bench-token"


def scrape() -> tuple[float, int, list[dict]]:
    """Seconds for one scrape, the body's bytes, and the statements it ran."""
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from scheduler.metrics import metrics_view

    request = RequestFactory().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        response = metrics_view(request)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.status_code
    return elapsed, len(response.content), list(queries.captured_queries)


def timed(function, repeats: int) -> float:
    """Median milliseconds of ``function()`` after a warm-up."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def explain(statements: list[dict]) -> list[str]:
    """Each SELECT's plan with its real time (EXPLAIN ANALYZE: they only read)."""
    from django.db import connection

    plans = []
    for statement in statements:
        sql = statement["sql"]
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plans.append(f"-- {short_sql(sql, 300)}\n" + "\n".join(row[0] for row in cursor.fetchall()))
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--db", default=DB, help=f"the PostgreSQL database (default {DB})")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--reuse-db", action="store_true", help="measure a database seeded before")
    parser.add_argument("--seed-only", action="store_true", help="seed and keep the database")
    parser.add_argument("--explain", action="store_true", help="print the run scan's plan (and add it)")
    options = parser.parse_args()
    if options.seed_only or options.reuse_db:
        options.keep_db = True
    started = time.monotonic()
    reuse = open_bench_database(options.db, REDIS_DB, reuse=options.reuse_db)
    from django.conf import settings
    from django.utils import timezone

    from jobs import tally
    from jobs.models import JobRun, RunTally
    from scheduler import metrics

    settings.METRICS_TOKEN = TOKEN
    rows: list[tuple[str, float, float, float, int, int]] = []
    plans: list[str] = []
    try:
        runs = seeded_runs(options.schedules) if reuse else seed(options.schedules, options.runs)
        if options.seed_only:
            print(f"seeded {options.schedules:,} schedules and {runs:,} runs in {options.db}")
            return 0
        # The run tally's first advance (once per installation: it tallies every ended run).
        RunTally.objects.all().delete()
        first = time.perf_counter()
        tally.advance()
        first_advance_ms = (time.perf_counter() - first) * 1000
        parts = {
            "next slots (beat's entries)": lambda: metrics.next_schedule_times(timezone.now()),
            "per-schedule block": lambda: list(metrics.schedule_metrics(timezone.now())),
            "run counters + histograms (tally + runs after it)": lambda: list(metrics.run_metrics()),
            "the same counts by a scan of every run (before the tally)": lambda: tally.aggregate(
                JobRun.objects.all()
            ),
        }
        part_ms = {name: timed(part, options.repeats) for name, part in parts.items()}
        part_ms["the tally's first advance (once)"] = first_advance_ms
        cases = (
            ("on, cold (per-schedule block computed)", True, True),
            ("on, after a process's first scrape (kept block, re-rendered in the background)", True, False),
            ("off (METRICS_PER_SCHEDULE=0)", False, False),
        )
        for label, per_schedule, cold in cases:
            settings.METRICS_PER_SCHEDULE = per_schedule
            scrape()  # warm-up
            times, sizes, counts, last = [], [], [], []
            for _ in range(options.repeats):
                if cold:
                    metrics.forget_cached_schedules()
                seconds, size, statements = scrape()
                times.append(seconds * 1000)
                sizes.append(size)
                counts.append(len(statements))
                last = statements
            rows.append((label, statistics.median(times), min(times), max(times), max(sizes), max(counts)))
            if options.explain and not per_schedule:
                plans = explain(last)
    finally:
        close_bench_database(options.db, options.keep_db)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## /metrics scrape at {options.schedules:,} schedules and {runs:,} runs ({when})",
        "",
        "`bench/metrics_scrape.py`: `scheduler.metrics.metrics_view` called in-process with the bearer token "
        f"(server time, no network: queries, the broker's queue lengths, the exposition), median of "
        f"{options.repeats} after a warm-up; PostgreSQL, Redis; seeded as `bench/dashboard.py` seeds. "
        f"Target ≤ {TARGET_MS} ms." + (" (Database seeded by an earlier run, --reuse-db.)" if reuse else ""),
        "",
        "| per-schedule series | scrape (median) | min – max | body | queries (Django) |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {label} | {fmt(median)} ms | {fmt(low)} – {fmt(high)} ms | {size / 1e6:.1f} MB | {count} |"
            for label, median, low, high, size, count in rows
        ],
        "",
        "Parts alone (median):",
        "",
        *[f"- {name}: {fmt(ms)} ms" for name, ms in part_ms.items()],
        "",
        f"- measured in {time.monotonic() - started:.0f} s; load average at the end: {load}",
        "",
    ]
    if plans:
        lines += [
            "Plans (EXPLAIN ANALYZE) of the scrape without per-schedule series:",
            "",
            "```",
            *plans,
            "```",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if options.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
