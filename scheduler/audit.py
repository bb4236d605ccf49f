"""Who changed a schedule, when, and what (before → after), with django-auditlog.

``register()`` (called from ``SchedulerConfig.ready``) registers
``PeriodicTask`` and ``SchedulePolicy`` with auditlog, so every ``save()`` of
either (the admin's form and inline, a service that saves) writes a
``LogEntry`` with auditlog's actor (set by its middleware for a request; empty
for a command or a worker). ``record_bulk_edit`` writes the same entries for
edits made with ``QuerySet.update()`` (``scheduler.services``), which send no
signal. Both are beside the change log (``scheduler.changes``), not instead of
it: the change log tells beat, the audit tells people.

Guarantees and edge cases:

- Bookkeeping fields nobody edits (``BOOKKEEPING``) are not tracked, so a save
  that changes only them writes no entry. Beat's own writes (``last_slot_at``,
  ``problem``) are ``QuerySet.update()`` calls, which auditlog never sees.
- The crontab / interval / clocked / solar foreign keys are stored as what
  they mean (``"0 9 * * 1-5 Europe/Berlin"``, ``"Every 5 minutes"``,
  ``"once at 2026-12-01 09:00:00 UTC"``), read when the entry is written, so
  the history stays true after the row is edited or deleted. auditlog's own
  option for that (``AUDITLOG_USE_FK_STRING_REPRESENTATION``) is global and
  would use django-celery-beat's ``str()`` (``"0 9 * * 1-5 (m/h/dM/MY/d)
  Europe/Berlin"``); a ``pre_save`` hook on ``LogEntry`` rewrites only ours.
- A crontab / interval / clocked row edited in place (on its own admin page;
  the schedule page never does that) changes every schedule using it: each
  of them gets an entry, the row's old and new meaning as before → after.
- Values are strings in auditlog's own format (``str()``; a datetime as naive
  UTC; ``"None"`` for empty), whichever path wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from auditlog.cid import get_cid
from auditlog.context import auditlog_disabled
from auditlog.diff import get_field_value
from auditlog.models import LogEntry
from auditlog.receivers import log_update
from auditlog.registry import auditlog
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.signals import post_save, pre_save
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from scheduler.describe import describe_interval
from scheduler.models import SchedulePolicy
from scheduler.validation import cron_expression

# Written by beat, the worker or the database, never by a person: tracking them would flood the log.
BOOKKEEPING: dict[type[models.Model], tuple[str, ...]] = {
    PeriodicTask: ("last_run_at", "total_run_count", "date_changed"),
    # "task" is the policy's primary key: it never changes, and the entry already names the task.
    SchedulePolicy: ("last_slot_at", "problem", "created_at", "task"),
}

# The task's schedule rows, stored in an entry as what they mean rather than as an id.
SCHEDULE_KEYS: dict[str, type[models.Model]] = {
    "crontab": CrontabSchedule,
    "interval": IntervalSchedule,
    "clocked": ClockedSchedule,
    "solar": SolarSchedule,
}

KEY_OF_ROW = {model: key for key, model in SCHEDULE_KEYS.items()}

EMPTY = "None"  # how auditlog stores an empty value


def register() -> None:
    """Track ``PeriodicTask`` and ``SchedulePolicy`` with auditlog; idempotent."""
    for model, excluded in BOOKKEEPING.items():
        if not auditlog.contains(model):
            auditlog.register(model, include_fields=tracked_fields(model), exclude_fields=list(excluded))
            # auditlog's update receiver reads the stored row on every save; ours skips the saves of
            # bookkeeping fields only (django-celery-beat's scheduler storing its counters), see _log_update.
            auditlogs_uid = auditlog._dispatch_uid(pre_save, log_update)
            if not pre_save.disconnect(sender=model, dispatch_uid=auditlogs_uid):
                # A newer auditlog connects differently: fail at start rather than read every row twice.
                raise ImproperlyConfigured("auditlog's pre_save receiver was not found; see scheduler.audit")
            pre_save.connect(_log_update, sender=model, dispatch_uid=f"scheduler.audit.{model.__name__}")
    pre_save.connect(_readable_schedule_keys, sender=LogEntry, dispatch_uid="scheduler.audit.readable_keys")
    for row_model in KEY_OF_ROW:
        uid = f"scheduler.audit.row.{row_model.__name__}"
        pre_save.connect(_schedule_row_saving, sender=row_model, dispatch_uid=uid)
        post_save.connect(_schedule_row_saved, sender=row_model, dispatch_uid=uid)


def tracked_fields(model: type[models.Model]) -> list[str]:
    """The columns a person edits: not the key, not bookkeeping, not reverse relations (``runs``)."""
    excluded = BOOKKEEPING[model]
    return [f.name for f in model._meta.concrete_fields if not f.primary_key and f.name not in excluded]


def _log_update(sender, instance: models.Model, update_fields=None, **kwargs) -> None:
    """auditlog's ``log_update``, except for a save whose ``update_fields`` are all untracked.

    Such a save (``save(update_fields=["total_run_count", "last_run_at"])``)
    can change nothing the audit shows, and auditlog would read the stored
    row to find that out: one query per save on a path that must stay cheap.
    """
    if update_fields is not None:
        tracked = _tracked_by_name(sender, update_fields)
        if not tracked:
            return
    log_update(sender=sender, instance=instance, update_fields=update_fields, **kwargs)


def describe_schedule_row(row: models.Model) -> str:
    """A crontab / interval / clocked / solar row as a person reads it, time zone included."""
    if isinstance(row, CrontabSchedule):
        return f"{cron_expression(row)} {row.timezone}"
    if isinstance(row, IntervalSchedule):
        return describe_interval(row.every, row.period)
    if isinstance(row, ClockedSchedule):
        when = row.clocked_time
        if timezone.is_aware(when):
            when = when.astimezone(UTC)
        return f"once at {when:%Y-%m-%d %H:%M:%S} UTC"
    return str(row)


def schedule_key_texts(values: Iterable[tuple[str, object]]) -> dict[tuple[str, str], str]:
    """What each (schedule key, stored id) pair means, one query per kind of key.

    An id whose row is gone reads ``"<kind> #12 (deleted)"``. Pairs that are
    not a schedule key with an id (``"None"``, text already) are left out.
    """
    wanted: dict[str, set[int]] = {}
    for name, value in values:
        text = str(value)
        if name in SCHEDULE_KEYS and text.isdigit():
            wanted.setdefault(name, set()).add(int(text))
    texts: dict[tuple[str, str], str] = {}
    for name, ids in wanted.items():
        model = SCHEDULE_KEYS[name]
        found = {row.pk: describe_schedule_row(row) for row in model._default_manager.filter(pk__in=ids)}
        for pk in ids:
            texts[(name, str(pk))] = found.get(pk, f"{name} #{pk} (deleted)")
    return texts


def readable_changes(changes: Iterable[dict[str, list[str]]]) -> None:
    """Replace, in place, the schedule keys' ids in task entries' changes with what they mean."""
    changes = list(changes)
    texts = schedule_key_texts(
        (name, value) for change in changes for name, pair in change.items() for value in pair
    )
    if not texts:
        return
    for change in changes:
        for name, pair in change.items():
            change[name] = [texts.get((name, str(value)), value) for value in pair]


def _readable_schedule_keys(sender, instance: LogEntry, raw: bool = False, **kwargs) -> None:
    """Before a task's entry is written: its schedule keys as words, not ids (see the module doc)."""
    changes = instance.changes
    if raw or not isinstance(changes, dict) or not (SCHEDULE_KEYS.keys() & changes.keys()):
        return
    if instance.content_type_id != ContentType.objects.get_for_model(PeriodicTask).pk:
        return
    changes = {name: list(pair) for name, pair in changes.items()}
    readable_changes([changes])
    instance.changes = changes


