"""Schedules in the admin: one schedule field with a live preview, and the policy on the same page.

The periodic-task page (``scheduler.schedule_form.ScheduleForm``) shows only
what beat honours: a job picked from the catalog with its JSON arguments, one
schedule (cron text with its time zone, an interval with its anchor, or a
one-off time) stored in django-celery-beat's rows, and the run policy in
fieldsets below. Its preview URL answers the form's fields with the schedule
in words and its next runs (``scheduler.preview``). The crontab and interval
pages stay for browsing rows; their forms refuse what beat could not run.
An invalid page saves nothing.
"""

from __future__ import annotations

from typing import cast

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django_celery_beat.admin import CrontabScheduleAdmin as BeatCrontabAdmin
from django_celery_beat.admin import IntervalScheduleAdmin as BeatIntervalAdmin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from scheduler.admin_actions import ScheduleActionsMixin
from scheduler.admin_audit import ScheduleAuditMixin
from scheduler.admin_columns import ScheduleColumnsMixin
from scheduler.admin_history import ScheduleHistoryMixin
from scheduler.describe import describe_schedule
from scheduler.models import SchedulePolicy
from scheduler.preview import schedule_preview
from scheduler.schedule_form import ScheduleForm, add_errors
from scheduler.validation import validate_cron, validate_interval, validate_policy


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
    verbose_name = "Run policy"
    verbose_name_plural = "Run policy"
    fieldsets = (
        (
            "Limits",
            {
                "fields": (("soft_time_limit", "hard_time_limit"),),
                "description": "Seconds. Empty: the job's default limits (shown beside the job).",
            },
        ),
        ("Queue", {"fields": ("queue",)}),
        ("Catch-up and overlap", {"fields": (("catchup", "overlap"),)}),
        ("Starting deadline and jitter", {"fields": (("starting_deadline", "jitter"),)}),
        (
            "Grace and alert routing",
            {
                "fields": (
                    ("grace", "late_after", "expected_duration"),
                    ("failures_before_alert", "successes_before_recovery", "remind_every"),
                )
            },
        ),
        ("Status", {"fields": (("slug", "last_slot_at"), "problem")}),
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
    form = ScheduleForm  # type: ignore[assignment]  # django-celery-beat's admin is untyped
    inlines = [SchedulePolicyInline]
    change_form_template = "admin/scheduler/schedule_change_form.html"
    fieldsets = (  # type: ignore[assignment]
        (None, {"fields": ("name", "task", ("args", "kwargs"), "enabled", "description")}),
        (
            "Schedule",
            {
                "fields": (
                    "schedule_kind",
                    ("cron", "timezone"),
                    ("every", "period", "anchor"),
                    "run_at",
                    ("start_time", "expires"),
                )
            },
        ),
        (
            "Priority",
            {
                "fields": ("priority",),
                "description": "The message priority of this schedule's runs "
                "(0-255; empty: the queue's default).",
            },
        ),
    )
    readonly_fields = ()  # type: ignore[assignment]
    # A viewer without the change permission sees the schedule in words (the page's inputs are
    # not model fields, so Django's read-only rendering could not show them) and the preview.
    read_only_fieldsets = (
        (None, {"fields": ("name", "task", ("args", "kwargs"), "enabled", "description")}),
        ("Schedule", {"fields": ("schedule_in_words", ("start_time", "expires"))}),
        ("Priority", {"fields": ("priority",)}),
    )

    def get_fieldsets(self, request, obj=None):
        if obj is not None and not self.has_change_permission(request, obj):
            return self.read_only_fieldsets
        return super().get_fieldsets(request, obj)

    @admin.display(description="Schedule")
    def schedule_in_words(self, task: PeriodicTask) -> str:
        return describe_schedule(task)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Not django-celery-beat's changeform_view: it loads every crontab row
        # (readable_crontabs, for its own template) on each page view.
        return admin.ModelAdmin.changeform_view(self, request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        info = self.model._meta.app_label, self.model._meta.model_name
        preview = path(
            "preview/", self.admin_site.admin_view(self.preview_view), name="{}_{}_preview".format(*info)
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest) -> JsonResponse:
        """The live preview: the page's fields (GET) → words, next runs, field errors, the job (JSON)."""
        if not self.has_view_permission(request):
            return JsonResponse({"error": "You may not view schedules."}, status=403)
        form_class = cast("type[ScheduleForm]", self.get_form(request))
        status, body = schedule_preview(request.GET, timezone.now(), form_class)
        return JsonResponse(body, status=status)

    def save_model(self, request, obj, form, change):
        form.save_schedule_row()
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        form.save_policy_parts()


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
