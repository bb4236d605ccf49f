"""What one alert-detector cycle costs the database at 100,000 schedules and 1,000,000 runs.

    .venv/bin/python bench/alerting_cycle.py                     # ~4 min (seeding is most of it)
    .venv/bin/python bench/alerting_cycle.py --schedules 10000 --runs 100000
    .venv/bin/python bench/alerting_cycle.py --append            # add the section to bench/results.md

Database ``bench_alert_cycle`` (created, migrated, dropped unless
``--keep-db``). The seed: ``--schedules`` schedules (``bench/seed.py``: half
crontab, half interval), ``--runs`` finished runs spread over the last ten
minutes (0.2 % failed, the rest succeeded), 3,000 runs ``running`` and 5,000
``queued`` within their grace, a live worker and a leader renewing the lease:
a large, healthy platform. Then ``--cycles`` steady cycles of one
``alerts.detector.Detector``, 5 s apart (the default ``ALERT_CHECK_INTERVAL``);
before each, 1,700 runs a second end (8,500 per cycle, 0.2 % of them failed:
the detector opens and pages incidents as it would).

Reported: per cycle, the statements run and the time spent waiting on them
(``CycleReport.db_ms``, the target: ≤ 200 ms), and the plan of every SELECT
of one steady cycle (``EXPLAIN``): which index each one reads, and any
sequential scan of a large table (runs, schedules, policies).
"""

from __future__ import annotations

import argparse
import json
import logging
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
)

DB = "bench_alert_cycle"
ENDED_PER_SECOND = 1_700
CYCLE_SECONDS = 5.0
FAILED_SHARE = 0.002  # the default of --failed-share
LARGE_TABLES = ("jobs_jobrun", "django_celery_beat_periodictask", "scheduler_schedulepolicy")


def failed_text() -> None:
    """Failed runs say why, as a worker would have written it."""
    from jobs.models import JobRun, RunStatus

    JobRun.objects.filter(status=RunStatus.FAILED, error_type="").update(
        error_type="bench.Failure", error_message="the bench failed this run"
    )


