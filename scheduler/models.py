"""Our 1:1 policy row beside django-celery-beat's ``PeriodicTask``.

django-celery-beat's models stay the source of what runs when, so its data and
admin keep working; ``SchedulePolicy`` adds what a production scheduler needs
per schedule: time-limit and queue overrides, catch-up and overlap policies,
the starting deadline, and a stable slug for Sentry Crons monitors.
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django_celery_beat.models import PeriodicTask


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
    queue = models.CharField(
        max_length=200, blank=True, help_text="Empty: the job's default queue."
    )
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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "schedule policy"
        verbose_name_plural = "schedule policies"

    def __str__(self) -> str:
        return f"policy of {self.task_id}"

    def clean(self) -> None:
        validate_time_limits(self.soft_time_limit, self.hard_time_limit)


def validate_time_limits(soft: int | None, hard: int | None) -> None:
    """Reject limits that cannot both hold: zero, negative, or hard before soft."""
    errors: dict[str, str] = {}
    for field, value in (("soft_time_limit", soft), ("hard_time_limit", hard)):
        if value is not None and value <= 0:
            errors[field] = f"{value} is not a time limit: give a number of seconds above 0."
    if not errors and soft is not None and hard is not None and hard <= soft:
        errors["hard_time_limit"] = (
            f"The hard limit ({hard} s) must be longer than the soft limit ({soft} s): "
            "the soft limit lets the job clean up before the hard limit kills it."
        )
    if errors:
        raise ValidationError(errors)
