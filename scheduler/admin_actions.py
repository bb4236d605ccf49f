"""The schedule list's actions and the schedule page's buttons: each goes through ``scheduler.services``.

django-celery-beat's own actions used ``QuerySet.update()`` (no change-log
row: beat heard of the edit at its next reconcile; no validation) and ran
tasks with ``apply_async`` from the web process (no record, no policy).
Ours keep django-celery-beat's names and labels, and add pause (with a note
and an optional end, on an intermediate page), resume and duplicate.

Permissions: running needs ``scheduler.run_schedule``, pausing and resuming
``scheduler.pause_schedule``, enabling, disabling and duplicating the change
permission on schedules. Someone without one is offered neither the action
nor the button, and a direct POST to a button's URL is refused (403).
The buttons POST (with the CSRF token) to URLs added by ``get_urls``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST
from django_celery_beat.models import PeriodicTask

from jobs.models import JobRun
from scheduler.beat.entries import pause_message
from scheduler.models import SchedulePolicy
from scheduler.services import (
    PAUSE_NOTE_MAX,
    EnabledChange,
    RunsNow,
    disable_schedules,
    duplicate_schedule,
    enable_schedules,
    pause_schedules,
    paused_now,
    resume_schedules,
    run_schedules_now,
    toggle_schedules,
    validate_pause,
)

PAUSE_TEMPLATE = "admin/scheduler/pause_schedules.html"
SHOWN_NAMES = 50  # the pause page names this many of the selected schedules, then counts the rest
# (name, label, hint) of the schedule page's pause button, or its resume button once paused.
PAUSE = ("pause", "Pause…", "Skip its slots, with a note, until a time or until resumed")
RESUME = ("resume", "Resume", "Its next slot runs; slots skipped while paused are not caught up")


def resume_button(paused_by: str, until: datetime | None, note: str) -> tuple[str, str, str]:
    """The resume button of a paused schedule; its hint says the pause as its skipped runs do."""
    name, label, hint = RESUME
    said = pause_message(paused_by, until, note)
    return name, label, f"{said[:1].upper()}{said[1:]}. {hint}"


class PauseForm(forms.Form):
    """What a pause asks for; checked by ``scheduler.services.validate_pause``, the service's own rule."""

    note = forms.CharField(
        max_length=PAUSE_NOTE_MAX,
        required=False,  # validate_pause says why it is needed, in words
        widget=forms.TextInput(attrs={"size": 60, "autofocus": True}),
        help_text="Why it is paused. Kept on every slot skipped while paused.",
    )
    until = forms.DateTimeField(
        required=False,
        label="Resume at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["until"].help_text = (
            f"Optional, in {timezone.get_current_timezone_name()}: it resumes by itself then. "
            "Empty: paused until someone resumes it."
        )

    def clean(self) -> dict:
        data = super().clean() or {}
        if "note" in data and "until" in data:
            try:
                data["note"] = validate_pause(data["note"], data["until"])
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    for error in errors:
                        self.add_error(field, error)
        return data


