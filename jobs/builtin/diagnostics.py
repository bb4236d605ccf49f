"""Jobs for on-call drills and for tests of time limits and alerting."""

from __future__ import annotations

import time

from celery.exceptions import SoftTimeLimitExceeded

from jobs.framework import job
from jobs.progress import report_progress
from jobs.sendonly import names


class DrillFailure(RuntimeError):
    """Raised on purpose by ``diagnostics.fail``."""


@job(names.DIAGNOSTICS_SLEEP, queue="default", soft_time_limit=60, hard_time_limit=90)
def sleep(seconds: float, ignore_soft_limit: bool = False) -> dict:
    """Sleep for ``seconds``; past the soft or hard limit it is stopped like any job.

    ``ignore_soft_limit=True`` plays a job that swallows ``SoftTimeLimitExceeded``
    and keeps going, so only the hard limit can end it (a drill of a hung job).
    """
    if seconds < 0:
        raise ValueError(f"seconds must be 0 or more, got {seconds}")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            if not ignore_soft_limit:
                raise
    return {"slept": seconds}


@job(names.DIAGNOSTICS_FAIL, queue="default", soft_time_limit=30, hard_time_limit=45)
def fail(message: str = "diagnostics.fail was asked to fail") -> None:
    """Raise ``DrillFailure(message)``: proves failures reach the run history and Sentry."""
    raise DrillFailure(message)


@job(
    names.DIAGNOSTICS_FAIL_WITH_RETRIES,
    queue="default",
    soft_time_limit=30,
    hard_time_limit=45,
    max_retries=2,
    retry_backoff=1,
    retry_backoff_max=2,
)
def fail_with_retries(
    message: str = "diagnostics.fail_with_retries was asked to fail", seconds: float = 0
) -> None:
    """Sleep ``seconds``, raise ``DrillFailure(message)``; each of its 3 attempts (2 retries, 1-2 s apart).

    Proves a retried failure ends its run (and its alert, its Sentry Crons
    check-in) once, after the last attempt, not at each retry; ``seconds``
    leaves time to kill an attempt's process (a lost attempt is retried too).
    """
    time.sleep(seconds)
    raise DrillFailure(message)


@job(names.DIAGNOSTICS_COUNT, queue="default", soft_time_limit=60, hard_time_limit=90)
def count(n: int, seconds: float = 0) -> dict:
    """Count to ``n`` over ``seconds``, reporting progress at every step (the run page shows it move).

    Reports ``n`` times, evenly over ``seconds``; the framework writes at
    most one a second, plus the first and the last (``jobs.progress``).
    """
    if n < 0 or seconds < 0:
        raise ValueError(f"n and seconds must be 0 or more, got n={n}, seconds={seconds}")
    pause = seconds / n if n else 0
    for done in range(1, n + 1):
        if pause:
            time.sleep(pause)
        report_progress(done, n, f"counted {done} of {n}")
    return {"counted": n}


@job(
    names.DIAGNOSTICS_TWO_AT_A_TIME,
    queue="default",
    soft_time_limit=60,
    hard_time_limit=90,
    max_concurrency=2,
)
def two_at_a_time(seconds: float) -> dict:
    """Sleep ``seconds``; never more than two runs of it at once across all workers (``max_concurrency=2``).

    The drill of a job with a concurrency limit: start ten, see two run and
    eight wait (``waiting_for`` on their runs).
    """
    if seconds < 0:
        raise ValueError(f"seconds must be 0 or more, got {seconds}")
    time.sleep(seconds)
    return {"slept": seconds}
