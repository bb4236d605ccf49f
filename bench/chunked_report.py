"""A chunked report over a million rows on a real worker: memory, progress, time against one process.

    .venv/bin/python bench/chunked_report.py                       # 100,000 and 1,000,000 rows, ~3 min
    .venv/bin/python bench/chunked_report.py --sizes 20000,200000 --redis-db 13

For each size, ``jobs_jobrun`` holds that many runs of one job name (one
INSERT … SELECT; runs are the table every installation has), and the report
``reports.diagnostics.runs_of_job_in_large_chunks`` (chunks of 50,000 rows,
CSV) reads them over a window. A fresh worker (``celery -A scheduler
worker --pool prefork --concurrency 2 -Q reports``) runs it: the job body
plans the primary-key ranges and sends the chord, the chunks write their
parts, the merge writes the CSV. Measured:

- **peak RSS of the worker's children**: ``VmHWM`` from ``/proc/<pid>/status``
  of each pool process at the end (their high-water mark; the worker is
  fresh for each size), and the largest ``VmRSS`` sampled every 0.1 s;
- **progress**: the parent run sampled every 0.1 s: the longest gap between
  two changes of ``progress_done`` from the first chunk's first write to the
  last, and between two progress writes (``progress_updated_at``; the merge
  writes its message every second) from the first write to the run's end;
- **time**: the run's ``started_at`` → ``finished_at``, against the
  **single-process baseline**: the same report run inline in this process
  (``run_report`` with chunking off: one query over all rows, one CSV).

Needs PostgreSQL at 127.0.0.1:5432 (user ``postgres``, trust auth) and
Redis at 127.0.0.1:6379. Uses its own database ``bench_chunked_report``
(created, migrated, dropped at the end unless ``--keep-db``) and Redis
database ``--redis-db`` (default 13, flushed before each size). Prints a
markdown section.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    PYTHON,
    REPO,
    bench_env,
    close_bench_database,
    cpu_model,
    open_bench_database,
    redis_client,
    stop_process,
)

DB = "bench_chunked_report"
REPORT = "reports.diagnostics.runs_of_job_in_large_chunks"
JOB_NAME = "bench.chunked_report.input"
WINDOW_START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(days=30)
KWARGS = {
    "job_name": JOB_NAME,
    "window_start": WINDOW_START.isoformat(),
    "window_end": WINDOW_END.isoformat(),
}

INSERT_INPUT = """
INSERT INTO jobs_jobrun (
    id, schedule_name, origin, requested_by, job, args, kwargs, queue, scheduled_for,
    status, attempt, worker, error_type, error_message, traceback, created_at
)
SELECT gen_random_uuid(), '', 'beat', '', %(job)s, '[]', '{}', 'default',
       %(start)s::timestamptz + ((n - 1) * interval '1 second' * 2592000 / %(n)s),
       'succeeded', n %% 30000, 'bench', '', '', '', now()