def _logged_value(model: type[models.Model], field: models.Field, value: object) -> str:
    """``value`` as auditlog's diff would store it for ``field`` (its own formatting, not a second one)."""
    if isinstance(value, models.Model):
        value = value.pk
    if isinstance(value, datetime) and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    instance = model()
    setattr(instance, field.attname, value)
    return str(get_field_value(instance, field))


def _tracked_by_name(model: type[models.Model], names: Iterable[str]) -> dict[str, models.Field]:
    """The tracked fields of ``model`` among ``names`` (a field name or its ``_id`` column), by name."""
    tracked = {}
    for field in model._meta.concrete_fields:
        if field.name in tracked_fields(model):
            tracked[field.name] = tracked[field.attname] = field
    return {name: tracked[name] for name in names if name in tracked}


def record_bulk_edit(task_ids_before: dict[int, dict[str, object]], after: dict[str, object]) -> None:
    """One UPDATE ``LogEntry`` per schedule and model for an edit made with ``QuerySet.update()``.

    ``task_ids_before`` maps each task id to the old values of the fields the
    edit set, ``after`` holds the new values (the same for every task). A
    field name may be a ``PeriodicTask`` field (``enabled``) or a
    ``SchedulePolicy`` field (``paused_at``, ``pause_note``): each model gets
    its own entry, under the same object id (the policy's key is the task's),
    so the schedule's history shows both. Fields whose value did not change,
    bookkeeping fields and unknown names are left out; a task with nothing
    left gets no entry. Call it in the edit's transaction: a rolled-back edit
    leaves no entry. The actor is auditlog's (its middleware, for a request);
    nothing is written while auditlog is disabled (``disable_auditlog``).
    """
    if not task_ids_before or auditlog_disabled.get():
        return
    changes: dict[type[models.Model], dict[int, dict[str, list[str]]]] = {}
    for model in BOOKKEEPING:
        fields = _tracked_by_name(model, after)
        if not fields:
            continue
        new = {field.name: _logged_value(model, field, after[name]) for name, field in fields.items()}
        for task_id, before in task_ids_before.items():
            old = {
                field.name: _logged_value(model, field, before[name])
                for name, field in fields.items()
                if name in before
            }
            changed = {name: [old[name], new[name]] for name in old if old[name] != new[name]}
            if changed:
                changes.setdefault(model, {})[task_id] = changed
    readable_changes(changes.get(PeriodicTask, {}).values())
    write_entries(changes)


