"""A report for drills and tests of the chunked path: the runs of one job name, with faults on demand.

``reports.diagnostics.runs_of_job`` reads ``JobRun`` rows (any table with
many rows would do; runs are the one every installation has) and can be
told to misbehave on the row whose ``attempt`` equals a given number:
fail every time (a chunk that keeps failing), or stall once (past the
chunk's soft limit on its first attempt only: the once-flag is a Redis key
set with NX; or past its hard limit, which kills the chunk), or go slowly (so progress can be watched).
``reports.diagnostics.runs_of_job_in_large_chunks`` is the same report with
the default chunk size (50,000) and limits, for the bench.
"""

from __future__ import annotations

import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from jobs.models import JobRun
from reports.definitions import Window
from reports.framework import report

COLUMNS = ["run", "job", "attempt", "scheduled_for"]


class DrillFailure(RuntimeError):
    """Raised on purpose by the diagnostics report."""


def runs_of_job(
    rows,
    window: Window,
    job_name: str,
    pause_per_row: float = 0,
    fail_at_attempt: int = -1,
    stall_at_attempt: int = -1,
    stall_once_key: str = "",
    stall_past_soft_limit: bool = False,
):
    """The runs of one job in the window (a drill of chunked reports)."""
    for run in rows.iterator(chunk_size=500):
        if run.attempt == fail_at_attempt:
            raise DrillFailure(f"the run with attempt {fail_at_attempt} was asked to fail")
        if run.attempt == stall_at_attempt and stall_once_key:
            if redis.Redis.from_url(settings.REDIS_URL).set(stall_once_key, "1", nx=True, ex=600):
                stall(60, past_soft_limit=stall_past_soft_limit)
        if pause_per_row:
            time.sleep(pause_per_row)
        yield [run.pk, run.job, run.attempt, run.scheduled_for]


def stall(seconds: float, *, past_soft_limit: bool) -> None:
    """Sleep; the chunk's soft limit stops it, or only its hard limit (``past_soft_limit``)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            if not past_soft_limit:
                raise


def runs_of(window: Window, job_name: str):
    return JobRun.objects.filter(job=job_name, scheduled_for__gte=window.start, scheduled_for__lt=window.end)


# Small chunks with tight limits: tests and drills of retries and failures.
runs_of_job_task = report(
    "reports.diagnostics.runs_of_job",
    columns=COLUMNS,
    source=runs_of,
    chunk_size=1000,
    formats=["csv", "json"],
    soft_time_limit=120,
    hard_time_limit=150,
    chunk_soft_time_limit=5,
    chunk_hard_time_limit=10,
    chunk_max_retries=2,
)(runs_of_job)

# One chunk reading at a time (and one run at a time): tests of chunk places.
runs_of_job_one_chunk_at_a_time_task = report(
    "reports.diagnostics.runs_of_job_one_chunk_at_a_time",
    columns=COLUMNS,
    source=runs_of,
    chunk_size=1000,
    formats=["csv"],
    soft_time_limit=120,
    hard_time_limit=150,
    chunk_soft_time_limit=20,
    chunk_hard_time_limit=30,
    max_concurrency=1,
)(runs_of_job)

# The default chunk size and limits: bench/chunked_report.py's report over a million rows.
runs_of_job_in_large_chunks_task = report(
    "reports.diagnostics.runs_of_job_in_large_chunks",
    columns=COLUMNS,
    source=runs_of,
    chunk_size=50_000,
    formats=["csv"],
)(runs_of_job)
