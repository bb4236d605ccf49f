"""The one check that a schedule is fit for beat (design guarantee 6).

Called by the admin form, by model validation and by a ``pre_save`` signal, so
bad input is refused the same way whether it comes from the admin, the API, an
import or the ORM: invalid cron, unknown time zone, a cron that can never fire,
an unknown job, arguments that do not bind, impossible time limits. Nothing is
saved when any of these fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
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
