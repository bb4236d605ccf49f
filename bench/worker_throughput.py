"""A run's cost on the worker: recorded runs/s of one prefork worker against a bare Celery task's tasks/s.

    .venv/bin/python bench/worker_throughput.py              # N = 3,000, 3 repeats each, ~2-3 min
    .venv/bin/python bench/worker_throughput.py --runs 500 --repeats 1
    .venv/bin/python bench/worker_throughput.py --code /tmp/old-checkout   # the same, with other code

Both sides drain N messages already waiting in Redis with ONE worker,
``--pool prefork --concurrency 2``, late acks, prefetch 1, JSON, task events
on, results ignored:

- **ours**: N ``JobRun`` rows inserted ``queued`` (``diagnostics.sleep``,
  ``seconds=0``, a deadline an hour ahead) and their messages published with
  ``send_task`` (task id = run id), then ``celery -A scheduler worker`` with
  the platform's settings: each message starts its run (guarded UPDATE), runs
  the job, records its end. Every run must end ``succeeded``.
- **bare Celery**: an app of its own (no Django, no fix-up) with the same
  settings and a no-op task; N messages with ``send_task``.

Drain time is measured the same way for both, from Redis: from the first
message taken off the queue to the moment the queue and the unacked set are
both empty (late ack: a message is acknowledged after its task, and for ours
after its run's end is recorded). Each side runs ``--repeats`` times,
alternating which goes first; medians are reported with the ratio.

Needs PostgreSQL at 127.0.0.1:5432 (user ``postgres``, trust auth) and Redis
at 127.0.0.1:6379. Uses its own database ``bench_worker`` (created, migrated,
dropped at the end unless ``--keep-db``) and Redis database 15 only (flushed
before each drain and at the end). Prints a markdown section; ``--append``
adds it to ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery  # noqa: E402

from bench.common import (  # noqa: E402
    PYTHON,
    REPO,
    bench_env,
    cpu_model,
    create_database,
    drop_database,
    fmt,
    run_checked,
    stop_process,
)

DB = "bench_worker"
REDIS_DB = 15
QUEUE = "bench_worker"
JOB = "diagnostics.sleep"
BARE_TASK = "bench.noop"


def broker_url() -> str:
    return f"redis://127.0.0.1:6379/{REDIS_DB}"


def bare_celery_app() -> Celery:
    """The bare side: Celery alone, with the settings that matter to throughput set as the platform's."""
    bare = Celery("bench_bare", broker=broker_url(), fixups=[])
    bare.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    bare.task(name=BARE_TASK)(noop)
    return bare


def noop() -> None:
    """The bare side's task: nothing, so its rate is Celery's own cost per message."""


# ``celery -A bench.worker_throughput:bare_app worker`` serves the bare side.
bare_app = bare_celery_app()


def redis_client():
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=10)
    assert client.connection_pool.connection_kwargs["db"] == REDIS_DB
    return client


def flush() -> None:
    redis_client().flushdb()  # database 15 only: the bench's own