class ScheduleActionsMixin(admin.ModelAdmin):
    # Any: django-celery-beat's admin (a later base) types its own as a tuple of exactly four.
    actions: Any = (
        "enable_tasks",
        "disable_tasks",
        "toggle_tasks",
        "run_tasks",
        "pause_tasks",
        "resume_tasks",
        "duplicate_tasks",
    )

    # --- permissions (Django calls has_<name>_permission for an action's permissions=[name]) ---
    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("scheduler.run_schedule")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("scheduler.pause_schedule")

    # --- list actions --------------------------------------------------------------------
    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, enable_schedules(queryset), unchanged="Already enabled")

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, disable_schedules(queryset), unchanged="Already disabled")

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_enabled_change(request, toggle_schedules(queryset), unchanged="Unchanged")

    @admin.action(description="Run selected tasks", permissions=["run"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_runs(request, run_schedules_now(queryset, requested_by=request.user.get_username()))

    @admin.action(description="Pause selected schedules…", permissions=["pause"])
    def pause_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> HttpResponse | None:
        """The intermediate page first; applied (then back to the list) once its form is valid."""
        return self.pause_page(request, queryset, form_action="")

    @admin.action(description="Resume selected schedules", permissions=["pause"])
    def resume_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.report_resumed(request, resume_schedules(queryset))

    @admin.action(description="Duplicate selected schedule (disabled copy)", permissions=["change"])
    def duplicate_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        copies = [duplicate_schedule(task) for task in queryset.order_by("pk")]
        self.report_copies(request, copies)

    # --- the pause page, shared by the action and the schedule page's button ----------------
    def pause_page(
        self, request: HttpRequest, queryset: QuerySet[PeriodicTask], form_action: str
    ) -> HttpResponse | None:
        """Show the pause form for ``queryset``, or apply it; None once applied.

        The form is posted again with the selected ids (``_selected_action``)
        and ``apply``; an invalid note or end time shows the page again with
        the error and changes nothing.
        """
        form = PauseForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            names = pause_schedules(
                queryset,
                note=form.cleaned_data["note"],
                until=form.cleaned_data["until"],
                paused_by=request.user.get_username(),
            )
            self.report_paused(request, names, form.cleaned_data["until"])
            return None
        # "Select all N" on the list: carry the flag (and one id, which Django requires), not
        # N ids; the list's filters ride along in the page's URL, which the form posts back to.
        across = bool(not form_action and request.POST.get("select_across") == "1")
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: 1 if across else None])
        shown = list(queryset.order_by("name").values_list("pk", "name")[:SHOWN_NAMES])
        count = queryset.count()
        context = {
            **self.admin_site.each_context(request),
            "title": "Pause schedules",
            "opts": self.model._meta,
            "form": form,
            "shown": shown,
            "count": count,
            "more": count - len(shown),
            "ids": ids,
            "select_across": across,
            "form_action": form_action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "on_list": not form_action,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, PAUSE_TEMPLATE, context)

    # --- the schedule page's buttons -----------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        info = self.model._meta.app_label, self.model._meta.model_name
        buttons = [
            ("run", self.run_view),
            ("pause", self.pause_view),
            ("resume", self.resume_view),
            ("duplicate", self.duplicate_view),
        ]
        mine = [
            path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(require_POST(view)),
                name="{}_{}_{}".format(*info, name),
            )
            for name, view in buttons
        ]
        return mine + super().get_urls()

    def _button(
        self, request: HttpRequest, object_id: str, allowed: Callable[[HttpRequest], bool]
    ) -> QuerySet[PeriodicTask]:
        """The one schedule a button acts on, as a queryset; 403 without the permission, 404 if gone."""
        if not allowed(request):
            raise PermissionDenied
        task = get_object_or_404(PeriodicTask, pk=object_id)
        return PeriodicTask.objects.filter(pk=task.pk)

    def _back_to(self, object_id: str) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:django_celery_beat_periodictask_change", args=[object_id]))

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        selected = self._button(request, object_id, self.has_run_permission)
        self.report_runs(request, run_schedules_now(selected, requested_by=request.user.get_username()))
        return self._back_to(object_id)

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        selected = self._button(request, object_id, self.has_pause_permission)
        url = reverse("admin:django_celery_beat_periodictask_pause", args=[object_id])
        return self.pause_page(request, selected, form_action=url) or self._back_to(object_id)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        selected = self._button(request, object_id, self.has_pause_permission)
        self.report_resumed(request, resume_schedules(selected))
        return self._back_to(object_id)

    def duplicate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        selected = self._button(request, object_id, self.has_change_permission)
        copy = duplicate_schedule(selected.get())
        self.report_copies(request, [copy])
        return self._back_to(str(copy.pk))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "schedule_actions": self.buttons_for(request, object_id)}
        return super().change_view(request, object_id, form_url, extra_context)

    def buttons_for(self, request: HttpRequest, object_id: str) -> list[dict[str, str]]:
        """The page's buttons this user may press: label, URL and a hint (empty for a missing task)."""
        if not object_id.isdigit():
            return []  # not a schedule's page: Django's change_view says so
        pause = (
            SchedulePolicy.objects.filter(paused_now(), task_id=int(object_id))
            .values_list("paused_by", "paused_until", "pause_note")
            .first()
        )

        def url(name: str) -> str:
            return reverse(f"admin:django_celery_beat_periodictask_{name}", args=[object_id])

        offered = [
            (self.has_run_permission, "run", "Run now", "One run now, recorded as manual with your name"),
            (self.has_pause_permission, *(PAUSE if pause is None else resume_button(*pause))),
            (self.has_change_permission, "duplicate", "Duplicate", "A disabled copy named “… (copy)”"),
        ]
        buttons = [
            {"name": name, "label": label, "hint": hint, "url": url(name)}
            for allowed, name, label, hint in offered
            if allowed(request)
        ]
        return buttons

    # --- messages --------------------------------------------------------------------------
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

    def report_paused(self, request: HttpRequest, names: list[str], until: datetime | None) -> None:
        end = (
            f"until {timezone.localtime(until):%Y-%m-%d %H:%M %Z}, then they resume by themselves"
            if until is not None
            else "until resumed"
        )
        self.message_user(
            request,
            f"Paused {counted(names)} {end}. Their slots are recorded as skipped with your note.",
            messages.SUCCESS,
        )

    def report_resumed(self, request: HttpRequest, names: list[str]) -> None:
        if names:
            self.message_user(
                request,
                f"Resumed {counted(names)}: the next slot runs; "
                "slots skipped while paused are not caught up.",
                messages.SUCCESS,
            )
        else:
            self.message_user(request, "None of the selected schedules was paused.", messages.INFO)

    def report_copies(self, request: HttpRequest, copies: list[PeriodicTask]) -> None:
        links = format_html_join(
            ", ",
            '<a href="{}">“{}”</a>',
            ((reverse("admin:django_celery_beat_periodictask_change", args=[c.pk]), c.name) for c in copies),
        )
        self.message_user(
            request,
            format_html(
                "Created {} (disabled, so it does not fire twice): {}. Enable it when ready.",
                "a copy" if len(copies) == 1 else f"{len(copies)} copies",
                links,
            ),  # fmt: skip
            messages.SUCCESS,
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
