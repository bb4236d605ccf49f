"""A schedule in words, and the slots beat would claim for it.

``describe_cron`` / ``describe_interval`` / ``describe_schedule`` put a
schedule into words (cron-descriptor, 24-hour clock) for the list, the
schedule page and its live preview.

``next_slots`` answers "when does this run next" with beat's own code, never a
second cron evaluator: the task (saved, or an unsaved one built by the admin
form with unsaved schedule rows) is turned into the ``ROW_FIELDS`` row beat
reads (``scheduler.beat.entries``), built into an ``Entry`` by beat's
``EntryFactory`` (the same save-time checks, the same policy and catalog
defaults, the same interval anchor) and asked ``Entry.next_slot`` repeatedly.
So the preview shows the cronie DST rule, start time and expiry exactly as
beat applies them.

``expand_cron`` is how typed cron text becomes the five fields django-celery-beat
stores: ``@daily`` and friends expanded, whitespace normalised, names kept
(croniter reads ``mon-fri`` and ``jan``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from cron_descriptor import ExpressionDescriptor, FormatException, Options  # type: ignore[import-untyped]
from django.core.exceptions import ObjectDoesNotExist
from django_celery_beat.models import PeriodicTask

from scheduler.beat.entries import ROW_FIELDS, EntryFactory, UnusableSchedule, job_defaults
from scheduler.beat.slots import InvalidInterval
from scheduler.validation import cron_expression

# The macros cronie and croniter accept, as the five fields they stand for.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_PERIOD_WORDS = {"days": "day", "hours": "hour", "minutes": "minute", "seconds": "second"}


def expand_cron(text: str) -> str:
    """Typed cron text as five space-separated fields: macros expanded, names lower-cased.

    Does not validate (``scheduler.validation.validate_cron`` does): an
    expression with the wrong number of fields comes back as typed, minus
    extra whitespace, so its error message quotes what the user wrote.
    """
    normalised = " ".join(text.split()).lower()
    return CRON_MACROS.get(normalised, normalised)


@lru_cache(maxsize=4096)
def describe_cron(expression: str) -> str:
    """``expression`` in words on a 24-hour clock: '0 9 * * 1-5' → 'At 09:00, Monday through Friday'.

    Macros are expanded first. Text cron-descriptor cannot read comes back
    as the expression itself (validation, not this function, says what is
    wrong with it).
    """
    expanded = expand_cron(expression)
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        return str(ExpressionDescriptor(expanded, options).get_description())
    except (FormatException, ValueError, KeyError, IndexError, TypeError):
        return expanded


def describe_interval(every: int, period: str) -> str:
    """'Every 5 minutes', 'Every minute', 'Every 2 days'."""
    unit = _PERIOD_WORDS.get(period, period.rstrip("s"))
    if every == 1:
        return f"Every {unit}"
    return f"Every {every} {unit}s"


def describe_schedule(task: PeriodicTask) -> str:
    """Words for a task's schedule (no query when its schedule rows are already loaded).

    A cron names its time zone ('At 09:00, Monday through Friday (Europe/Berlin)'),
    an interval its period, a one-off its time in UTC ('Once at 2026-12-01 10:00 UTC').
    A solar schedule or one with no schedule row says so (beat does not run either).
    """
    # A foreign key whose id is None reads as None without a query (or as the unsaved row assigned).
    if (crontab := task.crontab) is not None:
        return f"{describe_cron(cron_expression(crontab))} ({crontab.timezone})"
    if (interval := task.interval) is not None:
        return describe_interval(interval.every, interval.period)
    if (clocked := task.clocked) is not None:
        return f"Once at {clocked.clocked_time.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    if task.solar_id is not None:
        return "Solar (not supported: never runs)"
    return "No schedule"


def _row_value(task: PeriodicTask, path: str) -> object:
    """One ``ROW_FIELDS`` column read from the instance (``crontab__minute`` → task.crontab.minute)."""
    if path == "pk":
        return task.pk
    if path == "solar":
        return task.solar_id
    head, _, attribute = path.partition("__")
    if not attribute:
        return getattr(task, head)
    try:
        related = getattr(task, head)
    except ObjectDoesNotExist:  # no policy row (yet): beat reads NULLs from its LEFT JOIN
        return None
    if related is None:
        return None
    value = getattr(related, attribute)
    if path == "crontab__timezone":
        return str(value)  # beat reads the zone as text
    return value


def row_of(task: PeriodicTask) -> tuple:
    """``task`` as the ``ROW_FIELDS`` row beat reads, from the instance and its loaded (or unsaved) rows."""
    return tuple(_row_value(task, path) for path in ROW_FIELDS)


def next_slots(
    task: PeriodicTask,
    after: datetime,
    count: int,
    defaults: dict[str, tuple[str, int, int]] | None = None,
) -> list[datetime]:
    """The next ``count`` slots (UTC) strictly after ``after`` that beat would claim for ``task``.

    Computed by beat's entry (``EntryFactory.build`` + ``Entry.next_slot``)
    from the task's row: the cronie DST rule, start time, expiry and the
    interval anchor apply as in beat. Fewer than ``count`` (or none) when the
    schedule ends: a one-off that is past, an expiry, a cron that never fires.
    A disabled task, or one beat would quarantine (``UnusableSchedule``:
    unknown job, invalid cron, ...), gets ``[]``: beat runs neither.
    A slot past the calendar's end (year 9999) ends the list too.
    A paused schedule still has its slots (beat claims them, as skipped).

    ``defaults`` is ``scheduler.beat.entries.job_defaults()``; pass it once
    when asking for many tasks (a list page), else it is read here (one query).
    Reads ``task.crontab`` / ``interval`` / ``clocked`` / ``policy``: select
    them with the task to avoid a query each.
    """
    if not task.enabled or count <= 0:
        return []
    try:
        entry = EntryFactory(defaults if defaults is not None else job_defaults()).build(row_of(task))[0]
    except UnusableSchedule:
        return []
    slots: list[datetime] = []
    try:
        slot = entry.next_slot(after)
        while slot is not None and len(slots) < count:
            slots.append(slot)
            slot = entry.next_slot(slot)
    except InvalidInterval:  # its next slot is past the year 9999: there is none
        pass
    return slots
