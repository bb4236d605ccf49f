"""The one check that a schedule is fit for beat (guarantees 6 and 8 in ARCHITECTURE.md).

Called by the admin form, by model validation and by a ``pre_save`` signal, so
bad input is refused the same way whether it comes from the admin, the API, an
import or the ORM: invalid cron, unknown time zone, a cron that can never fire,
an unknown job, arguments that do not bind or have the wrong JSON type, JSON
that is not strict (NaN, Infinity, NUL), headers that are not a JSON object,
an interval below ``SCHEDULE_MIN_INTERVAL_SECONDS``, a solar schedule (beat
does not evaluate them), a one-off time in the past, impossible time limits
(judged on the *effective* pair: the policy's value, else the job's default),
a hard limit too close to the broker's visibility timeout, a starting deadline
of 0, jitter as long as the schedule's period. Nothing is saved when any of
these fails. Beat applies the same rules to rows it reads (a row written with
raw SQL): one it cannot use is quarantined, not run (``scheduler.beat.engine``).

A ``PeriodicTask`` save is checked only when it changes what runs when
(:func:`changed_schedule_fields`). django-celery-beat's own scheduler saves
``last_run_at`` / ``total_run_count`` after every dispatch, also on rows that
were never validated (written before this app, or by ``bulk_create``); such a
save must not be refused, or its ``sync()`` fails during a migration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models.fields import Field
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.catalog import NotStrictJson, strict_json_loads, validate_job_call
from jobs.limits import validate_time_limits
from jobs.models import JobDefinition
from jobs.publishing import validate_priority
from scheduler.beat.slots import (
    CronSpec,
    InvalidCron,
    InvalidInterval,
    interval_length,
    next_cron_slot,
    parse_cron,
)

if TYPE_CHECKING:
    from scheduler.models import SchedulePolicy


def one_line(error: ValidationError) -> str:
    """A ``ValidationError``'s messages on one line (for logs and ``problem`` fields)."""
    if hasattr(error, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in error.message_dict.items())
    return " ".join(error.messages)


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


# Longer than this, an interval fires once at most (the next slot may not even
# be a date Python can hold: past the year 9999).
LONGEST_INTERVAL = timedelta(days=36_525)


def validate_interval(every: int, period: str) -> timedelta:
    """The interval's length; ``ValidationError`` unless it is at least ``SCHEDULE_MIN_INTERVAL_SECONDS``.

    A tiny interval is not a schedule but a flood: every 1 microsecond was
    31,700 runs in 15 s.
    """
    try:
        length = interval_length(every, period)
    except InvalidInterval as exc:
        raise ValidationError({"every": f"{exc}."}) from None
    if length > LONGEST_INTERVAL:
        raise ValidationError(
            {
                "every": f"every {every} {period} is longer than 100 years: it would run once at most. "
                "Use a one-off time instead."
            }
        )
    minimum = settings.SCHEDULE_MIN_INTERVAL_SECONDS
    if length.total_seconds() < minimum:
        raise ValidationError(
            {
                "every": f"every {every} {period} is shorter than the shortest interval allowed "
                f"({minimum:g} s, SCHEDULE_MIN_INTERVAL_SECONDS)."
            }
        )
    return length


def validate_headers(headers: object) -> None:
    """Message headers must be a strict JSON object (django-celery-beat stores them as text)."""
    try:
        value = strict_json_loads(headers or "{}") if isinstance(headers, str) else headers
    except (json.JSONDecodeError, NotStrictJson) as exc:
        raise ValidationError({"headers": f"Headers are not strict JSON: {exc}."}) from None
    if not isinstance(value, dict):
        raise ValidationError(
            {"headers": f'Headers must be a JSON object, like {{"a": 1}}; got {type(value).__name__}.'}
        )


def validate_schedule_kind(task: PeriodicTask) -> None:
    """Exactly one of crontab, interval or clocked; solar schedules are refused.

    Solar events (sunrise, dusk) are not evaluated by this platform's beat:
    rather than save one that would never run, say so.
    """
    if task.solar_id is not None:
        raise ValidationError(
            {
                "solar": "Solar schedules are not supported: beat would never run this. "
                "Use a crontab in the place's time zone (sunrise drifts; pick the hour you need)."
            }
        )
    kinds = [name for name in ("crontab", "interval", "clocked") if getattr(task, f"{name}_id") is not None]
    if len(kinds) != 1:
        found = " and ".join(kinds) or "none"
        raise ValidationError(
            {"interval": f"A schedule needs exactly one of crontab, interval or clocked time; found {found}."}
        )


def validate_periodic_task(task: PeriodicTask, changed: Iterable[str] | None = None) -> None:
    """Check ``task`` as beat will read it: job and arguments, headers, its schedule row.

    ``changed`` (field names) limits the one-off check: a clocked time in the
    past is refused when the task is new or its clocked time, or ``enabled``,
    changes (an edit of a one-off that already ran is not refused for it).
    """
    validate_job_call(task.task, task.args, task.kwargs)
    validate_headers(task.headers)
    validate_priority(task.priority)  # the range the configured broker honours
    validate_schedule_kind(task)
    # A foreign key whose id is None reads as None without a query.
    if (interval := task.interval) is not None:
        validate_interval(interval.every, interval.period)
    if (crontab := task.crontab) is not None:
        validate_crontab(crontab)
    if (changed is None or {"clocked", "enabled"} & set(changed)) and (clocked := task.clocked) is not None:
        when = clocked.clocked_time
        if task.enabled and when <= datetime.now(UTC):
            raise ValidationError(
                {
                    "clocked": f"The one-off time {when.isoformat()} is in the past: it would never run. "
                    "Pick a time in the future."
                }
            )


