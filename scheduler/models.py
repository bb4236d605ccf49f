"""Our 1:1 policy row beside django-celery-beat's ``PeriodicTask``.

django-celery-beat's models stay the source of what runs when, so its data and
admin keep working; ``SchedulePolicy`` adds what a production scheduler needs
per schedule: time-limit and queue overrides, catch-up and overlap policies,
the starting deadline, a stable slug for Sentry Crons monitors, and what
on-call alerting judges a run by (grace, lateness and duration thresholds,
failures before alerting, successes before recovery, reminder interval).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from scheduler.validation import validate_policy


class CatchUp(models.TextChoices):
    LATEST = "latest", "latest: run the newest missed slot once"
    ALL = "all", "all: run every missed slot, oldest first (bounded)"
    NONE = "none", "none: record missed slots, run nothing"


class Overlap(models.TextChoices):
    ALLOW = "allow", "allow: start regardless"
    SKIP = "skip", "skip: record 'skipped' while a run is queued or running"
    REPLACE = "replace", "replace: revoke the running one and start"


def new_slug() -> str:
    return uuid.uuid4().hex[:12]


class SchedulePolicy(models.Model):
    task = models.OneToOneField(
        PeriodicTask, primary_key=True, on_delete=models.CASCADE, related_name="policy"
    )
    slug = models.SlugField(
        max_length=64,
        unique=True,
        default=new_slug,
        help_text="Stable key for the Sentry Crons monitor; survives renames.",
    )
    soft_time_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; empty: the job's default."
    )
    hard_time_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; empty: the job's default."
    )
    queue = models.CharField(max_length=200, blank=True, help_text="Empty: the job's default queue.")
    catchup = models.CharField(max_length=8, choices=CatchUp.choices, default=CatchUp.LATEST)
    overlap = models.CharField(max_length=8, choices=Overlap.choices, default=Overlap.ALLOW)
    starting_deadline = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds after its slot by which a run must start, or it is missed.",
    )
    anchor = models.DateTimeField(
        default=timezone.now, help_text="Interval schedules fire at anchor + k × every."
    )
    jitter = models.PositiveIntegerField(
        default=0,
        help_text="Seconds: spread dispatch over [slot, slot + jitter) to avoid thundering herds; "
        "the run keeps its slot.",
    )
    last_slot_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="The newest slot beat claimed, advanced in the claim's transaction.",
    )
    grace = models.PositiveIntegerField(
        default=60,
        help_text="Seconds after its slot a run may start before the slot counts as missed and "
        "pages (Sentry Crons: the check-in margin, in whole minutes).",
    )
    late_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds: a run that starts later than this after its slot is late (a warning, "
        "not a page). Empty: never judged late.",
    )
    expected_duration = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds: a run still running after this is overrunning (alerted before the hard "
        "limit kills it). Empty: only the time limits judge duration.",
    )
    failures_before_alert = models.PositiveSmallIntegerField(
        default=1,
        help_text="Consecutive failed runs (after their last retry) before an incident opens "
        "(Sentry Crons: failure_issue_threshold).",
    )
    successes_before_recovery = models.PositiveSmallIntegerField(
        default=1,
        help_text="Consecutive successful runs that resolve an open incident "
        "(Sentry Crons: recovery_threshold).",
    )
    remind_every = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds between reminders while an incident stays open; 0: never remind; "
        "empty: ALERT_REMINDER_SECONDS.",
    )
    problem = models.CharField(
        max_length=500,
        blank=True,
        editable=False,
        help_text="Set by beat, e.g. when no live worker serves this job's queue.",
    )
    paused_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When it was paused; empty: not paused."
    )
    paused_until = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="A paused schedule resumes by itself at this time; empty: until resumed by hand.",
    )
    pause_note = models.CharField(
        max_length=500, blank=True, editable=False, help_text="Why it is paused; kept on each skipped run."
    )
    paused_by = models.CharField(max_length=150, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "schedule policy"
        verbose_name_plural = "schedule policies"
        # Beyond Django's view/change of a schedule: who may start runs and who may pause.
        permissions = [
            ("run_schedule", "Can run a schedule now"),
            ("pause_schedule", "Can pause and resume a schedule"),
        ]
        indexes = [
            # The few schedules with a problem (quarantined by beat): the alert
            # detector reads them every cycle without walking every policy.
            models.Index(fields=["problem"], condition=~models.Q(problem=""), name="policy_with_problem"),
            # The few paused schedules: the admin's paused filter, the dashboard and
            # the alert detector find them without walking every policy.
            models.Index(
                fields=["paused_at"], condition=models.Q(paused_at__isnull=False), name="policy_paused"
            ),
        ]

    def __str__(self) -> str:
        return f"policy of {self.task_id}"

    def clean(self) -> None:
        # An admin inline has no task yet (its key is the task's primary key):
        # its formset validates the policy against the page's task instead.
        if self.task_id is not None:
            validate_policy(self)


class ScheduleChange(models.Model):
    """The change log beat tails: one row per schedule touched by a write.

    Written by signals (every ORM save/delete of a task, its policy or the
    crontab/interval/clocked row it uses) and by ``scheduler.services`` for
    bulk edits, in the writer's transaction. ``task_id`` is not a foreign key:
    a deleted task's change must outlive it.
    """

    id = models.BigAutoField(primary_key=True)
    task_id = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"change {self.id}: task {self.task_id}"


class BeatLease(models.Model):
    """Which beat process leads. ``token`` is the fencing token.

    It increases by one each time another process takes the lease, and every
    slot claim re-checks it inside the claim's transaction, so a leader that
    lost the lease (paused, partitioned) cannot claim a slot afterwards.
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=255, blank=True)
    token = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField()
    renewed_at = models.DateTimeField(null=True, blank=True)
    status = models.JSONField(
        default=dict, blank=True, help_text="The leader's view, for `manage.py beatstatus`."
    )

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or 'nobody'} (token {self.token})"
