"""Jobs for on-call drills and for tests of time limits and alerting."""

from __future__ import annotations

import time

from jobs.framework import job


class DrillFailure(RuntimeError):
    """Raised on purpose by ``diagnostics.fail``."""


@job("diagnostics.sleep", queue="default", soft_time_limit=60, hard_time_limit=90)
def sleep(seconds: float) -> dict:
    """Sleep for ``seconds``; past the soft or hard limit it is stopped like any job."""
    if seconds < 0:
        raise ValueError(f"seconds must be 0 or more, got {seconds}")
    time.sleep(seconds)
    return {"slept": seconds}


@job("diagnostics.fail", queue="default", soft_time_limit=30, hard_time_limit=45)
def fail(message: str = "diagnostics.fail was asked to fail") -> None:
    """Raise ``DrillFailure(message)``: proves failures reach the run history and Sentry."""
    raise DrillFailure(message)
