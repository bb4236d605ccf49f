"""Stored report files in the admin: the list per report and per run, and the download.

Read-only: files are made by report runs (``reports.storage.store_report``)
and expire by themselves (``reports.cleanup``). Deleting one here (with the
delete permission) deletes its file from the storage too, not just the row.

The download (``admin:reports_reportfile_download``) streams the file from
the reports storage with its format's content type, to staff who may view
report files; anyone else gets 403 (or the login page when not logged in),
and a file no longer in the storage gives 404.

The list costs the same queries whatever its size: the run is shown by its
id (no join), and the report filter reads the distinct report names of the
files kept, a table bounded by the retention period.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html

from reports.cleanup import FilesNotDeleted, delete_report_files
from reports.models import ReportFile
from reports.storage import file_response


class ReportFilter(admin.SimpleListFilter):
    title = "report"
    parameter_name = "report"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        names = ReportFile.objects.order_by("report").values_list("report", flat=True).distinct()
        return [(name, name) for name in names]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        return queryset.filter(report=self.value()) if self.value() else queryset


class RunFilter(admin.SimpleListFilter):
    """``?run=<run id>``: the files of one run (the run's page links here); offered only when asked for."""

    title = "run"
    parameter_name = "run"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        try:
            run_id = uuid.UUID(value)
        except ValueError:  # not a run id: no file, as for an unknown run
            return queryset.none()
        return queryset.filter(run_id=run_id)


def download_url(report_file: ReportFile) -> str:
    return reverse("admin:reports_reportfile_download", args=[report_file.pk])


@admin.register(ReportFile)
class ReportFileAdmin(admin.ModelAdmin):
    list_display = (
        "report",
        "format",
        "run_link",
        "rows",
        "size",
        "window",
        "created_at",
        "expires_at",
        "download",
    )
    list_filter = ("format", ReportFilter, RunFilter, "created_at")
    search_fields = ("report",)
    list_select_related = False
    fields = (
        "report",
        "format",
        "run_link",
        "rows",
        "size",
        "parameters",
        "window_start",
        "window_end",
        "created_at",
        "expires_at",
        "storage_name",
        "download",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run")
    def run_link(self, report_file: ReportFile) -> str:
        if report_file.run_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:jobs_jobrun_change", args=[report_file.run_id]),
            str(report_file.run_id)[:8],
        )

    @admin.display(description="size", ordering="size_bytes")
    def size(self, report_file: ReportFile) -> str:
        return filesizeformat(report_file.size_bytes)

    @admin.display(description="window (UTC)")
    def window(self, report_file: ReportFile) -> str:
        if report_file.window_start is None and report_file.window_end is None:
            return "—"
        start = f"{report_file.window_start:%Y-%m-%d %H:%M}" if report_file.window_start else "…"
        end = f"{report_file.window_end:%Y-%m-%d %H:%M}" if report_file.window_end else "…"
        return f"{start} → {end}"

    @admin.display(description="download")
    def download(self, report_file: ReportFile) -> str:
        return format_html('<a href="{}">{}</a>', download_url(report_file), report_file.format.upper())

    def get_urls(self) -> list:
        own = [
            path(
                "<int:pk>/download/",
                self.admin_site.admin_view(self.download_view),
                name="reports_reportfile_download",
            )
        ]
        return own + super().get_urls()

    def download_view(self, request: HttpRequest, pk: int) -> FileResponse:
        report_file = get_object_or_404(ReportFile, pk=pk)
        if not self.has_view_permission(request, report_file):
            raise PermissionDenied
        return file_response(report_file)

    def delete_model(self, request: HttpRequest, obj: ReportFile) -> None:
        self.delete_queryset(request, ReportFile.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            delete_report_files(queryset)
        except FilesNotDeleted as exc:
            messages.error(request, str(exc))
