"""The schedule list's actions: each goes through ``scheduler.services`` or the one dispatch path.

django-celery-beat's own actions used ``QuerySet.update()`` (no change-log
row: beat heard of the edit at its next reconcile; no validation) and ran
tasks with ``apply_async`` from the web process (no record, no policy).
Ours keep django-celery-beat's names and labels.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.models import PeriodicTask

from jobs.models import JobRun
from scheduler.services import (
    EnabledChange,
    RunsNow,
    disable_schedules,
    enable_schedules,
    run_schedules_now,
    toggle_schedules,
)


class ScheduleActionsMixin(admin.ModelAdmin):
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, enable_schedules(queryset), unchanged="Already enabled")

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, disable_schedules(queryset), unchanged="Already disabled")

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, toggle_schedules(queryset), unchanged="Unchanged")

    @admin.action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_runs(request, run_schedules_now(queryset, requested_by=request.user.get_username()))

    def report_enabled_change(self, request: HttpRequest, change: EnabledChange, unchanged: str) -> None:
        if change.enabled:
            self.message_user(request, f"Enabled {counted(change.enabled)}.", messages.SUCCESS)
        if change.disabled:
            self.message_user(
                request,
                f"Disabled {counted(change.disabled)}; beat stops firing them within a second.",
                messages.SUCCESS,
            )
        if change.unchanged:
            self.message_user(request, f"{unchanged}: {name_list(change.unchanged)}.", messages.INFO)
        for name, why in change.refused:
            self.message_user(
                request,
                f"“{name}” was not enabled, it does not pass validation: {why} "
                "Fix it on its page, then enable it.",
                messages.ERROR,
            )

    def report_runs(self, request: HttpRequest, runs: RunsNow) -> None:
        if runs.sent:
            self.message_user(
                request,
                format_html(
                    "Started {} by hand: {}.",
                    counted(runs.sent, "run"),
                    run_links(runs.sent),
                ),
                messages.SUCCESS,
            )
        if runs.outbox:
            self.message_user(
                request,
                format_html(
                    "The broker did not answer ({}). {} recorded and kept in the outbox: {}. "
                    "Beat sends {} as soon as the broker is back; do not run {} again, or {} twice.",
                    runs.broker_error,
                    counted(runs.outbox, "run") + (" is" if len(runs.outbox) == 1 else " are"),
                    run_links(runs.outbox),
                    *(("it", "it", "it runs") if len(runs.outbox) == 1 else ("them", "them", "they run")),
                ),
                messages.WARNING,
            )
        for name, why in runs.refused:
            self.message_user(request, f"“{name}” was not run: {why}", messages.ERROR)


def name_list(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(f"“{name}”" for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def counted(items: list, noun: str = "schedule") -> str:
    """How many, and which when ``items`` are names: '2 schedules: “a”, “b”', '1 run'."""
    label = f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
    return f"{label}: {name_list(items)}" if items and isinstance(items[0], str) else label


def run_links(runs: list[JobRun], limit: int = 10) -> str:
    """Links to the first ``limit`` runs' pages, each with its queue."""
    links = format_html_join(
        ", ",
        '<a href="{}">“{}”</a> on queue {}',
        (
            (reverse("admin:jobs_jobrun_change", args=[run.pk]), run.schedule_name, run.queue)
            for run in runs[:limit]
        ),
    )
    return links if len(runs) <= limit else format_html("{} and {} more", links, len(runs) - limit)
