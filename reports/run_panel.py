"""The run page's "Report" section: the files the run produced and what became of each delivery.

Registered on the run page through ``jobs.admin_panels`` (jobs never imports
reports). A run with neither files nor deliveries shows nothing. Two
queries, whatever the number of files and destinations. A file's link is
the admin's download (``reports.admin``, which checks the viewer's
permission) when that view exists, else the signed link people received.
"""

from __future__ import annotations

from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString

from jobs.models import JobRun
from reports.delivery import format_size
from reports.links import download_url
from reports.models import ReportDelivery, ReportFile

ADMIN_DOWNLOAD = "admin:reports_reportfile_download"


def file_link(file: ReportFile) -> str:
    try:
        return reverse(ADMIN_DOWNLOAD, args=[file.pk])
    except NoReverseMatch:
        return download_url(file)


def report_panel(run: JobRun) -> SafeString | None:
    files = list(ReportFile.objects.filter(run_id=run.pk).order_by("format"))
    deliveries = list(ReportDelivery.objects.filter(run_id=run.pk).order_by("id"))
    if not files and not deliveries:
        return None
    return render_to_string(
        "reports/run_panel.html",
        {
            "files": [
                {"file": file, "size": format_size(file.size_bytes), "url": file_link(file)} for file in files
            ],
            "deliveries": deliveries,
        },
    )