def effective_time_limits(soft: int | None, hard: int | None, job: str) -> tuple[int | None, int | None, str]:
    """(soft, hard, where from): each the given value, else the job's catalog default.

    The third item names which came from the job, for error messages.
    """
    defaults = (
        JobDefinition.objects.filter(name=job).values_list("soft_time_limit", "hard_time_limit").first()
    )
    d_soft, d_hard = defaults or (None, None)
    from_job = [
        name
        for name, own, default in (("soft", soft, d_soft), ("hard", hard, d_hard))
        if own is None and default is not None
    ]
    return (
        (soft if soft is not None else d_soft),
        (hard if hard is not None else d_hard),
        " and ".join(from_job),
    )


def schedule_period(task: PeriodicTask) -> timedelta | None:
    """The shortest time between two slots of ``task`` (cron: over its next 50 slots); None for one-offs."""
    if (interval := task.interval) is not None:
        try:
            return interval_length(interval.every, interval.period)
        except InvalidInterval:
            return None
    if (crontab := task.crontab) is not None:
        spec = CronSpec(cron_expression(crontab), str(crontab.timezone))
        try:
            slot = next_cron_slot(spec, datetime.now(UTC))
        except (InvalidCron, ZoneInfoNotFoundError, ValueError):
            return None
        shortest = None
        for _ in range(50):
            following = next_cron_slot(spec, slot) if slot is not None else None
            if slot is None or following is None:
                break
            gap = following - slot
            shortest = gap if shortest is None else min(shortest, gap)
            slot = following
        return shortest
    return None


def validate_policy(policy: SchedulePolicy, task: PeriodicTask | None = None) -> None:
    """Check a schedule's policy with its task (``task``, else ``policy.task``) as they will be saved.

    - time limits as they will apply (the policy's, else the job's defaults);
    - a starting deadline of 0 is refused: it would make every run missed
      (leave it empty for the default, ``JOB_DEFAULT_STARTING_DEADLINE``);
    - jitter shorter than the schedule's period (longer would push a slot's
      dispatch past the next slot) and than the starting deadline (a run
      delayed past its deadline is missed).
    """
    task = task or policy.task
    soft, hard, from_job = effective_time_limits(policy.soft_time_limit, policy.hard_time_limit, task.task)
    try:
        validate_time_limits(soft, hard)
    except ValidationError as exc:
        if not from_job:
            raise
        raise ValidationError(
            {
                field: [
                    f"{message} (The {from_job} limit is {task.task}'s default; set it here too.)"
                    for message in messages
                ]
                for field, messages in exc.message_dict.items()
            }
        ) from None
    errors: dict[str, str] = {}
    deadline = policy.starting_deadline
    if deadline is not None and deadline <= 0:
        errors["starting_deadline"] = (
            f"A starting deadline of {deadline} s would make every run missed. Give the seconds a run "
            f"may start late, or leave it empty for the default ({settings.JOB_DEFAULT_STARTING_DEADLINE} s)."
        )
    jitter = policy.jitter or 0
    if jitter:
        period = schedule_period(task)
        if period is not None and timedelta(seconds=jitter) >= period:
            errors["jitter"] = (
                f"Jitter ({jitter} s) must be shorter than the schedule's period "
                f"({period.total_seconds():g} s), or a slot would be dispatched after the next one."
            )
        effective_deadline = deadline or settings.JOB_DEFAULT_STARTING_DEADLINE
        if "starting_deadline" not in errors and jitter >= effective_deadline:
            errors["jitter"] = (
                f"Jitter ({jitter} s) must be shorter than the starting deadline "
                f"({effective_deadline} s), or a delayed run would be missed."
            )
    errors.update(alerting_errors(policy, hard))
    if errors:
        raise ValidationError(errors)


def alerting_errors(policy: SchedulePolicy, hard_time_limit: int | None) -> dict[str, str]:
    """What is wrong with a policy's alerting thresholds, by field.

    A threshold that can never be reached would silently never alert: an
    expected duration at or past the effective hard limit (the limit kills the
    run first and pages as a timeout), a lateness threshold at or past the
    grace (the slot pages as missed first), zero failures or successes.
    """
    errors: dict[str, str] = {}
    if (
        policy.expected_duration is not None
        and hard_time_limit is not None
        and policy.expected_duration >= hard_time_limit
    ):
        errors["expected_duration"] = (
            f"The expected duration ({policy.expected_duration} s) must be below the hard time limit "
            f"({hard_time_limit} s): the limit would kill the run before it counted as overrunning."
        )
    if policy.late_after is not None and policy.late_after >= policy.grace:
        errors["late_after"] = (
            f"'Late after' ({policy.late_after} s) must be below the grace ({policy.grace} s): a run "
            "that late has already paged as missed."
        )
    if policy.failures_before_alert < 1:
        errors["failures_before_alert"] = "At least 1: the failure that opens the incident."
    if policy.successes_before_recovery < 1:
        errors["successes_before_recovery"] = "At least 1: the success that resolves the incident."
    return errors


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
        validate_periodic_task(task, changed)
    return bool(changed)