FROM generate_series(1, %(n)s) n
"""


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in kB (empty if it is gone)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def seed_input(n: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE jobs_jobrun CASCADE")
        cursor.execute(INSERT_INPUT, {"job": JOB_NAME, "start": WINDOW_START, "n": n})
        cursor.execute("ANALYZE jobs_jobrun")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [PYTHON, "-m", "celery", "-A", "scheduler", "worker", "--pool", "prefork", "--concurrency", "2"]
    command += ["-Q", "reports", "-n", f"bench-report-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_ready(process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if "ready." in log.read_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the worker was not ready within {timeout} s:\n{log.read_text()[-3000:]}")


def longest_gap(moments: list[float]) -> float:
    return max((b - a for a, b in zip(moments, moments[1:], strict=False)), default=0.0)


def chunked_run(n: int, env: dict[str, str], logs: Path) -> dict:
    """Seed ``n`` rows, run the report on a fresh worker, sample it; the figures."""
    from jobs.catalog import publish_catalog
    from jobs.dispatch import dispatch
    from jobs.models import JobRun, RunStatus

    seed_input(n)
    redis_client(int(env["REDIS_URL"].rsplit("/", 1)[1])).flushdb()
    log = logs / f"worker-{n}.log"
    worker = start_worker(env, log)
    try:
        wait_for_ready(worker, log)
        publish_catalog(worker="bench")
        run = dispatch(REPORT, kwargs=KWARGS)
        done_changes: list[float] = []
        writes: list[float] = []
        last_done, last_write = None, None
        peak_rss = 0
        sent = all_done = time.monotonic()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            current = JobRun.objects.get(pk=run.pk)
            now = time.monotonic()
            if current.progress_done != last_done and current.progress_done:
                done_changes.append(now)
                last_done = current.progress_done
                if current.progress_done == current.progress_total:
                    all_done = now
            if current.progress_updated_at != last_write and current.progress_updated_at:
                writes.append(now)
                last_write = current.progress_updated_at
            children = children_of(worker.pid)
            peak_rss = max([peak_rss, *(proc_status(pid).get("VmRSS", 0) for pid in children)])
            if current.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                ended = now
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"run {run.pk} did not end within 30 minutes")
        hwm = max(proc_status(pid).get("VmHWM", 0) for pid in children_of(worker.pid))
        main_hwm = proc_status(worker.pid).get("VmHWM", 0)
    finally:
        stop_process(worker)
    current = JobRun.objects.get(pk=run.pk)
    if current.status != RunStatus.SUCCEEDED:
        raise RuntimeError(f"run {run.pk} ended {current.status}: {current.error_message}")
    assert current.result is not None and current.started_at and current.finished_at
    return {
        "rows": current.result["rows"],
        "chunks": current.result.get("chunks", 1),
        "seconds": (current.finished_at - current.started_at).total_seconds(),
        "child_hwm_mb": hwm / 1024,
        "child_rss_sampled_mb": peak_rss / 1024,
        "main_hwm_mb": main_hwm / 1024,
        "done_gap": longest_gap(done_changes),
        "write_gap": longest_gap([*writes, ended]),
        "csv_bytes": current.result["files"][0]["bytes"],
        "to_first_rows": (done_changes[0] - sent) if done_changes else 0.0,
        "to_first_write": (writes[0] - sent) if writes else 0.0,
        "to_all_rows": all_done - sent,
        "merge": ended - all_done,
    }


def inline_baseline() -> dict:
    """The same report, inline, in this process: one query, one CSV."""
    from django.utils import timezone

    from jobs.models import JobRun, RunStatus
    from reports.definitions import REPORTS
    from reports.framework import run_report

    spec = dataclasses.replace(REPORTS[REPORT], chunk_size=None)
    now = timezone.now()
    run = JobRun.objects.create(
        job=REPORT, status=RunStatus.RUNNING, scheduled_for=now, started_at=now, attempt=1
    )
    before = proc_status(os.getpid()).get("VmHWM", 0)
    started = time.perf_counter()
    result = run_report(spec, run.pk, (), KWARGS)
    seconds = time.perf_counter() - started
    after = proc_status(os.getpid()).get("VmHWM", 0)
    return {
        "rows": result["rows"],
        "seconds": seconds,
        "hwm_mb": after / 1024,
        "hwm_growth_mb": (after - before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    var_dir = Path(tempfile.mkdtemp(prefix="bench-chunked-report-"))
    os.environ["VAR_DIR"] = str(var_dir)
    open_bench_database(DB, redis_db=args.redis_db)
    env = {**bench_env(DB, args.redis_db), "VAR_DIR": str(var_dir), "WORKER_PRESENCE_REFRESH_SECONDS": "2"}
    import reports.tasks  # noqa: F401  # the reports, for the catalog this process publishes

    figures = []
    try:
        for n in sizes:
            figures.append(chunked_run(n, env, var_dir))
            print(f"chunked {n:,}: {figures[-1]}", file=sys.stderr)
        baseline = inline_baseline()  # over the largest size, still in the table
        print(f"inline {sizes[-1]:,}: {baseline}", file=sys.stderr)
    finally:
        close_bench_database(DB, keep=args.keep_db)
    lines = [
        f"### Chunked report ({datetime.now(UTC):%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} CPUs)",
        "",
        f"`{REPORT}`: chunks of 50,000 rows, CSV; one worker, prefork, concurrency 2; "
        "PostgreSQL and Redis local.",
        "",
        "| input rows | chunks | run time (chunks / merge) | peak RSS per child (VmHWM) "
        "| sampled max child RSS | worker main VmHWM | first progress write "
        "| longest gap, done moving | longest gap, progress writes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f['rows']:,} | {f['chunks']} "
            f"| {f['seconds']:.1f} s ({f['to_all_rows']:.1f} / {f['merge']:.1f}) "
            f"| {f['child_hwm_mb']:.0f} MB | {f['child_rss_sampled_mb']:.0f} MB | {f['main_hwm_mb']:.0f} MB "
            f"| {f['to_first_write']:.1f} s after dispatch | {f['done_gap']:.1f} s | {f['write_gap']:.1f} s |"
        )
    lines += [
        "",
        f"Single-process baseline, the same {baseline['rows']:,} rows inline (one query, one CSV): "
        f"{baseline['seconds']:.1f} s, process VmHWM {baseline['hwm_mb']:.0f} MB "
        f"(+{baseline['hwm_growth_mb']:.0f} MB during the report).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