def start_worker(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    command = [PYTHON, "-m", "celery", *args, "worker", "--pool", "prefork", "--concurrency", "2"]
    command += ["-Q", QUEUE, "-n", f"bench-worker-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "WARNING"]
    command += ["--without-gossip", "--without-mingle"]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def drain_seconds(n: int, process: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds from the first message taken to queue and unacked set both empty."""
    client = redis_client()
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        waiting = client.llen(QUEUE)
        now = time.perf_counter()
        if first is None and waiting < n:
            first = now
        if first is not None and waiting == 0 and client.hlen("unacked") == 0:
            return now - first
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    raise TimeoutError(f"{n} messages not drained within {timeout} s:\n{log.read_text()[-3000:]}")


def seed_runs(n: int) -> list[str]:
    """N queued runs of the no-op job, inserted and published; their ids."""
    from django.db import connection
    from django.utils import timezone

    from jobs.models import JobRun, RunOrigin, RunStatus
    from settings.celery_app import app

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {JobRun._meta.db_table} CASCADE")  # noqa: S608 (a constant)
    now = timezone.now()
    runs = [
        JobRun(
            id=uuid.uuid4(),
            origin=RunOrigin.CLIENT,
            job=JOB,
            kwargs={"seconds": 0},
            queue=QUEUE,
            soft_time_limit=60,
            hard_time_limit=120,
            scheduled_for=now,
            deadline=now + timedelta(hours=1),
            enqueued_at=now,
            status=RunStatus.QUEUED,
        )
        for _ in range(n)
    ]
    JobRun.objects.bulk_create(runs, batch_size=1000)
    with app.producer_or_acquire() as producer:
        for run in runs:
            app.send_task(
                JOB,
                kwargs=run.kwargs,
                task_id=str(run.pk),
                queue=QUEUE,
                soft_time_limit=run.soft_time_limit,
                time_limit=run.hard_time_limit,
                producer=producer,
            )
    return [str(run.pk) for run in runs]


def measure_ours(n: int, code: Path, logs: Path, i: int) -> float:
    from django.db.models import Count

    from jobs.models import JobRun

    flush()
    seed_runs(n)
    env = bench_env(DB, REDIS_DB)
    env["PYTHONPATH"] = str(code)
    log = logs / f"ours-{i}.log"
    worker = start_worker(["-A", "scheduler"], env, code, log)
    try:
        seconds = drain_seconds(n, worker, log, timeout=300)
    finally:
        stop_process(worker)
    statuses = dict(JobRun.objects.values_list("status").annotate(Count("pk")))
    if statuses != {"succeeded": n}:
        raise RuntimeError(f"runs did not all succeed: {statuses}\n{log.read_text()[-3000:]}")
    return seconds


def measure_bare(n: int, logs: Path, i: int) -> float:
    flush()
    with bare_app.producer_or_acquire() as producer:
        for _ in range(n):
            bare_app.send_task(BARE_TASK, queue=QUEUE, producer=producer)
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "SENTRY_DSN"}}
    env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    log = logs / f"bare-{i}.log"
    worker = start_worker(["-A", "bench.worker_throughput:bare_app"], env, REPO, log)
    try:
        return drain_seconds(n, worker, log, timeout=300)
    finally:
        stop_process(worker)


def git_commit(code: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "jobs", "scheduler", "settings", "lib"],
        cwd=code,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return done.stdout.strip() + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = cpu_model("?")
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def report(n: int, ours: list[float], bare: list[float], code: Path, started: float) -> str:
    ours_rate = [n / s for s in ours]
    bare_rate = [n / s for s in bare]
    o, b = statistics.median(ours_rate), statistics.median(bare_rate)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"## Worker throughput: recorded runs vs a bare Celery task ({when})",
            "",
            f"{n:,} messages waiting in Redis, drained by one prefork worker (concurrency 2, late ack, "
            "prefetch 1, JSON, task events on); PostgreSQL 127.0.0.1, Redis db 15. Ours: "
            f"`{JOB}` with 0 s, each run started and ended in the database. Bare: a Celery app with the "
            "same settings and a no-op task. Drain = first message taken → queue and unacked set empty. "
            "`bench/worker_throughput.py`.",
            "",
            "| measure | ours (recorded runs/s) | bare Celery (tasks/s) | ours / bare |",
            "|---|---:|---:|---:|",
            f"| median of {len(ours)} | {fmt(o)} | {fmt(b)} | {o / b:.0%} |",
            f"| each repeat | {', '.join(map(fmt, ours_rate))} | {', '.join(map(fmt, bare_rate))} | |",
            "",
            f"- code: `{git_commit(code)}`; machine: {machine()}",
            f"- measured in {time.monotonic() - started:.0f} s; load average at the end: {load}",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose worker code runs ours")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    options = parser.parse_args()
    started = time.monotonic()
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_worker_logs"
    logs.mkdir(exist_ok=True)

    create_database(DB)
    env = bench_env(DB, REDIS_DB)
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"], env, "migrate", timeout=300)
    os.environ.update(env)
    import django

    django.setup()

    ours: list[float] = []
    bare: list[float] = []
    try:
        for i in range(options.repeats):
            sides = [("ours", ours), ("bare", bare)]
            for name, results in sides if i % 2 == 0 else reversed(sides):
                if name == "ours":
                    results.append(measure_ours(options.runs, options.code.resolve(), logs, i))
                else:
                    results.append(measure_bare(options.runs, logs, i))
                print(f"repeat {i + 1}, {name}: {options.runs / results[-1]:,.0f}/s", flush=True)
    finally:
        flush()
        if not options.keep_db:
            from django.db import connections

            connections.close_all()
            drop_database(DB)
    section = report(options.runs, ours, bare, options.code.resolve(), started)
    print(section)
    if options.append:
        with (REPO / "bench" / "results.md").open("a") as out:
            out.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
