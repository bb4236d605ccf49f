"""Service functions for schedules: every edit other than a form's save comes through here.

django-celery-beat's footgun is that ``QuerySet.update()`` skips the change
signal, so beat never hears of the edit (its admin actions did exactly that,
and a disabled schedule kept firing until the periodic reconcile). The
functions here update and record the change in one transaction, so beat's
leader applies it on its next read of the change log (within a second).

- ``update_schedules``: bulk edit of fields that need no validation.
- ``enable_schedules`` / ``disable_schedules`` / ``toggle_schedules``: the
  admin's actions; enabling validates each schedule first.
- ``run_schedules_now``: one run of each schedule now, through the one
  dispatch path (``jobs.dispatch.dispatch``) with the schedule's policy.
- ``pause_schedules`` / ``resume_schedules``: a pause with a note and an
  optional end (beat claims the paused slots as ``skipped`` with the note).
- ``duplicate_schedule``: a disabled copy under a free name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.dispatch import Delivery, dispatch
from jobs.models import JobRun, RunOrigin
from scheduler import audit
from scheduler.beat.entries import EntryFactory, ensure_policies, job_defaults, orm_rows
from scheduler.changes import record_changes
from scheduler.models import SchedulePolicy, new_slug
from scheduler.validation import validate_periodic_task


def update_schedules(queryset: QuerySet[PeriodicTask], **fields: Any) -> int:
    """``queryset.update(**fields)`` plus a change-log row per task; returns the count.

    Validation of job names and arguments still applies: use it for fields
    such as ``enabled``, ``queue``, ``crontab`` or ``interval``, not to bypass
    the checks that ``save()`` runs.
    """
    forbidden = {"task", "args", "kwargs"} & fields.keys()
    if forbidden:
        raise ValueError(
            f"update_schedules cannot change {sorted(forbidden)}: save each task so its "
            "job and arguments are validated"
        )
    with transaction.atomic():
        # The old values, read under the lock, for the audit (who changed what from what).
        before = {row.pop("pk"): row for row in queryset.select_for_update().values("pk", *fields)}
        ids = list(before)
        updated = PeriodicTask.objects.filter(pk__in=ids).update(**fields)
        record_changes(ids)
        audit.record_bulk_edit(before, fields)
    return updated


def reasons(error: ValidationError) -> str:
    """A ``ValidationError`` as one line, for a message naming the schedule it refused."""
    return " ".join(error.messages)


@dataclass
class EnabledChange:
    """What an enable, disable or toggle did, by schedule name."""

    enabled: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already as asked
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, why): left disabled


def _set_enabled(queryset: QuerySet[PeriodicTask], wanted: bool | None) -> EnabledChange:
    """Enable (True), disable (False) or flip (None) the selected schedules, in one transaction.

    The rows are locked in id order (no deadlock with a concurrent action),
    the state they are in is read under that lock, and one change-log row per
    schedule actually changed is written in the same transaction. A schedule
    to be enabled must pass ``validate_periodic_task`` (a row written with raw
    SQL may name an unknown job): one that does not stays disabled and is
    reported in ``refused``, while the others are enabled. Disabling never
    validates: it stops a schedule, whatever its data.
    """
    change = EnabledChange()
    with transaction.atomic():
        ids = list(queryset.values_list("pk", flat=True))
        tasks = (
            PeriodicTask.objects.filter(pk__in=ids)
            .order_by("pk")
            .select_related("interval", "crontab", "clocked")
            .select_for_update(of=("self",))
        )
        to_enable, to_disable = [], []
        for task in tasks:
            target = (not task.enabled) if wanted is None else wanted
            if task.enabled == target:
                change.unchanged.append(task.name)
            elif not target:
                to_disable.append(task.pk)
                change.disabled.append(task.name)
            else:
                task.enabled = True  # validated as it will be saved (a one-off's time matters once enabled)
                try:
                    validate_periodic_task(task)
                except ValidationError as exc:
                    change.refused.append((task.name, reasons(exc)))
                    continue
                to_enable.append(task.pk)
                change.enabled.append(task.name)
        PeriodicTask.objects.filter(pk__in=to_enable).update(enabled=True)
        PeriodicTask.objects.filter(pk__in=to_disable).update(enabled=False)
        record_changes([*to_enable, *to_disable])
        audit.record_bulk_edit({pk: {"enabled": False} for pk in to_enable}, {"enabled": True})
        audit.record_bulk_edit({pk: {"enabled": True} for pk in to_disable}, {"enabled": False})
    return change


def enable_schedules(queryset: QuerySet[PeriodicTask]) -> EnabledChange:
    """Enable the selected schedules that pass validation; see ``_set_enabled``."""
    return _set_enabled(queryset, True)


def disable_schedules(queryset: QuerySet[PeriodicTask]) -> EnabledChange:
    """Disable the selected schedules; beat drops them on its next read of the change log."""
    return _set_enabled(queryset, False)


def toggle_schedules(queryset: QuerySet[PeriodicTask]) -> EnabledChange:
    """Disable the enabled ones and enable the disabled ones that pass validation."""
    return _set_enabled(queryset, None)


@dataclass
class RunsNow:
    """What ``run_schedules_now`` did: runs by how their message went, and refusals by name."""

    sent: list[JobRun] = field(default_factory=list)  # or sent at the caller's commit, if it has one open
    outbox: list[JobRun] = field(default_factory=list)  # recorded; the broker did not take them yet
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, why): nothing recorded

    @property
    def broker_error(self) -> str:
        return self.outbox[0].delivery_error if self.outbox else ""


def run_schedules_now(queryset: QuerySet[PeriodicTask], requested_by: str) -> RunsNow:
    """Dispatch one run of each selected schedule now, recorded ``manual`` with who asked.

    Each run is what beat would send for the schedule's next slot: its job
    and arguments, and the queue, priority, soft/hard limits and starting deadline
    beat's ``Definition`` takes from the schedule's policy, falling back to
    the job's catalog defaults (built by beat's own ``EntryFactory``). It
    belongs to the schedule but takes no slot (``jobs.dispatch.dispatch``), and
    disabled schedules run too: running by hand is not enabling.

    Each schedule is dispatched in its own transaction, so a schedule whose
    job or arguments no longer validate is refused (nothing recorded) while
    the others run. A broker that is down raises nothing: the run is committed
    and waits in the outbox (``outbox``); beat's leader sends it later.
    """
    result = RunsNow()
    ids = list(queryset.order_by("pk").values_list("pk", flat=True))
    factory = EntryFactory(job_defaults())
    tasks = PeriodicTask.objects.in_bulk(ids)
    rows = orm_rows(PeriodicTask.objects.filter(pk__in=ids).order_by("pk"))
    for row in rows:
        task = tasks[row[0]]
        try:
            definition = factory.definition_of(row)
            args, kwargs = json.loads(definition.args_json), json.loads(definition.kwargs_json)
            run = dispatch(
                definition.job,
                args,
                kwargs,
                queue=definition.queue,
                soft_time_limit=definition.soft_time_limit,
                hard_time_limit=definition.hard_time_limit,
                starting_deadline=int(definition.starting_deadline.total_seconds()),
                priority=definition.priority,
                schedule=task,
                origin=RunOrigin.MANUAL,
                requested_by=requested_by,
            )
        except ValidationError as exc:
            result.refused.append((task.name, reasons(exc)))
            continue
        except (ValueError, TypeError, KeyError) as exc:  # a row beat cannot use either
            result.refused.append((task.name, f"beat cannot run it: {exc}"))
            continue
        (result.outbox if run.delivery == Delivery.OUTBOX else result.sent).append(run)
    return result


PAUSE_FIELDS = ("paused_at", "paused_until", "pause_note", "paused_by")
PAUSE_NOTE_MAX = SchedulePolicy._meta.get_field("pause_note").max_length or 500


def paused_now(now: datetime | None = None, path: str = "") -> Q:
    """``SchedulePolicy`` rows paused at ``now``: paused, and with no end or an end still to come.

    ``path`` reaches the policy from another model (``"schedule__policy__"``
    from an incident, ``"policy__"`` from a ``PeriodicTask``).
    """
    return Q(**{f"{path}paused_at__isnull": False}) & (
        Q(**{f"{path}paused_until__isnull": True}) | Q(**{f"{path}paused_until__gt": now or timezone.now()})
    )


def validate_pause(note: str, until: datetime | None, now: datetime | None = None) -> str:
    """The pause's note, stripped; ``ValidationError`` (by field: note, until) when it cannot be applied.

    A pause needs a note (whoever finds the schedule paused must learn why),
    of at most ``PAUSE_NOTE_MAX`` characters; an end time must be aware and in
    the future (one in the past would resume at once, which is a mistake).
    """
    errors: dict[str, str] = {}
    note = (note or "").strip()
    if not note:
        errors["note"] = "A pause needs a note: say why it is paused (e.g. “deploy freeze”)."
    elif len(note) > PAUSE_NOTE_MAX:
        errors["note"] = f"The note is {len(note)} characters long; at most {PAUSE_NOTE_MAX}."
    if until is not None:
        if timezone.is_naive(until):
            errors["until"] = "The end time needs a time zone."
        elif until <= (now or timezone.now()):
            errors["until"] = (
                f"The end time {until.isoformat()} is in the past; leave it empty to pause until resumed."
            )
    if errors:
        raise ValidationError(errors)
    return note


def _set_pause(queryset: QuerySet[PeriodicTask], values: dict[str, Any], only_paused: bool) -> list[str]:
    """Write ``values`` on the selected schedules' policies, with the change log and the audit; their names.

    One transaction: the policies are locked in id order, their old values
    read under the lock for the audit, then one UPDATE, one change-log row per
    schedule (beat applies it within a second) and the audit record.
    """
    with transaction.atomic():
        ids = list(queryset.order_by("pk").values_list("pk", flat=True))
        ensure_policies(task_ids=ids)  # legacy rows without a policy get one to pause
        policies = SchedulePolicy.objects.filter(task_id__in=ids).order_by("task_id").select_for_update()
        if only_paused:
            policies = policies.filter(paused_at__isnull=False)
        before = {
            row["task_id"]: {f: row[f] for f in PAUSE_FIELDS}
            for row in policies.values("task_id", *PAUSE_FIELDS)
        }
        changed = list(before)
        SchedulePolicy.objects.filter(task_id__in=changed).update(**values)
        record_changes(changed)
        if changed:
            audit.record_bulk_edit(before, values)
        names = dict(PeriodicTask.objects.filter(pk__in=changed).values_list("pk", "name"))
    return [names[pk] for pk in changed]


def pause_schedules(
    queryset: QuerySet[PeriodicTask], note: str, until: datetime | None, paused_by: str
) -> list[str]:
    """Pause the selected schedules until ``until`` (None: until resumed); return their names.

    Raises ``ValidationError`` (``validate_pause``) and changes nothing when
    the note is missing or ``until`` is past. Pausing a paused schedule
    replaces its note and end. While paused, beat claims each slot as a
    ``skipped`` run whose message names who paused it, until when and why; at
    ``until`` it runs again by itself, and paused slots are never caught up.
    """
    now = timezone.now()
    note = validate_pause(note, until, now)
    values = {"paused_at": now, "paused_until": until, "pause_note": note, "paused_by": paused_by[:150]}
    return _set_pause(queryset, values, only_paused=False)


def resume_schedules(queryset: QuerySet[PeriodicTask]) -> list[str]:
    """Resume the selected paused schedules (those not paused are left alone); return their names.

    Their next slot runs; the slots skipped while paused are not caught up.
    """
    values = {"paused_at": None, "paused_until": None, "pause_note": "", "paused_by": ""}
    return _set_pause(queryset, values, only_paused=True)


def copy_name(name: str) -> str:
    """``name`` with " (copy)", or " (copy N)" with the first N not taken (names are unique)."""
    max_length = PeriodicTask._meta.get_field("name").max_length or 200
    taken = set(
        PeriodicTask.objects.filter(name__startswith=f"{name[: max_length - 20]} (copy").values_list(
            "name", flat=True
        )
    )
    number = 1
    while True:
        suffix = " (copy)" if number == 1 else f" (copy {number})"
        candidate = name[: max_length - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        number += 1


# Policy columns a copy does not take: its own key, beat's progress, the pause and problem of the original.
_NOT_COPIED = {"task", "slug", "last_slot_at", "problem", "created_at", *PAUSE_FIELDS}


def duplicate_schedule(task: PeriodicTask) -> PeriodicTask:
    """A disabled copy of ``task`` named ``copy_name``: same job, arguments, schedule row and policy.

    Disabled, so it does not fire beside the original until someone enables
    it (enabling validates it). It shares the crontab/interval row (rows are
    shared, never duplicated); its policy gets a new slug (its own Sentry
    monitor) and no pause, problem or progress. Saved through the ORM, so the
    signals validate it and record it in the change log.
    """
    with transaction.atomic():
        original = PeriodicTask.objects.select_for_update().get(pk=task.pk)
        source = SchedulePolicy.objects.filter(task=original).first()
        copy = PeriodicTask.objects.get(pk=original.pk)
        copy.pk = copy.id = None
        copy._state.adding = True
        copy.name = copy_name(original.name)
        copy.enabled = False
        copy.last_run_at = None
        copy.total_run_count = 0
        copy.save()
        if source is not None:
            fields = {
                f.attname: getattr(source, f.attname)
                for f in SchedulePolicy._meta.concrete_fields
                if f.name not in _NOT_COPIED
            }
            policy, _ = SchedulePolicy.objects.get_or_create(task=copy)
            for name, value in fields.items():
                setattr(policy, name, value)
            policy.slug = new_slug()
            policy.save()
    return copy