def write_entries(changes: dict[type[models.Model], dict[int, dict[str, list[str]]]]) -> None:
    """Write an UPDATE entry per (model, task id) with its changes, as auditlog would: actor, cid, time."""
    task_ids = {task_id for by_task in changes.values() for task_id in by_task}
    names = dict(PeriodicTask.objects.filter(pk__in=task_ids).values_list("pk", "name"))
    cid, now = get_cid(), timezone.now()
    entries = [
        LogEntry(
            content_type=ContentType.objects.get_for_model(model),
            object_pk=str(task_id),
            object_id=task_id,
            object_repr=names.get(task_id, f"schedule #{task_id}"),
            action=LogEntry.Action.UPDATE,
            changes=changed,
            cid=cid,
            timestamp=now,
        )
        for model, by_task in changes.items()
        for task_id, changed in by_task.items()
    ]
    # bulk_create sends no pre_save, which is how auditlog gives an entry its actor, address and
    # port (a receiver connected only while its middleware's context is open: reading its context
    # variable directly would find the last request's user after the request ended). Sent here.
    for entry in entries:
        pre_save.send(
            sender=LogEntry, instance=entry, raw=False, using=LogEntry.objects.db, update_fields=None
        )
    LogEntry.objects.bulk_create(entries, batch_size=1000)


# Set on a schedule row by pre_save (what it said before), read by post_save of the same save.
_ROW_BEFORE = "_scheduler_audit_row_before"


def _schedule_row_saving(sender, instance: models.Model, raw: bool = False, **kwargs) -> None:
    if raw or instance._state.adding or instance.pk is None or auditlog_disabled.get():
        return
    old = sender._default_manager.filter(pk=instance.pk).first()
    if old is not None:
        setattr(instance, _ROW_BEFORE, describe_schedule_row(old))


def _schedule_row_saved(sender, instance: models.Model, raw: bool = False, **kwargs) -> None:
    """A crontab / interval / clocked row edited in place (its own admin page): an entry per task using it.

    The schedule page never does this (it picks or creates a row), but the
    row's own page does, and it changes every schedule that uses the row.
    """
    before = instance.__dict__.pop(_ROW_BEFORE, None)
    after = describe_schedule_row(instance)
    if raw or before is None or before == after:
        return
    key = KEY_OF_ROW[sender]
    task_ids = PeriodicTask.objects.filter(**{key: instance.pk}).values_list("pk", flat=True)
    write_entries({PeriodicTask: {task_id: {key: [before, after]} for task_id in task_ids}})
