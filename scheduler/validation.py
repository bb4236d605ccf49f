"""The one check that a schedule is fit for beat (design guarantee 6).

Called by the admin form, by model validation and by a ``pre_save`` signal, so
bad input is refused the same way whether it comes from the admin, the API, an
import or the ORM: invalid cron, unknown time zone, a cron that can never fire,
an unknown job, arguments that do not bind, impossible time limits. Nothing is
saved when any of these fails.

A ``PeriodicTask`` save is checked only when it changes what runs when
(:func:`changed_schedule_fields`). django-celery-beat's own scheduler saves
``last_run_at`` / ``total_run_count`` after every dispatch, also on rows that
were never validated (written before this app, or by ``bulk_create``); such a
save must not be refused, or its ``sync()`` fails during a migration.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
from django.db.models.fields import Field
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.catalog import validate_job_call
from scheduler.beat.slots import CronSpec, InvalidCron, next_cron_slot, parse_cron


def cron_expression(crontab: CrontabSchedule) -> str:
    return " ".join(
        str(part)
        for part in (
            crontab.minute,
            crontab.hour,
            crontab.day_of_month,
            crontab.month_of_year,
            crontab.day_of_week,
        )
    )


def validate_cron(expression: str, timezone_name: str) -> None:
    """Raise ``ValidationError`` for a bad cron, an unknown zone, or a cron that never fires."""
    try:
        ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            {"timezone": f"{timezone_name!r} is not an IANA time zone (like 'Europe/Berlin')."}
        ) from None
    try:
        parse_cron(expression)
    except InvalidCron as exc:
        raise ValidationError({"minute": str(exc)}) from None
    if next_cron_slot(CronSpec(expression, timezone_name), datetime.now(UTC)) is None:
        raise ValidationError(
            {"day_of_month": f"{expression!r} can never fire (no such date); check day and month."}
        )


def validate_crontab(crontab: CrontabSchedule) -> None:
    validate_cron(cron_expression(crontab), str(crontab.timezone))


def validate_periodic_task(task: PeriodicTask) -> None:
    """Check the job and its arguments against the catalog."""
    validate_job_call(task.task, task.args, task.kwargs)


# What django-celery-beat's scheduler writes after each dispatch (ModelEntry.save),
# the ``auto_now`` stamp every save rewrites, and free text no beat reads.
NON_SCHEDULE_FIELDS = frozenset({"last_run_at", "total_run_count", "date_changed", "description"})

# PeriodicTask.save() stores a blank value of these as None; a row written
# without save() (bulk_create, update) may still hold "". Both mean "not set".
_BLANK_MEANS_UNSET = frozenset({"queue", "exchange", "routing_key"})


def _schedule_fields() -> list[Field]:
    return [
        field
        for field in PeriodicTask._meta.concrete_fields
        if not field.primary_key and field.name not in NON_SCHEDULE_FIELDS
    ]


def _comparable(field: Field, value: object) -> object:
    return (value or None) if field.name in _BLANK_MEANS_UNSET else value


def changed_schedule_fields(
    task: PeriodicTask, update_fields: Iterable[str] | None = None, using: str | None = None
) -> frozenset[str]:
    """Names of the fields defining ``task``'s schedule that saving it would change.

    Every field but ``NON_SCHEDULE_FIELDS`` defines the schedule (job, args,
    kwargs, name, queue and routing, the crontab/interval/solar/clocked keys,
    enabled, one_off, start_time, expires, ...).

    - A new task (or one whose row is gone): all of them.
    - ``update_fields`` given: the defining fields it names, without a query
      (named counts as changed, even if the value is the same).
    - Otherwise: the fields whose value differs from the stored row, read with
      one SELECT. A value that compares unequal for a reason other than an edit
      (say, a naive datetime) counts as changed: a doubt means "validate".
    """
    fields = _schedule_fields()
    if update_fields is not None:
        named = set(update_fields)
        return frozenset(f.name for f in fields if f.name in named or f.attname in named)
    every_field = frozenset(f.name for f in fields)
    if task._state.adding or task.pk is None:
        return every_field
    # attname: compare the foreign keys' ids, without loading the schedules.
    stored = (
        PeriodicTask._base_manager.using(using)
        .filter(pk=task.pk)
        .values(*(f.attname for f in fields))
        .first()
    )
    if stored is None:
        return every_field
    return frozenset(
        f.name
        for f in fields
        if _comparable(f, getattr(task, f.attname)) != _comparable(f, stored[f.attname])
    )


def validate_periodic_task_save(
    task: PeriodicTask, update_fields: Iterable[str] | None = None, using: str | None = None
) -> bool:
    """Validate a save of ``task`` if it changes the schedule; return whether it does.

    Raises ``ValidationError`` (nothing is saved) when the save changes a
    defining field and the result does not pass :func:`validate_periodic_task`.
    Not checked, because beat runs nothing new after them:

    - saves that change no defining field (django-celery-beat's bookkeeping);
    - saves whose only change is disabling the task (django-celery-beat's
      scheduler disables rows itself: expired, one-off done, arguments it
      cannot parse). They still return True: beat must drop the entry.
    """
    changed = changed_schedule_fields(task, update_fields, using)
    if changed and not (changed == {"enabled"} and not task.enabled):
        validate_periodic_task(task)
    return bool(changed)
