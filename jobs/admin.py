"""Run history, the job catalog and reports in the admin (all read-only)."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from jobs.admin_lists import BoundedCountPaginator, JobFilter, ScheduleFilter
from jobs.models import JobDefinition, JobRun, RunSummaryReport
from jobs.reports import render_csv, render_html


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


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
        ("Outcome", {"fields": ("result", "error_type", "error_message", "traceback")}),
    )


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
