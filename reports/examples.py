"""An example of a report as a team would write one (the README shows it)."""

from __future__ import annotations

from jobs.models import JobRun, RunStatus
from reports.framework import Window, report


@report(
    "reports.example.failed_runs",
    columns=["run", "job", "scheduled for", "status", "error"],
    source=lambda window, job_prefix: JobRun.objects.filter(
        scheduled_for__gte=window.start,
        scheduled_for__lt=window.end,
        status__in=[RunStatus.FAILED, RunStatus.HARD_TIMEOUT, RunStatus.SOFT_TIMEOUT, RunStatus.LOST],
        job__startswith=job_prefix,
    ),
    formats=["csv", "xlsx"],
)
def failed_runs(rows, window: Window, job_prefix: str = ""):
    """Failed runs in the window, one line each."""
    for run in rows.iterator(chunk_size=2000):
        yield [run.pk, run.job, run.scheduled_for, run.status, run.error_message[:200]]
