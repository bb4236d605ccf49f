"""The schedule list: its columns, filters and search, with a query count constant in the table's size.

A page costs the same statements at 3 or 100,000 schedules: the page itself
(its crontab, interval, clocked and policy rows prefetched: one query each,
skipped when the page has none of that kind), a bounded count
(``BoundedCountPaginator``), and two statements for the runs of the page's
schedules (``schedule_run_facts``: last run and failure streak). Next run and
the schedule in words are computed in Python from the loaded rows, with the
code beat uses (``scheduler.describe``). No filter lists a table: the job
filter reads the catalog, the others offer fixed choices; no date hierarchy,
no full COUNT(*).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.models import PeriodicTask

from jobs.admin_lists import (
    BoundedCountPaginator,
    JobFilter,
    ScheduleRunFacts,
    format_duration,
    format_utc,
    newest_run_status,
    schedule_run_facts,
    schedules_whose_last_run_is,
)
from jobs.models import RunStatus
from scheduler.beat.entries import job_defaults
from scheduler.describe import describe_schedule, next_slots
from scheduler.models import SchedulePolicy
from scheduler.services import paused_now

NO_RUNS = ScheduleRunFacts(last_run=None, failure_streak=0)


def is_paused(policy: SchedulePolicy | None, now: datetime) -> bool:
    """The row-level twin of ``scheduler.services.paused_now``: the same rule, for a loaded policy."""
    if policy is None or policy.paused_at is None:
        return False
    return policy.paused_until is None or policy.paused_until > now


class ScheduleJobFilter(JobFilter):
    job_field = "task"


class LastRunStatusFilter(admin.SimpleListFilter):
    """Schedules whose newest run has a status (``?last_run=failed``); see ``schedules_whose_last_run_is``."""

    title = "status of last run"
    parameter_name = "last_run"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in RunStatus.choices]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if value not in RunStatus.values:
            return queryset.none()
        # Succeeded is where most schedules are: reading its runs would find nearly every
        # run and keep a tenth, so it goes straight to probing (a page is found at once).
        ids = None if value == RunStatus.SUCCEEDED else schedules_whose_last_run_is(value)
        if ids is not None:
            return queryset.filter(pk__in=ids)
        # Most schedules match: probing each schedule's newest run finds a page quickly.
        return queryset.annotate(last_run_status=newest_run_status()).filter(last_run_status=value)


class PausedFilter(admin.SimpleListFilter):
    title = "paused"
    parameter_name = "paused"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "paused"), ("no", "not paused")]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        paused = paused_now(timezone.now(), "policy__")
        if self.value() == "yes":
            return queryset.filter(paused)
        if self.value() == "no":
            return queryset.exclude(paused)
        return queryset


class ProblemFilter(admin.SimpleListFilter):
    """Schedules beat quarantined or flagged (``policy.problem``; its partial index holds only those)."""

    title = "problem"
    parameter_name = "problem"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "has a problem"), ("no", "no problem")]

    def queryset(self, request: Any, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(policy__isnull=False).exclude(policy__problem="")
        if self.value() == "no":
            return queryset.filter(Q(policy__isnull=True) | Q(policy__problem=""))
        return queryset


def next_run(task: PeriodicTask, now: datetime, defaults: dict) -> datetime | None:
    """The next slot that will run: after the pause for a paused schedule; ``None`` if none will."""
    policy = getattr(task, "policy", None)
    if is_paused(policy, now):
        assert policy is not None  # is_paused says so
        if policy.paused_until is None:
            return None  # until resumed by hand
        now = policy.paused_until
    slots = next_slots(task, now, 1, defaults)
    return slots[0] if slots else None


class ScheduleChangeList(ChangeList):
    """After loading the page, adds each schedule's runs and next run, in queries for the whole page.

    ``schedule_run_facts``: two queries for the page's last runs and streaks;
    ``job_defaults``: one query for beat's job defaults, then each next slot
    is computed in memory by beat's entry code.
    """

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        tasks = list(self.result_list)
        facts = schedule_run_facts([task.pk for task in tasks])
        defaults = job_defaults() if tasks else {}
        now = timezone.now()
        for task in tasks:
            task.run_facts = facts.get(task.pk, NO_RUNS)
            task.next_run_at = next_run(task, now, defaults)


class ScheduleColumnsMixin(admin.ModelAdmin):
    # Any: django-celery-beat's admin is untyped, so mypy takes its own 7-tuple for the type.
    list_display: Any = (
        "name",
        "job",
        "schedule_in_words",
        "time_zone",
        "state",
        "next_run",
        "last_run",
        "failure_streak",
        "problem",
    )
    list_display_links = ("name",)
    list_filter = [ScheduleJobFilter, LastRunStatusFilter, PausedFilter, ProblemFilter, "enabled"]
    search_fields = ("name", "task")
    date_hierarchy: ClassVar[Any] = None  # no date hierarchy (it scans every row); its stub says str
    show_full_result_count = False
    paginator = BoundedCountPaginator

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        # The schedule rows and the policy come by prefetch (a query each over the
        # page's ids), not django-celery-beat's joins: with a filter whose share
        # PostgreSQL misjudges (a search matching every schedule: estimated 20
        # rows), it joined all 100,000 rows before the sort and LIMIT (485 ms).
        return (
            super()
            .get_queryset(request)
            .select_related(None)
            .prefetch_related("interval", "crontab", "clocked", "policy")
        )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ScheduleChangeList

    @admin.display(description="job", ordering="task")
    def job(self, task: PeriodicTask) -> str:
        return task.task

    @admin.display(description="schedule")
    def schedule_in_words(self, task: PeriodicTask) -> str:
        return describe_schedule(task)

    @admin.display(description="time zone")
    def time_zone(self, task: PeriodicTask) -> str:
        if task.crontab is not None:
            return str(task.crontab.timezone)
        return "UTC" if task.clocked_id else "–"

    @admin.display(description="state")
    def state(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        if not task.enabled:
            return "disabled"
        if not is_paused(policy, timezone.now()):
            return "enabled"
        assert policy is not None  # is_paused says so
        until = f"until {format_utc(policy.paused_until)}" if policy.paused_until else "until resumed"
        by = f" (by {policy.paused_by})" if policy.paused_by else ""
        note = f"{policy.pause_note}{by}"
        return format_html('<span class="paused" title="{}">paused {}</span>', note, until)

    @admin.display(description="next run")
    def next_run(self, task: PeriodicTask) -> str:
        if not task.enabled:
            return "–"
        at = getattr(task, "next_run_at", None)
        if at is not None:
            return format_utc(at)
        return "– (paused)" if is_paused(getattr(task, "policy", None), timezone.now()) else "none"

    @admin.display(description="last run")
    def last_run(self, task: PeriodicTask) -> str:
        run = getattr(task, "run_facts", NO_RUNS).last_run
        if run is None:
            return "never ran"
        duration = format_duration(run.duration_ms)
        when = format_utc(run.finished_at or run.started_at or run.scheduled_for)
        return format_html(
            '<a href="{}" class="run-status status-{}">{}</a>{} · {}',
            reverse("admin:jobs_jobrun_change", args=[run.pk]),
            run.status,
            run.get_status_display(),
            f" · {duration}" if duration else "",
            when,
        )

    @admin.display(description="failure streak")
    def failure_streak(self, task: PeriodicTask) -> str:
        facts = getattr(task, "run_facts", NO_RUNS)
        if not facts.failure_streak:
            return "0"
        return f"{facts.failure_streak}+" if facts.streak_is_longer else str(facts.failure_streak)

    @admin.display(description="problem")
    def problem(self, task: PeriodicTask) -> str:
        policy = getattr(task, "policy", None)
        return policy.problem if policy else ""
