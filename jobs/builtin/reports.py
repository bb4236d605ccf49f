"""Report jobs."""

from __future__ import annotations

from celery import current_task

from jobs.framework import job
from jobs.models import JobRun
from jobs.reports import build_run_summary
from jobs.sendonly import names


@job(names.REPORTS_RUN_SUMMARY, queue="reports", soft_time_limit=240, hard_time_limit=300)
def run_summary(window_hours: int = 24) -> dict:
    """Per-job runs by status, failure rate, p50/p95 duration, worst lateness."""
    task_id = current_task.request.id
    run = JobRun.objects.filter(pk=task_id).first() if task_id else None
    report = build_run_summary(window_hours, run=run)
    return {"report": report.pk, "jobs": len(report.rows)}
