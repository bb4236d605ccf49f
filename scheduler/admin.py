"""Schedules in the admin: django-celery-beat's pages plus our policy on the same page.

The periodic-task form validates the job name and arguments against the job
catalog, and the crontab form refuses crons that are invalid, in an unknown
time zone, or can never fire; an invalid page saves nothing.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import CrontabScheduleAdmin as BeatCrontabAdmin
from django_celery_beat.admin import IntervalScheduleAdmin as BeatIntervalAdmin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.admin import PeriodicTaskForm as BeatPeriodicTaskForm
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.admin_lists import JobFilter
from jobs.catalog import validate_job_call
from jobs.models import JobRun
from scheduler.models import SchedulePolicy
from scheduler.services import (
    EnabledChange,
    RunsNow,
    disable_schedules,
    enable_schedules,
    run_schedules_now,
    toggle_schedules,
)
from scheduler.validation import (
    changed_schedule_fields,
    validate_cron,
    validate_interval,
    validate_periodic_task,
    validate_policy,
)


def add_errors(form: forms.BaseForm, error: ValidationError, fallback_field: str | None = None) -> None:
    """Attach a ValidationError's messages to the form fields it names."""
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            target = field if field in form.fields else fallback_field
            for message in messages:
                form.add_error(target, message)
    else:
        form.add_error(fallback_field, error)


class PeriodicTaskForm(BeatPeriodicTaskForm):
    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            validate_job_call(data.get("task", ""), data.get("args", "[]"), data.get("kwargs", "{}"))
        except ValidationError as exc:
            add_errors(self, exc)
        return data

    def _post_clean(self):
        """Run the save-time check on the instance as it will be saved, so it is a form error, not a 500."""
        # django-stubs leaves out ModelForm's private _post_clean, which Django calls after clean().
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        try:
            validate_periodic_task(self.instance, changed_schedule_fields(self.instance))
        except ValidationError as exc:
            add_errors(self, exc)


class PolicyFormSet(BaseInlineFormSet):
    def clean(self):
        """Validate the policy against the task as it is about to be saved (new, or with the page's edits).

        Its job's default limits and its schedule's period (jitter) come from
        the task; the model's own ``clean`` cannot see it here (an inline whose
        key is the task's primary key gets no task until saved).
        """
        super().clean()
        for form in self.forms:
            if form.instance._state.adding and not form.has_changed():  # an untouched extra form
                continue
            if not hasattr(form, "cleaned_data") or form.errors:
                continue
            try:
                validate_policy(form.instance, task=self.instance)
            except ValidationError as exc:
                add_errors(form, exc)

    def save_new(self, form, commit=True):
        """Update the policy row the task's post-save signal already created.

        Saving a second "new" row with the same primary key would turn into an
        UPDATE that blanks the fields the form does not show (created_at, slug).
        """
        policy, _ = SchedulePolicy.objects.get_or_create(task=self.instance)
        for name in form.changed_data:
            setattr(policy, name, form.cleaned_data[name])
        if commit:
            policy.save()
        return policy


class SchedulePolicyInline(admin.StackedInline):
    model = SchedulePolicy
    formset = PolicyFormSet
    can_delete = False
    min_num = 0
    max_num = 1
    verbose_name = "Run policy (time limits, queue, catch-up, overlap, alerting)"
    fields = (
        ("soft_time_limit", "hard_time_limit"),
        "queue",
        ("catchup", "overlap"),
        ("starting_deadline", "jitter"),
        ("grace", "late_after", "expected_duration"),
        ("failures_before_alert", "successes_before_recovery", "remind_every"),
        "slug",
        "problem",
        "last_slot_at",
    )
    readonly_fields = ("slug", "problem", "last_slot_at")


admin.site.unregister(PeriodicTask)


class ScheduleJobFilter(JobFilter):
    job_field = "task"


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    form = PeriodicTaskForm
    inlines = [SchedulePolicyInline]
    # django-celery-beat's admin is untyped, so mypy takes its 7-tuple for the attribute's type.
    list_display = (*BeatPeriodicTaskAdmin.list_display, "problem")  # type: ignore[assignment]
    # A list page's queries stay the same at any number of schedules: the job
    # filter reads the catalog (not DISTINCT over every schedule), there is no
    # date hierarchy (it scans every start time) and no second full COUNT(*).
    list_filter = ["enabled", "one_off", ScheduleJobFilter, "start_time", "last_run_at"]
    date_hierarchy = None  # type: ignore[assignment]  # its stub says str; the admin takes None
    show_full_result_count = False

    # Ours, under django-celery-beat's names and labels. Its own used QuerySet.update()
    # (no change-log row: beat heard of the edit at its next reconcile; no validation)
    # and ran tasks with apply_async from this process (no record, no policy).
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        # django-celery-beat's get_queryset already calls select_related, so the
        # admin would skip list_select_related: the policy joins here instead.
        return super().get_queryset(request).select_related("policy")

    @admin.display(description="problem")
    def problem(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        return policy.problem if policy else ""

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


class CrontabForm(forms.ModelForm):
    class Meta:
        model = CrontabSchedule
        fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "timezone")

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        expression = " ".join(
            str(data.get(f, "*")) for f in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )
        try:
            validate_cron(expression, str(data.get("timezone", "UTC")))
        except ValidationError as exc:
            add_errors(self, exc)
        return data


class IntervalForm(forms.ModelForm):
    class Meta:
        model = IntervalSchedule
        fields = ("every", "period")

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        try:
            # Both fields are required: without errors, both are here.
            validate_interval(data["every"], data["period"])
        except ValidationError as exc:
            add_errors(self, exc)
        return data


admin.site.unregister(IntervalSchedule)


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(BeatIntervalAdmin):
    form = IntervalForm


admin.site.unregister(CrontabSchedule)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(BeatCrontabAdmin):
    form = CrontabForm