def seed(schedules: int, runs: int) -> dict:
    from django.db import connection
    from seed import insert_runs
    from seed import seed as seed_schedules

    from alerts.models import Channel
    from scheduler.models import BeatLease

    now = datetime.now(UTC)
    counts = seed_schedules(schedules, now, quiet_window=timedelta(minutes=40))
    step = 200_000
    for start in range(0, runs, step):
        insert_runs(
            min(step, runs - start), now - timedelta(minutes=10), now, schedules, failed_share=FAILED_SHARE
        )
    insert_runs(3_000, now - timedelta(seconds=30), now, schedules, status="running")
    insert_runs(5_000, now - timedelta(seconds=20), now, schedules, status="queued")
    failed_text()
    # Incidents are routed and their pages queued in the cycle, as in production; nothing delivers them.
    Channel.objects.create(
        name="bench", kind="webhook", target="http://127.0.0.1:9/", secret="s" * 32, is_default=True
    )
    BeatLease.objects.update_or_create(
        name="beat",
        defaults={
            "holder": "bench-beat",
            "token": 1,
            "expires_at": now + timedelta(days=1),
            "renewed_at": now,
        },
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        counts["runs"] = cursor.fetchone()[0]
    return counts


def keep_platform_alive(now: datetime) -> None:
    """The leader renews its lease and the worker its presence, as the real ones do."""
    from jobs.models import WorkerPresence
    from scheduler.models import BeatLease

    BeatLease.objects.filter(name="beat").update(renewed_at=now, expires_at=now + timedelta(seconds=10))
    WorkerPresence.objects.update(last_seen_at=now)


def plans_of(statements: list[str]) -> list[dict]:
    """EXPLAIN of each SELECT: the scans it does, and whether a large table is read sequentially."""
    from django.db import connection

    found = []
    with connection.cursor() as cursor:
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN " + sql)
            lines = [row[0] for row in cursor.fetchall()]
            scans = [line.strip().lstrip("-> ").split("  (")[0] for line in lines if "Scan" in line]
            found.append(
                {
                    "statement": " ".join(sql.split())[:140],
                    "scans": scans,
                    "seq_scan_of_large_table": any(
                        "Seq Scan" in s and any(t in s for t in LARGE_TABLES) for s in scans
                    ),
                }
            )
    return found


def recorder(statements: list[str]):
    """An execute wrapper that keeps each statement with its parameters filled in."""
    from django.db import connection

    def record(execute, sql, params, many, context):
        statements.append(sql if many or params is None else connection.ops.compose_sql(sql, params))
        return execute(sql, params, many, context)

    return record


def measure(cycles: int, schedules: int, failed_share: float) -> dict:
    from django.db import connection
    from seed import insert_runs

    from alerts.detector import Detector

    detector = Detector()
    first = detector.run_cycle(datetime.now(UTC))
    steady = []
    statements: list[str] = []
    for i in range(cycles):
        started = datetime.now(UTC)
        time.sleep(CYCLE_SECONDS)
        now = datetime.now(UTC)
        insert_runs(int(ENDED_PER_SECOND * CYCLE_SECONDS), started, now, schedules, failed_share=failed_share)
        failed_text()
        keep_platform_alive(now)
        if i == cycles // 2:
            with connection.execute_wrapper(recorder(statements)):
                report = detector.run_cycle(now)
        else:
            report = detector.run_cycle(now)
        steady.append(report)
    return {"first": first, "steady": steady, "plans": plans_of(statements)}


def report_text(counts: dict, figures: dict, failed_share: float, seconds: float) -> str:
    steady = figures["steady"]
    db = [r.db_ms for r in steady]
    queries = [r.queries for r in steady]
    first = figures["first"]
    plans = figures["plans"]
    seq = [p for p in plans if p["seq_scan_of_large_table"]]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## Alert detector cycle at {counts['schedules']:,} schedules and {counts['runs']:,} runs ({when})",
        "",
        f"`bench/alerting_cycle.py`: PostgreSQL, {len(steady)} steady cycles 5 s apart, "
        f"{ENDED_PER_SECOND:,} runs ending a second between them ({failed_share:.1%} failed), 3,000 running, "
        "5,000 queued, a live leader and worker. Database time = time waiting on the cycle's statements.",
        "",
        "| cycle | statements | database time | wall time | target |",
        "|---|---:|---:|---:|---|",
        f"| steady, median | {statistics.median(queries):.0f} | {fmt(statistics.median(db))} ms | "
        f"{fmt(statistics.median([r.wall_ms for r in steady]))} ms | ≤ 200 ms |",
        f"| steady, max | {max(queries)} | {fmt(max(db))} ms | {fmt(max(r.wall_ms for r in steady))} ms | |",
        f"| a fresh detector's first (reads 5 min back) | {first.queries} | {fmt(first.db_ms)} ms | "
        f"{fmt(first.wall_ms)} ms | |",
        "",
        f"- incidents opened / paged over the steady cycles: {sum(r.opened for r in steady)} / "
        f"{sum(r.paged for r in steady)}; resolved: {sum(r.resolved for r in steady)}",
        f"- plans of one steady cycle's {len(plans)} SELECTs: "
        f"{'no' if not seq else len(seq)} sequential scan of the runs, schedules or policies tables",
    ]
    distinct = {(p["statement"][:100], "; ".join(p["scans"]) or "no scan") for p in plans}
    lines += [f"  - `{statement}…`: {scans}" for statement, scans in sorted(distinct)]
    lines += [f"- measured in {seconds:.0f} s; load average at the end: {load}", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument(
        "--failed-share",
        type=float,
        default=FAILED_SHARE,
        help="share of the runs ending in cycles that fail",
    )
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--keep-db", action="store_true")
    options = parser.parse_args()
    started = time.monotonic()
    create_database(DB)
    env = bench_env(DB)
    run_checked([PYTHON, "manage.py", "migrate", "-v0"], env, "migrate", 300)
    from bench.common import setup_django

    setup_django(DB)
    try:
        counts = seed(options.schedules, options.runs)
        logging.getLogger("alerts").setLevel(logging.ERROR)  # an incident per failure: not the bench's output
        figures = measure(options.cycles, options.schedules, options.failed_share)
    finally:
        from django.db import connections

        connections.close_all()
        if not options.keep_db:
            drop_database(DB)
    text = report_text(counts, figures, options.failed_share, time.monotonic() - started)
    print(text)
    raw = {
        "counts": counts,
        "steady_db_ms": [r.db_ms for r in figures["steady"]],
        "steady_queries": [r.queries for r in figures["steady"]],
        "first_db_ms": figures["first"].db_ms,
    }
    print(json.dumps(raw, default=str))
    if options.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
