"""Schedule audit: enabled schedules that will not do what their owners think, one row per problem.

Rows are (schedule id, schedule, job, problem, detail), by schedule name.
Problems, each judged by the code that runs the schedule, not by a copy of it:

- ``never ran``: enabled, created more than a day ago, its first slot since
  creation is due, and no run of it is recorded (``one_run_per_slot`` answers
  the "any run?" of each schedule);
- ``paused past its end``: the pause's end passed but the pause is still
  recorded (beat runs it again since that end; the note misleads);
- ``fires less than once a year``: a cron with fewer than four slots in the
  next four years (``0 0 29 2 *``: one), by beat's own slot code
  (``scheduler.beat.slots``, the DST rule included), or an interval longer than
  a year;
- ``no live worker``: no live worker (``jobs.workers.served_pairs``) serves the
  schedule's effective (queue, job); the detail is beat's own sentence
  (``scheduler.presence.unserved_problem``);
- ``limits missing`` (its job is not in the catalog, so it has no limits) or
  ``limits invalid`` (the effective pair, the policy's value else the job's
  default, breaks ``jobs.limits.validate_time_limits``: zero, hard not above
  soft, hard past the broker's redelivery);
- ``beat cannot evaluate it``: any other reason beat quarantines the row
  (``scheduler.beat.entries.EntryFactory``'s own check).

Enabled schedules are read the way beat reads them (``fetch_rows``: streamed,
one statement); disabled ones are not audited, but for a pause past its end
(read through the ``policy_paused`` partial index). A healthy schedule gives
no row; a schedule may give several.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.limits import validate_time_limits
from jobs.models import JobRun
from jobs.workers import served_pairs
from reports.framework import report
from scheduler.beat.entries import (
    ROW_FIELDS,
    Entry,
    EntryFactory,
    UnusableSchedule,
    fetch_rows,
    job_defaults,
)
from scheduler.beat.slots import CronSpec, next_cron_slot
from scheduler.models import SchedulePolicy
from scheduler.presence import unserved_problem
from scheduler.validation import one_line

COLUMNS = ["schedule_id", "schedule", "job", "problem", "detail"]

NEVER_RAN = "never ran"
PAUSE_ENDED = "paused past its end"
RARE = "fires less than once a year"
UNSERVED = "no live worker"
LIMITS_MISSING = "limits missing"
LIMITS_INVALID = "limits invalid"
UNUSABLE = "beat cannot evaluate it"

NEVER_RAN_AFTER = timedelta(days=1)
# Four years hold a leap day, so a yearly cron has four slots in them and 29 February one.
RARITY_HORIZON = timedelta(days=4 * 365 + 1 + 1)
RARITY_SLOTS = 4
YEAR = timedelta(days=365.25)

JOB, POLICY_SOFT, POLICY_HARD = (
    ROW_FIELDS.index(name) for name in ("task", "policy__soft_time_limit", "policy__hard_time_limit")
)


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def limits_problem(
    job: str, policy_soft: int | None, policy_hard: int | None, defaults: dict
) -> tuple[str, str]:
    """(problem, detail) of a schedule's effective time limits, or ("", "") when they can hold.

    The effective pair is the policy's value, else the job's catalog default
    (beat's rule, ``EntryFactory``); a job missing from the catalog has none.
    """
    if job not in defaults:
        return LIMITS_MISSING, (
            f"job {job!r} is not in the job catalog, so the schedule has no time limits (and no worker "
            "serves it): fix the job name or start a worker that has it"
        )
    _, default_soft, default_hard = defaults[job]
    soft, hard = policy_soft or default_soft, policy_hard or default_hard
    try:
        validate_time_limits(soft, hard)
    except ValidationError as exc:
        return LIMITS_INVALID, f"soft {soft} s, hard {hard} s: {one_line(exc)}"
    return "", ""


def cron_slots_within(spec: CronSpec, after: datetime, horizon: timedelta, most: int) -> int:
    """How many slots ``spec`` has in ``(after, after + horizon]``, counting up to ``most``."""
    count, moment, end = 0, after, after + horizon
    while count < most:
        slot = next_cron_slot(spec, moment)
        if slot is None or slot > end:
            break
        count, moment = count + 1, slot
    return count


def rarity_problem(entry: Entry, now: datetime, counted: dict[CronSpec, int]) -> str:
    """A detail when ``entry``'s schedule fires less than once a year, else ""; ``counted`` caches crons."""
    definition = entry.live
    if definition.cron is not None:
        spec = definition.cron
        if spec not in counted:
            counted[spec] = cron_slots_within(spec, now, RARITY_HORIZON, RARITY_SLOTS)
        slots = counted[spec]
        if slots < RARITY_SLOTS:
            first = next_cron_slot(spec, now)
            when = f"; next at {_utc(first)}" if first else ""
            return f"cron {spec.expression!r} ({spec.timezone}) fires {slots} time(s) in four years{when}"
    elif definition.interval is not None and definition.interval > YEAR:
        return f"every {definition.interval.days} days: less than once a year"
    return ""


def never_ran_ids(now: datetime) -> set[int]:
    """Enabled schedules created over a day before ``now`` with no run at all (one probe each)."""
    return set(
        PeriodicTask.objects.filter(enabled=True, policy__created_at__lt=now - NEVER_RAN_AFTER)
        .exclude(Exists(JobRun.objects.filter(schedule_id=OuterRef("pk"))))
        .values_list("pk", flat=True)
    )


def pauses_past_their_end(now: datetime) -> Iterator[tuple[int, str]]:
    """(schedule id, detail) of each pause whose end passed but that is still recorded (any schedule)."""
    for task_id, by, until, note in SchedulePolicy.objects.filter(
        paused_at__isnull=False, paused_until__lte=now
    ).values_list("task_id", "paused_by", "paused_until", "pause_note"):
        assert until is not None  # filtered on it
        who = f" by {by}" if by else ""
        yield (
            task_id,
            f"paused{who} until {_utc(until)} ({note or 'no note'}): that end passed; resume it to clear it",
        )


def schedule_audit_rows(now: datetime | None = None) -> Iterator[list[Any]]:
    """The audit's rows (``COLUMNS``) as of ``now``, by schedule name; nothing for a healthy schedule."""
    now = now or timezone.now()
    defaults = job_defaults()
    factory = EntryFactory(defaults)
    served = served_pairs(now)
    never_ran = never_ran_ids(now)
    counted: dict[CronSpec, int] = {}
    found: list[tuple[int, str, str]] = [
        (task_id, PAUSE_ENDED, detail) for task_id, detail in pauses_past_their_end(now)
    ]
    for row in fetch_rows():
        task_id = row[0]
        problem, detail = limits_problem(row[JOB], row[POLICY_SOFT], row[POLICY_HARD], defaults)
        if problem:
            found.append((task_id, problem, detail))
        try:
            entry, _, created = factory.build(row)
        except UnusableSchedule as exc:
            if not problem:  # the same reason twice says nothing new
                found.append((task_id, UNUSABLE, str(exc)))
            continue
        definition = entry.live
        if (definition.queue, definition.job) not in served:
            found.append((task_id, UNSERVED, unserved_problem(definition.queue, definition.job)))
        if rare := rarity_problem(entry, now, counted):
            found.append((task_id, RARE, rare))
        if task_id in never_ran:
            first = entry.next_slot(created)
            if first is not None and first <= now:
                found.append(
                    (
                        task_id,
                        NEVER_RAN,
                        f"created {_utc(created)}; first slot {_utc(first)}; no run recorded",
                    )
                )
    named = {
        pk: (name, job)
        for pk, name, job in PeriodicTask.objects.filter(
            pk__in={task_id for task_id, _, _ in found}
        ).values_list("pk", "name", "task")
    }
    rows = [[task_id, *named.get(task_id, ("", "")), problem, detail] for task_id, problem, detail in found]
    rows.sort(key=lambda row: (row[1], row[0], row[3]))
    yield from rows


@report(
    "reports.schedule_audit",
    columns=COLUMNS,
    chunk_size=None,
    formats=["csv", "html", "json"],
    title="Schedule audit",
    queue="reports",
    soft_time_limit=240,
    hard_time_limit=300,
)
def schedule_audit() -> Iterator[list[Any]]:
    """Schedules that never ran, pauses past their end, rare crons, jobs no worker serves, bad limits.

    One row per problem found on an enabled schedule (a pause past its end on
    any): never ran though a slot was due, paused past its end, fires less
    than once a year, no live worker serves its (queue, job), time limits
    missing or invalid, or any other reason beat cannot evaluate it.
    """
    return schedule_audit_rows()
