"""A schedule's page: its last runs, each linking to the run's page, and a link to all of them.

A run still waiting or running shows its progress in one line
(``jobs.admin_progress.compact_progress``: percent, done / total, message,
or what it waits for), read from the run's own columns: no query more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.urls import reverse

from jobs.admin_lists import format_duration, format_utc
from jobs.admin_progress import compact_progress
from jobs.models import JobRun

RECENT_RUNS = 20
# The history shows a line of each error; the run page has the whole message and traceback.
HISTORY_FIELDS = (
    "id",
    "status",
    "origin",
    "scheduled_for",
    "lateness_ms",
    "duration_ms",
    "worker",
    "attempt",
    "error_type",
    "error_message",
    "progress_done",
    "progress_total",
    "progress_message",
    "progress_updated_at",
    "waiting_for",
    "waiting_since",
)


@dataclass(frozen=True)
class HistoryRow:
    """One run as the schedule page's history shows it."""

    url: str
    status: str
    status_label: str
    origin: str
    slot: str
    lateness: str
    duration: str
    worker: str
    attempt: int
    error: str
    progress: str


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def history_row(run: JobRun) -> HistoryRow:
    error = first_line(run.error_message)
    if run.error_type:
        error = f"{run.error_type}: {error}" if error else run.error_type
    return HistoryRow(
        url=reverse("admin:jobs_jobrun_change", args=[run.pk]),
        status=run.status,
        status_label=run.get_status_display(),
        origin=run.origin,
        slot=format_utc(run.scheduled_for),
        lateness=format_duration(run.lateness_ms) if run.lateness_ms is not None else "",
        duration=format_duration(run.duration_ms),
        worker=run.worker,
        attempt=run.attempt,
        error=error,
        progress=compact_progress(run),
    )


def recent_runs(schedule_id: int, count: int = RECENT_RUNS) -> list[HistoryRow]:
    """The schedule's newest ``count`` runs: one query, ``one_run_per_slot`` read backwards."""
    runs = JobRun.objects.filter(schedule_id=schedule_id).order_by("-scheduled_for").only(*HISTORY_FIELDS)
    return [history_row(run) for run in runs[:count]]


class ScheduleHistoryMixin(admin.ModelAdmin):
    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra: dict[str, Any] = {}
        if object_id and str(object_id).isdigit():
            extra = {
                "recent_runs": recent_runs(int(object_id)),
                "recent_runs_count": RECENT_RUNS,
                "all_runs_url": f"{reverse('admin:jobs_jobrun_changelist')}?schedule={int(object_id)}",
            }
        extra_context = {**(extra_context or {}), **extra}
        return super().change_view(request, object_id, form_url, extra_context)
