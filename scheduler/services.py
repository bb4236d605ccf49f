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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django_celery_beat.models import PeriodicTask

from jobs.dispatch import Delivery, dispatch
from jobs.models import JobRun, RunOrigin
from scheduler import audit
from scheduler.beat.entries import EntryFactory, job_defaults, orm_rows
from scheduler.changes import record_changes
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
    and arguments, and the queue, soft/hard limits and starting deadline
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
