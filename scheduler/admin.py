"""Schedules in the admin: django-celery-beat's pages plus our policy on the same page.

The periodic-task form validates the job name and arguments against the job
catalog, and the crontab form refuses crons that are invalid, in an unknown
time zone, or can never fire; an invalid page saves nothing.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django_celery_beat.admin import CrontabScheduleAdmin as BeatCrontabAdmin
from django_celery_beat.admin import IntervalScheduleAdmin as BeatIntervalAdmin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.admin import PeriodicTaskForm as BeatPeriodicTaskForm
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import validate_job_call
from scheduler.admin_actions import ScheduleActionsMixin
from scheduler.admin_audit import ScheduleAuditMixin
from scheduler.admin_columns import ScheduleColumnsMixin
from scheduler.admin_history import ScheduleHistoryMixin
from scheduler.models import SchedulePolicy
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


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(
    ScheduleActionsMixin,
    ScheduleColumnsMixin,
    ScheduleHistoryMixin,
    ScheduleAuditMixin,
    BeatPeriodicTaskAdmin,
):
    form = PeriodicTaskForm
    inlines = [SchedulePolicyInline]
    change_form_template = "admin/scheduler/schedule_change_form.html"


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
