"""A job's ``max_concurrency`` under a burst: the limit held, every run done, and what waiting costs.

    .venv/bin/python bench/concurrency_limit.py                 # 20 runs of 1 s, 3 repeats, ~1.5 min
    .venv/bin/python bench/concurrency_limit.py --runs 40 --seconds 0.5 --repeats 1

Two prefork workers (``--concurrency 2`` each: four pool processes) serve a
queue of their own. Each repeat dispatches ``--runs`` runs of
``diagnostics.two_at_a_time`` (``max_concurrency=2``, sleeps ``--seconds``)
at once with ``jobs.dispatch.dispatch_many`` (one transaction, one publish),
and samples how many are ``running`` in the database every 50 ms until all
have ended. Reported per repeat:

- **max running**: the largest sample (must be 2: never more, and the limit used);
- **all succeeded**, **attempts**: every run ``succeeded`` on attempt 1
  (waiting is not a retry);
- **total**: from the dispatch to the last run's end, beside the ideal
  ``runs x seconds / 2`` (two at a time, back to back); the difference is
  what waiting costs: a freed place is taken by the next waiting message
  that comes back (each comes back 1-3 s after it was turned away);
- **waited**: how many runs waited, the median and longest wait
  (``waiting_since`` → ``started_at``), and how many times messages were
  turned away and sent again (the workers' "waits for" log lines);
- **gap**: the median time a place stood free between one run's end and
  the next run's start (from the runs' own timestamps).

Needs PostgreSQL at 127.0.0.1:5432 (user ``postgres``, trust auth) and Redis
at 127.0.0.1:6379. Uses its own database ``bench_concurrency`` (created,
migrated, dropped at the end unless ``--keep-db``) and Redis database 12 only
(flushed before each repeat and at the end). Prints a markdown table and one
line of JSON; ``--json PATH`` writes the JSON to a file too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

DB = "bench_concurrency"
REDIS_DB = 12
QUEUE = "bench_concurrency"
JOB = "diagnostics.two_at_a_time"
LIMIT = 2
WORKERS = 2
SAMPLE_SECONDS = 0.05


def redis_client():
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=10)
    assert client.connection_pool.connection_kwargs["db"] == REDIS_DB
    return client


def flush() -> None:
    redis_client().flushdb()  # database 12 only: the bench's own


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [PYTHON, "-m", "celery", "-A", "scheduler", "worker", "--pool", "prefork", "--concurrency", "2"]
    command += ["-Q", QUEUE, "-n", f"bench-conc-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
    command += ["--without-gossip", "--without-mingle"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_workers(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("ready." in log.read_text(errors="replace") for log in logs):
            return
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError("the workers did not start")


class Sampler(threading.Thread):
    """Counts the burst's running runs every 50 ms until told to stop (its own connection)."""

    def __init__(self, run_ids: list[Any]) -> None:
        super().__init__(daemon=True)
        self.run_ids = run_ids
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from jobs.models import JobRun, RunStatus

        try:
            while not self.stop.is_set():
                running = JobRun.objects.filter(pk__in=self.run_ids, status=RunStatus.RUNNING).count()
                self.samples.append(running)
                self.stop.wait(SAMPLE_SECONDS)
        finally:
            connection.close()


