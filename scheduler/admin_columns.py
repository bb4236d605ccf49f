"""The schedule list: its columns, filters and search, with a query count constant in the table's size."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from jobs.admin_lists import JobFilter


class ScheduleJobFilter(JobFilter):
    job_field = "task"


class ScheduleColumnsMixin(admin.ModelAdmin):
    # django-celery-beat's admin is untyped, so mypy takes its 7-tuple for the attribute's type.
    list_display = (*BeatPeriodicTaskAdmin.list_display, "problem")  # type: ignore[assignment]
    # A list page's queries stay the same at any number of schedules: the job
    # filter reads the catalog (not DISTINCT over every schedule), there is no
    # date hierarchy (it scans every start time) and no second full COUNT(*).
    list_filter = ["enabled", "one_off", ScheduleJobFilter, "start_time", "last_run_at"]
    date_hierarchy = None  # type: ignore[assignment]  # its stub says str; the admin takes None
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        # django-celery-beat's get_queryset already calls select_related, so the
        # admin would skip list_select_related: the policy joins here instead.
        return super().get_queryset(request).select_related("policy")

    @admin.display(description="problem")
    def problem(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        return policy.problem if policy else ""
