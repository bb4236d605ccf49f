"""JSON API latency at 100,000 schedules and 1,000,000 runs: "run now" and "get run", p50 and p99.

    .venv/bin/python bench/api_latency.py                    # ~5 min (seeding is most of it)
    .venv/bin/python bench/api_latency.py --schedules 10000 --runs 100000
    .venv/bin/python bench/api_latency.py --append           # add the section to bench/results.md

Database ``ha_bench`` (``--db``; created, migrated, seeded with
``bench/seed.py``'s schedules and ``--runs`` finished runs over the last 7
days, dropped unless ``--keep-db``; ``--reuse-db`` measures a kept one).
Broker: Redis database 4 (``--redis-db``); no worker consumes it, and the
queues the runs went to are deleted at the end.

Each request goes through the whole Django stack in this process (Django's
test client: middleware, URL routing, ninja's parsing and validation, token
authentication with its ``last_used_at`` note, the permission check, the
view and JSON rendering), so the time is the server's, without network or
a WSGI server. "run now" also includes the dispatch's INSERT, its outbox row
and the publish to Redis after commit (the broker round trip).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.common import (  # noqa: E402
    append_results,
    close_bench_database,
    fmt,
    open_bench_database,
    redis_client,
    seeded_runs,
)

DB = "ha_bench"
REDIS_DB = 4


def seed(schedules: int, runs: int) -> int:
    from django.db import connection
    from seed import seed_schedules_and_a_week_of_runs

    seed_schedules_and_a_week_of_runs(schedules, runs)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM jobs_jobrun")
        return cursor.fetchone()[0]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def timed(label: str, calls: int, call) -> dict:
    call(-1)  # warm-up
    times = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    row = {
        "what": label,
        "p50": percentile(times, 0.5),
        "p99": percentile(times, 0.99),
        "mean": statistics.fmean(times),
        "calls": calls,
    }
    print(f"{label}: p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms ({calls} calls)", flush=True)
    return row


def measure(schedules: int, calls: int) -> list[dict]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django_celery_beat.models import PeriodicTask

    from api.models import ApiToken
    from jobs.models import JobRun

    user = get_user_model().objects.filter(username="bench").first()
    user = user or get_user_model().objects.create_superuser("bench", "bench@example.com", "unused")
    token = ApiToken(user=user, name="bench").set_new_secret()
    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
    # Runs to read, drawn at random from the whole table (one scan, before measuring).
    run_ids = [str(pk) for pk in JobRun.objects.order_by("?").values_list("pk", flat=True)[: calls + 1]]
    schedule_ids = list(PeriodicTask.objects.order_by("?").values_list("pk", flat=True)[: calls + 1])
    body = '{"kwargs": {"seconds": 0}}'

    def expect(response, status: int) -> None:
        assert response.status_code == status, (response.status_code, response.content[:300])

    def run_job(i: int) -> None:
        expect(client.post("/api/v1/jobs/diagnostics.sleep/runs", body, content_type="application/json"), 202)

    def run_job_with_key(i: int) -> None:
        key = f"bench-{uuid.uuid4()}"
        response = client.post(
            "/api/v1/jobs/diagnostics.sleep/runs",
            body,
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=key,
        )
        expect(response, 202)

    replay_key = f"bench-{uuid.uuid4()}"

    def run_job_replayed(i: int) -> None:
        response = client.post(
            "/api/v1/jobs/diagnostics.sleep/runs",
            body,
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=replay_key,
        )
        expect(response, 202)

    def run_schedule(i: int) -> None:
        expect(client.post(f"/api/v1/schedules/{schedule_ids[i + 1]}/runs"), 202)

    def get_run(i: int) -> None:
        expect(client.get(f"/api/v1/runs/{run_ids[(i + 1) % len(run_ids)]}"), 200)

    def list_runs(i: int) -> None:
        expect(client.get("/api/v1/runs?limit=50"), 200)

    def list_runs_of_a_job(i: int) -> None:
        expect(client.get("/api/v1/runs?limit=50&job=heartbeat&status=failed"), 200)

    def list_schedules(i: int) -> None:
        expect(client.get("/api/v1/schedules?limit=50"), 200)

    return [
        timed("run now: a job (POST jobs/{name}/runs)", calls, run_job),
        timed("run now: a job with a new Idempotency-Key", calls, run_job_with_key),
        timed("run now: a retried Idempotency-Key (replay)", calls, run_job_replayed),
        timed("run now: a schedule (POST schedules/{id}/runs)", calls, run_schedule),
        timed("get run (GET runs/{id}), random runs", calls, get_run),
        timed("run history, first page of 50 (GET runs)", calls, list_runs),
        timed("run history, failed runs of one job, 50", calls, list_runs_of_a_job),
        timed("schedule list, first page of 50 (GET schedules)", calls, list_schedules),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=500, help="measured calls per operation")
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--db", default=DB, help=f"the PostgreSQL database (default {DB})")
    parser.add_argument("--redis-db", type=int, default=REDIS_DB)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument(
        "--reuse-db", action="store_true", help="measure what a previous --keep-db run seeded"
    )
    options = parser.parse_args()
    started = time.monotonic()
    reuse = open_bench_database(options.db, options.redis_db, reuse=options.reuse_db)
    try:
        runs = seeded_runs(options.schedules) if reuse else seed(options.schedules, options.runs)
        print(f"{options.schedules:,} schedules, {runs:,} runs; measuring", flush=True)
        rows = measure(options.schedules, options.calls)
    finally:
        close_bench_database(options.db, options.keep_db)
        redis = redis_client(options.redis_db)
        redis.delete("default", "heartbeat", "reports")  # what the measured runs were sent to
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## JSON API latency at {options.schedules:,} schedules and {runs:,} runs ({when})",
        "",
        "`bench/api_latency.py`: each request through the whole Django stack in-process (middleware, "
        "ninja, token authentication, permissions, the view, JSON; no network), after one warm-up; "
        "PostgreSQL, Redis as the broker (no worker consuming). Run now includes the run's INSERT, its "
        "outbox row and the publish after commit.",
        "",
        "| request | p50 | p99 | mean | calls |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {row['what']} | {fmt(row['p50'])} ms | {fmt(row['p99'])} ms | {fmt(row['mean'])} ms "
            f"| {row['calls']} |"
            for row in rows
        ],
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