def one_burst(runs: int, seconds: float, logs: list[Path], timeout: float) -> dict[str, Any]:
    from jobs.dispatch import dispatch_many
    from jobs.models import FINISHED_STATUSES, ConcurrencyLease, JobRun

    turned_away_before = sum(log.read_text(errors="replace").count(": waits for ") for log in logs)
    started = time.monotonic()
    burst = dispatch_many(JOB, [([], {"seconds": seconds})] * runs, queue=QUEUE)
    ids = [run.pk for run in burst]
    sampler = Sampler(ids)
    sampler.start()
    deadline = started + timeout
    try:
        while JobRun.objects.filter(pk__in=ids).exclude(status__in=FINISHED_STATUSES).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the burst did not end within {timeout} s")
            time.sleep(0.02)
        total = time.monotonic() - started
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)
    # A run gives its place back just after its end is recorded: give the last one a moment.
    places_deadline = time.monotonic() + 10
    while ConcurrencyLease.objects.filter(key=JOB).exists() and time.monotonic() < places_deadline:
        time.sleep(0.05)
    done = list(JobRun.objects.filter(pk__in=ids).order_by("started_at"))
    waits = [
        (run.started_at - run.waiting_since).total_seconds()
        for run in done
        if run.waiting_since is not None and run.started_at is not None
    ]
    # A place stands free from one run's end until the next run's start.
    ends = sorted(run.finished_at for run in done if run.finished_at)
    starts = sorted(run.started_at for run in done if run.started_at)
    pairs = zip(ends[:-LIMIT], starts[LIMIT:], strict=False)  # the k-th end frees the (k+LIMIT)-th start
    gaps = [(later - end).total_seconds() for end, later in pairs]
    turned_away = sum(log.read_text(errors="replace").count(": waits for ") for log in logs)
    return {
        "runs": runs,
        "seconds": seconds,
        "max_running": max(sampler.samples),
        "samples": len(sampler.samples),
        "statuses": sorted({run.status for run in done}),
        "attempts": sorted({run.attempt for run in done}),
        "total_s": total,
        "ideal_s": runs * seconds / LIMIT,
        "waited": len(waits),
        "wait_median_s": statistics.median(waits) if waits else 0.0,
        "wait_max_s": max(waits) if waits else 0.0,
        "turned_away": turned_away - turned_away_before,
        "gap_median_s": statistics.median(gaps) if gaps else 0.0,
        "leases_left": ConcurrencyLease.objects.filter(key=JOB).count(),
    }


def report(results: list[dict[str, Any]], started: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    first = results[0]
    lines = [
        f"## A job's max_concurrency under a burst ({when})",
        "",
        f"{first['runs']} runs of `{JOB}` (max_concurrency={LIMIT}, {first['seconds']} s each) dispatched "
        f"at once (`dispatch_many`) onto {WORKERS} prefork workers of 2 processes; running runs sampled "
        "from the database every 50 ms. `bench/concurrency_limit.py`.",
        "",
        "| repeat | max running | all succeeded, attempt 1 | total s | ideal s | waited | "
        "wait median / max s | turned away | free-place gap median s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results, 1):
        ok = r["statuses"] == ["succeeded"] and r["attempts"] == [1]
        lines.append(
            f"| {i} | {r['max_running']} | {'yes' if ok else 'NO ' + str(r['statuses'] + r['attempts'])} | "
            f"{fmt(r['total_s'])} | {fmt(r['ideal_s'])} | {r['waited']} | "
            f"{fmt(r['wait_median_s'])} / {fmt(r['wait_max_s'])} | {r['turned_away']} | "
            f"{fmt(r['gap_median_s'])} |"
        )
    totals = [r["total_s"] for r in results]
    lines += [
        "",
        f"- median total {fmt(statistics.median(totals))} s for an ideal {fmt(first['ideal_s'])} s; "
        f"max running over all repeats: {max(r['max_running'] for r in results)}",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model('?')}); "
        f"measured in {time.monotonic() - started:.0f} s",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args()
    started = time.monotonic()
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_concurrency_logs"
    log_dir.mkdir(exist_ok=True)

    create_database(DB)
    env = bench_env(DB, REDIS_DB)
    env["PYTHONUNBUFFERED"] = "1"  # the workers' "waits for" lines are counted from their logs
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"], env, "migrate", timeout=300)
    os.environ.update(env)
    import django

    django.setup()
    from jobs.catalog import publish_catalog

    flush()
    publish_catalog(worker="bench")
    logs = [log_dir / f"worker-{i}.log" for i in range(WORKERS)]
    workers = [start_worker(env, log) for log in logs]
    results: list[dict[str, Any]] = []
    try:
        wait_for_workers(workers, logs)
        timeout = 60 + 10 * options.runs * options.seconds
        for i in range(options.repeats):
            results.append(one_burst(options.runs, options.seconds, logs, timeout))
            r = results[-1]
            print(
                f"repeat {i + 1}: max running {r['max_running']}, total {r['total_s']:.2f} s "
                f"(ideal {r['ideal_s']:.1f} s), turned away {r['turned_away']}",
                flush=True,
            )
    finally:
        for worker in workers:
            stop_process(worker)
        flush()
        if not options.keep_db:
            from django.db import connections

            connections.close_all()
            drop_database(DB)
    print(report(results, started))
    figures = {"bench": "concurrency_limit", "limit": LIMIT, "workers": WORKERS, "repeats": results}
    print(json.dumps(figures))
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(r["max_running"] <= LIMIT for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
