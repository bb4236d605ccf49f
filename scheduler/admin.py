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
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.admin import PeriodicTaskForm as BeatPeriodicTaskForm
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.catalog import validate_job_call
from scheduler.models import SchedulePolicy
from scheduler.validation import validate_cron


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


class PolicyFormSet(BaseInlineFormSet):
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
    verbose_name = "Run policy (time limits, queue, catch-up, overlap)"
    fields = (
        ("soft_time_limit", "hard_time_limit"),
        "queue",
        ("catchup", "overlap"),
        ("starting_deadline", "jitter"),
        "slug",
        "problem",
        "last_slot_at",
    )
    readonly_fields = ("slug", "problem", "last_slot_at")


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    form = PeriodicTaskForm
    inlines = [SchedulePolicyInline]
    list_display = (*BeatPeriodicTaskAdmin.list_display, "problem")
    list_select_related = ("policy", "interval", "crontab", "solar", "clocked")

    @admin.display(description="problem")
    def problem(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        return policy.problem if policy else ""


class CrontabForm(forms.ModelForm):
    class Meta:
        model = CrontabSchedule
        fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "timezone")

    def clean(self):
        data = super().clean()
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


admin.site.unregister(CrontabSchedule)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(BeatCrontabAdmin):
    form = CrontabForm
