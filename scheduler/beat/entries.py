"""A beat entry: one enabled ``PeriodicTask`` with everything needed to fire it.

Built from django-celery-beat's rows plus our ``SchedulePolicy`` and the job
catalog, so the hot path never touches the ORM per schedule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import JobDefinition
from scheduler.beat.slots import CronSpec, next_clocked_slot, next_cron_slot, next_interval_slot
from scheduler.models import CatchUp, Overlap, SchedulePolicy

INTERVAL_UNITS = {
    "days": timedelta(days=1),
    "hours": timedelta(hours=1),
    "minutes": timedelta(minutes=1),
    "seconds": timedelta(seconds=1),
    "microseconds": timedelta(microseconds=1),
}


@dataclass
class Entry:
    task_id: int
    name: str
    job: str
    args: list
    kwargs: dict
    queue: str
    soft_time_limit: int | None
    hard_time_limit: int | None
    starting_deadline: timedelta
    catchup: str
    overlap: str
    cron: CronSpec | None = None
    interval: timedelta | None = None
    anchor: datetime | None = None
    clocked: datetime | None = None
    not_before: datetime | None = None
    expires: datetime | None = None
    one_off: bool = False

    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot strictly after ``after``, within start_time/expires."""
        if self.not_before is not None and after < self.not_before:
            after = self.not_before - timedelta(microseconds=1)
        if self.cron is not None:
            slot = next_cron_slot(self.cron, after)
        elif self.interval is not None and self.anchor is not None:
            slot = next_interval_slot(self.anchor, self.interval, after)
        elif self.clocked is not None:
            slot = next_clocked_slot(self.clocked, after)
        else:
            slot = None  # solar schedules are not supported by this engine
        if slot is not None and self.expires is not None and slot > self.expires:
            return None
        return slot


def _json(text: str, default):
    try:
        value = json.loads(text or "null")
    except json.JSONDecodeError:
        return default
    return default if value is None else value


def build_entry(
    task: PeriodicTask, policy: SchedulePolicy | None, definition: JobDefinition | None
) -> Entry:
    policy = policy or SchedulePolicy(task=task, anchor=task.start_time or timezone.now())
    deadline = policy.starting_deadline or settings.JOB_DEFAULT_STARTING_DEADLINE
    entry = Entry(
        task_id=task.pk,
        name=task.name,
        job=task.task,
        args=_json(task.args, []),
        kwargs=_json(task.kwargs, {}),
        queue=policy.queue or task.queue or (definition.queue if definition else "") or "default",
        soft_time_limit=policy.soft_time_limit or (definition.soft_time_limit if definition else None),
        hard_time_limit=policy.hard_time_limit or (definition.hard_time_limit if definition else None),
        starting_deadline=timedelta(seconds=deadline),
        catchup=policy.catchup or CatchUp.LATEST,
        overlap=policy.overlap or Overlap.ALLOW,
        not_before=task.start_time,
        expires=task.expires,
        one_off=task.one_off,
    )
    if task.crontab_id:
        c = task.crontab
        entry.cron = CronSpec(
            f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}",
            str(c.timezone),
        )
    elif task.interval_id:
        every = task.interval.every * INTERVAL_UNITS[task.interval.period]
        entry.interval = every
        entry.anchor = (task.start_time or policy.anchor).replace(microsecond=0)
    elif task.clocked_id:
        entry.clocked = task.clocked.clocked_time
    return entry
