"""Run history, the job catalog and reports in the admin (all read-only).

A run's page adds what someone debugging it needs (``run_page_context``):
the error, the traceback as it was printed, what the run records of its
attempts, where to find its Sentry event, and a place for progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from jobs.admin_lists import BoundedCountPaginator, JobFilter, ScheduleFilter, format_duration, format_utc
from jobs.admin_panels import render_run_panels
from jobs.admin_progress import compact_progress, run_progress, run_waiting
from jobs.models import ACTIVE_STATUSES, JobDefinition, JobRun, RunStatus, RunSummaryReport
from jobs.reports import render_csv, render_html


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@dataclass(frozen=True)
class Attempts:
    """What a run records of its attempts: one row per run, so only the latest attempt in full.

    ``number``: attempts started (0: never started); ``allowed``: the job's
    retries + 1, from the catalog (``None``: the job is not in it). The
    error fields hold the last attempt that failed: for a run that retried
    and then succeeded, the failed attempt's error (its message ends with
    "(retry at …)"); earlier attempts' own errors, workers and times are not
    kept.
    """

    number: int
    allowed: int | None
    worker: str
    started: str
    earlier: int  # attempts before the latest, whose records were overwritten


def run_attempts(run: JobRun) -> Attempts:
    retries = JobDefinition.objects.filter(name=run.job).values_list("max_retries", flat=True).first()
    return Attempts(
        number=run.attempt,
        allowed=None if retries is None else retries + 1,
        worker=run.worker,
        started=format_utc(run.started_at),
        earlier=max(0, run.attempt - 1),
    )


def run_page_context(run: JobRun) -> dict[str, Any]:
    """The run page's sections (template ``admin/jobs/jobrun/change_form.html``).

    Sentry: a failed run keeps its event's id (``jobs.framework.report_to_sentry``);
    the page links it when ``SENTRY_WEB_URL`` says where Sentry is, else shows
    the id to search for. A run that failed before ids were kept (or whose note
    could not be written) is found by its tag, ``run:<id>``. Progress
    (``jobs.admin_progress``): a bar of done / total with the job's message
    and how long ago it was reported; a queued run held back by its job's
    ``max_concurrency`` says what it waits for and since when. Panels: what
    apps on top add below (``jobs.admin_panels``, e.g. a report's files).
    """
    return {
        "run": run,
        "run_error": f"{run.error_type}: {run.error_message}" if run.error_type else run.error_message,
        "run_traceback": run.traceback,
        "run_attempts": run_attempts(run),
        "run_duration": format_duration(run.duration_ms),
        "run_is_active": run.status in ACTIVE_STATUSES,
        "run_is_running": run.status == RunStatus.RUNNING,
        "sentry_enabled": bool(settings.SENTRY_DSN),
        "sentry_failed": run.status not in ACTIVE_STATUSES and bool(run.error_type),
        "sentry_event_url": sentry_event_url(run.sentry_event_id),
        "run_progress": run_progress(run),
        "run_waiting": run_waiting(run),
        "run_panels": render_run_panels(run),
    }


def sentry_event_url(event_id: str) -> str:
    """Sentry's search for the event (an issue search by event id finds its issue), or ""."""
    if not event_id or not settings.SENTRY_WEB_URL:
        return ""
    return f"{settings.SENTRY_WEB_URL}/issues/?query={event_id}"


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = (
        "scheduled_for",
        "job",
        "schedule_name",
        "status",
        "attempt",
        "lateness_ms",
        "duration_ms",
        "progress",
        "worker",
    )
    # Each filter and the count read a bounded number of rows (jobs/admin_lists.py);
    # no date_hierarchy: it scans every run's date to draw itself.
    list_filter = ("status", JobFilter, ScheduleFilter, "scheduled_for")
    paginator = BoundedCountPaginator
    search_fields = ("=id", "job", "schedule_name", "error_type", "error_message")
    list_select_related = False
    show_full_result_count = False  # COUNT(*) over a large history is slow
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "job",
                    "schedule",
                    "schedule_name",
                    ("origin", "requested_by"),
                    "status",
                    "attempt",
                )
            },
        ),
        (
            "Timing (UTC)",
            {
                "fields": (
                    "scheduled_for",
                    "deadline",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                    "lateness_ms",
                    "duration_ms",
                )
            },
        ),
        (
            "Execution",
            {"fields": ("queue", "soft_time_limit", "hard_time_limit", "worker", "args", "kwargs")},
        ),
        # The error and traceback are the page's own section (run_page_context), preformatted.
        ("Outcome", {"fields": ("result",)}),
    )
    change_form_template = "admin/jobs/jobrun/change_form.html"

    @admin.display(description="progress")
    def progress(self, run: JobRun) -> str:
        """Waiting or running runs only: "42 % · 4,200 / 10,000 · message", "waiting: …"."""
        return compact_progress(run) or "–"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra = run_page_context(run) if run is not None else {}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


@admin.register(JobDefinition)
class JobDefinitionAdmin(ReadOnlyAdmin):
    list_display = ("name", "queue", "soft_time_limit", "hard_time_limit", "max_retries", "last_published_at")
    search_fields = ("name",)


@admin.register(RunSummaryReport)
class RunSummaryReportAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "created_at", "job_count", "downloads")
    readonly_fields = ("window_start", "window_end", "created_at", "rows", "downloads")

    @admin.display(description="jobs")
    def job_count(self, report: RunSummaryReport) -> int:
        return len(report.rows)

    @admin.display(description="download")
    def downloads(self, report: RunSummaryReport) -> str:
        return format_html(
            '<a href="{}">CSV</a> · <a href="{}">HTML</a>',
            reverse("admin:jobs_runsummaryreport_csv", args=[report.pk]),
            reverse("admin:jobs_runsummaryreport_html", args=[report.pk]),
        )

    def get_urls(self):
        own = [
            path(
                "<int:pk>/csv/",
                self.admin_site.admin_view(self.download_csv),
                name="jobs_runsummaryreport_csv",
            ),
            path(
                "<int:pk>/html/",
                self.admin_site.admin_view(self.download_html),
                name="jobs_runsummaryreport_html",
            ),
        ]
        return own + super().get_urls()

    def _report(self, request, pk: int) -> RunSummaryReport:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(RunSummaryReport, pk=pk)

    def download_csv(self, request, pk: int) -> HttpResponse:
        report = self._report(request, pk)
        response = HttpResponse(render_csv(report), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="run-summary-{pk}.csv"'
        return response

    def download_html(self, request, pk: int) -> HttpResponse:
        report = self._report(request, pk)
        response = HttpResponse(render_html(report), content_type="text/html; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="run-summary-{pk}.html"'
        return response
