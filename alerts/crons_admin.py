"""The admin's "Sentry Crons monitors" page: what each schedule is to Sentry Crons, read-only.

One row per schedule: its name, job, the monitor's slug (the policy's stable
slug, what Sentry keys the monitor by) and either the ``monitor_config`` its
next check-in sends or why it is not a monitor ("not a Crons monitor: 90 s
interval … covered by the platform's own detector"). Registered by
``alerts.admin``, which imports this module. Nothing is edited here: schedules are edited on
their own page, and the next run's check-in carries the change to Sentry.

A list page costs the same number of queries whatever its length: the
crontab, interval, clocked and policy rows are joined, and the jobs' default
hard limits (for ``max_runtime``) are read once per page.
"""

from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from alerts.admin import ReadOnlyAdmin
from alerts.crons import monitor_config_for, monitor_slug
from alerts.models import SentryMonitor
from jobs.models import JobDefinition
from scheduler.models import SchedulePolicy


def _policy(schedule: SentryMonitor) -> SchedulePolicy | None:
    try:
        return schedule.policy  # reverse one-to-one
    except SchedulePolicy.DoesNotExist:
        return None


@admin.register(SentryMonitor)
class SentryMonitorAdmin(ReadOnlyAdmin):
    list_display = ("name", "task", "slug", "sentry_crons")
    list_select_related = ("crontab", "interval", "clocked", "solar", "policy")
    search_fields = ("name", "task", "policy__slug")
    ordering = ("name",)
    fields = ("name", "task", "slug", "sentry_crons")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[SentryMonitor]:
        self._job_hard_limits = dict(JobDefinition.objects.values_list("name", "hard_time_limit"))
        return super().get_queryset(request)

    @admin.display(description="monitor slug")
    def slug(self, schedule: SentryMonitor) -> str:
        policy = _policy(schedule)
        return monitor_slug(policy.slug) if policy is not None else "—"

    @admin.display(description="Sentry Crons")
    def sentry_crons(self, schedule: SentryMonitor) -> str:
        policy = _policy(schedule)
        if policy is None:
            return "not a Crons monitor: the schedule has no policy row, so no stable slug"
        config = monitor_config_for(
            schedule, policy=policy, job_hard_limits=getattr(self, "_job_hard_limits", None)
        )
        if isinstance(config, str):
            return config
        return format_html("<code>{}</code>", json.dumps(config, sort_keys=True))
