"""Every change of an incident and of a schedule's health, each one guarded write that says whether it won.

Several detectors (``manage.py alertd``) may judge the same runs at the same
time. Each change below is one statement whose WHERE names the state it
moves from, or an INSERT the partial unique constraint
``one_open_incident_per_scope`` lets only one process make; the loser sees
0 rows (or the IntegrityError) and steps aside. Whatever a change pages
(``alerts.delivery.enqueue``) is queued in the same transaction as the
change that won the right to page, so a trigger, a reminder or a recovery
is queued exactly once however many detectors race.

This is the only module that writes ``Incident``, ``ScheduleHealth`` and
``Flip`` rows. The transitions:

- ``open_incident``: (nothing open for the scope) -> open; pages its trigger
  at once unless it is quiet (maintenance, or grouped under a cause);
- ``add_condition``: open -> open with one more condition (a second failure
  of the same outage, an overrun while late): never pages again;
- ``escalate``: open and quiet -> open and paged (its cause resolved or its
  mute ended, and the schedule is still failing);
- ``send_reminder``: open, paged, ``reminders_sent`` = n - 1, due -> n;
- ``postpone_reminder``: open and due -> due at the end of a mute;
- ``note_beat_back``: the open beat incident, no ``back_at`` -> with it (the
  first half of beat's recovery, see ``alerts.detector``);
- ``resolve``: open -> resolved; pages the recovery when the incident was
  paged and the caller does not resolve it quietly;
- ``set_health``: a schedule's health, old -> new, with its ``Flip``;
- ``open_quiet_incidents``, ``resolve_quietly_many``, ``set_health_of_many``: the same for a batch
  (thousands of schedules grouped under one outage), in a few statements:
  the INSERT skips scopes already open, and the health rows are locked
  (in schedule order, so two detectors cannot deadlock) while they flip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from alerts.models import Flip, Health, Incident, NotificationEvent, ScheduleHealth

logger = logging.getLogger(__name__)

# The ``since`` of a schedule that has no health row: up since always.
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
# Conditions kept in an incident's details (the newest); the count keeps going.
CONDITIONS_KEPT = 20


def _enqueue(incident: Incident, event: str, sequence: int = 0) -> int:
    """Queue the notifications of ``event`` (``alerts.delivery``, imported here: it renders messages)."""
    from alerts.delivery import enqueue

    return enqueue(incident, event, sequence)


def schedule_scope(schedule_id: int) -> str:
    return f"schedule:{schedule_id}"


def queue_scope(queue: str) -> str:
    return f"queue:{queue}"


BEAT_SCOPE = "beat"


@dataclass
class NewIncident:
    """What an incident opens with."""

    scope: str
    kind: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    schedule_id: int | None = None
    schedule_name: str = ""
    job: str = ""
    queue: str = ""
    run_id: Any = None
    cause_id: int | None = None
    quiet: bool = False
    remind_every: int = 0  # seconds; 0: never
    health: str = Health.DOWN  # the schedule's health while it is open


def _next_reminder(now: datetime, remind_every: int) -> datetime | None:
    return now + timedelta(seconds=remind_every) if remind_every > 0 else None


def open_incident(new: NewIncident, *, now: datetime) -> Incident | None:
    """Open an incident for ``new.scope`` and page it unless quiet; ``None`` if one is already open.

    The INSERT is the claim: the partial unique constraint allows one open
    incident per scope, so of two detectors opening the same outage one gets
    the row and pages, the other an IntegrityError, and adds to the open one
    instead. A schedule's health flips in the same transaction. Also ``None``
    when the schedule was deleted meanwhile.
    """
    paged = not new.quiet
    try:
        with transaction.atomic():
            incident = _incident_row(
                new,
                now,
                quiet=new.quiet,
                alerted_at=now if paged else None,
                next_reminder_at=_next_reminder(now, new.remind_every) if paged else None,
            )
            incident.save(force_insert=True)
            if paged:
                _enqueue(incident, NotificationEvent.TRIGGER)
            if new.schedule_id is not None:
                set_health(new.schedule_id, new.health, now=now, reason=new.summary, incident_id=incident.pk)
    except IntegrityError:
        return None
    return incident


def _incident_row(new: NewIncident, now: datetime, **fields: Any) -> Incident:
    """An unsaved ``Incident`` opened now from ``new``, its texts cut to their columns."""
    return Incident(
        scope=new.scope,
        kind=new.kind,
        schedule_id=new.schedule_id,
        schedule_name=new.schedule_name[:200],
        job=new.job[:200],
        queue=new.queue[:200],
        run_id=new.run_id,
        cause_id=new.cause_id,
        summary=new.summary[:500],
        details=new.details,
        opened_at=now,
        **fields,
    )


def add_condition(incident: Incident, condition: dict[str, Any], *, now: datetime, **details: Any) -> bool:
    """Record one more condition (``condition["key"]`` unique per event) on an open incident; never pages.

    Guarded on the incident being open and on its last condition not being
    this one. Two detectors adding the same condition: one wins. Two adding
    different conditions at the same moment (they read the same runs, so
    rarely) may keep only one of them in the list; ``details`` (e.g. the
    failure count) are written by both.
    """
    key = str(condition["key"])
    seen = list(incident.details.get("conditions", []))
    if any(c.get("key") == key for c in seen):
        return False
    condition = {**condition, "at": now.isoformat()}
    new_details = {
        **incident.details,
        **details,
        "conditions": (seen + [condition])[-CONDITIONS_KEPT:],
        "conditions_seen": int(incident.details.get("conditions_seen", len(seen))) + 1,
        "last_condition": key,
    }
    won = (
        Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True)
        # A missing key compares as NULL: spelled out, or NOT would drop the row.
        .filter(Q(details__last_condition__isnull=True) | ~Q(details__last_condition=key))
        .update(details=new_details)
    )
    if won:
        incident.details = new_details
    return bool(won)


def escalate(incident: Incident, *, now: datetime, remind_every: int, reason: str) -> bool:
    """Page a quiet open incident after all (its cause resolved or its mute ended, and it still fails)."""
    details = {**incident.details, "escalated": reason[:300]}
    with transaction.atomic():
        won = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True, quiet=True).update(
            quiet=False,
            alerted_at=now,
            next_reminder_at=_next_reminder(now, remind_every),
            details=details,
        )
        if not won:
            return False
        incident.quiet, incident.alerted_at, incident.details = False, now, details
        incident.next_reminder_at = _next_reminder(now, remind_every)
        _enqueue(incident, NotificationEvent.TRIGGER)
    return True


def send_reminder(incident: Incident, *, now: datetime, remind_every: int) -> bool:
    """Queue reminder number ``reminders_sent + 1`` of an open, paged incident whose reminder is due."""
    sequence = incident.reminders_sent + 1
    next_at = _next_reminder(now, remind_every)
    with transaction.atomic():
        won = Incident.objects.filter(
            pk=incident.pk,
            resolved_at__isnull=True,
            quiet=False,
            reminders_sent=incident.reminders_sent,
            next_reminder_at__lte=now,
        ).update(reminders_sent=sequence, next_reminder_at=next_at)
        if not won:
            return False
        incident.reminders_sent, incident.next_reminder_at = sequence, next_at
        _enqueue(incident, NotificationEvent.REMIND, sequence)
    return True


def postpone_reminder(incident: Incident, *, until: datetime, now: datetime) -> bool:
    """A reminder due during a mute waits for the mute's end."""
    won = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True, next_reminder_at__lte=now).update(
        next_reminder_at=until
    )
    if won:
        incident.next_reminder_at = until
    return bool(won)


def note_beat_back(incident: Incident, *, renewed_at: datetime) -> bool:
    """Record on the open beat incident that a leader renewed the lease again (``back_at``)."""
    details = {**incident.details, "back_at": renewed_at.isoformat()}
    won = (
        Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True)
        .exclude(details__has_key="back_at")
        .update(details=details)
    )
    if won:
        incident.details = details
    return bool(won)


def resolve(
    incident: Incident,
    *,
    now: datetime,
    resolution: str,
    quietly: bool = False,
    health: str | None = Health.UP,
    last_good_run_id: Any = None,
    **details: Any,
) -> bool:
    """Resolve an open incident; page its recovery if its trigger was paged, unless ``quietly``.

    Guarded on it being open and on ``quiet`` being what the caller read, so
    a concurrent escalation is not resolved without its recovery message.
    A schedule incident's health flips to ``health`` (up; paused when the
    schedule was disabled; ``None``: leave it) in the same transaction.
    """
    paged = incident.alerted_at is not None and not incident.quiet and not quietly
    new_details = {**incident.details, **details} if details else incident.details
    fields: dict[str, Any] = {
        "resolved_at": now,
        "resolution": resolution[:500],
        "next_reminder_at": None,
        "details": new_details,
    }
    if paged:
        fields["resolve_alerted_at"] = now
    with transaction.atomic():
        won = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True, quiet=incident.quiet).update(
            **fields
        )
        if not won:
            return False
        for name, value in fields.items():
            setattr(incident, name, value)
        if paged:
            _enqueue(incident, NotificationEvent.RESOLVE)
        if incident.schedule_id is not None and health is not None:
            set_health(
                incident.schedule_id,
                health,
                now=now,
                reason=resolution,
                incident_id=incident.pk,
                last_good_run_id=last_good_run_id,
            )
    return True


def set_health(
    schedule_id: int,
    new_state: str,
    *,
    now: datetime,
    reason: str,
    incident_id: int | None = None,
    last_good_run_id: Any = None,
) -> bool:
    """Move the schedule's health to ``new_state`` and record the ``Flip``; ``False`` if it already was.

    A schedule without a row is up (rows are written only on a change: a
    healthy schedule costs nothing). Compare-and-set on the state read, so
    of two detectors flipping the same change one records the flip.
    """
    with transaction.atomic():
        if new_state != Health.UP:
            ScheduleHealth.objects.bulk_create(
                [ScheduleHealth(schedule_id=schedule_id, state=Health.UP, since=NEVER)], ignore_conflicts=True
            )
        for _ in range(3):
            old = ScheduleHealth.objects.filter(pk=schedule_id).values_list("state", flat=True).first()
            if old is None or old == new_state:
                return False
            changed: dict[str, Any] = {"state": new_state, "since": now}
            if last_good_run_id is not None:
                changed["last_good_run_id"] = last_good_run_id
            if ScheduleHealth.objects.filter(pk=schedule_id, state=old).update(**changed):
                Flip.objects.create(
                    schedule_id=schedule_id,
                    incident_id=incident_id,
                    old_state=old,
                    new_state=new_state,
                    at=now,
                    reason=reason[:500],
                )
                return True
    return False


def open_quiet_incidents(batch: list[NewIncident], *, now: datetime) -> list[Incident]:
    """Open many quiet incidents (grouped under a cause: nothing pages); return those this call opened.

    One INSERT … ON CONFLICT DO NOTHING per thousand: a scope another
    detector opened first is skipped, as ``open_incident`` loses on the
    constraint. The rows this call opened are the ones opened at ``now``
    (another detector's ``now`` differs). Their schedules' health flips in
    the same transaction (:func:`set_health_of_many`). If the batch cannot
    be written (a schedule deleted meanwhile), each is opened on its own.
    """
    if not batch:
        return []
    try:
        with transaction.atomic():
            Incident.objects.bulk_create(
                [_incident_row(new, now, quiet=True) for new in batch],
                ignore_conflicts=True,
                batch_size=1000,
            )
            mine: list[Incident] = []
            for chunk in _chunks([new.scope for new in batch]):
                mine += Incident.objects.filter(scope__in=chunk, resolved_at__isnull=True, opened_at=now)
            wanted = {new.schedule_id: new for new in batch if new.schedule_id is not None}
            set_health_of_many(
                {
                    incident.schedule_id: (wanted[incident.schedule_id].health, incident.summary, incident.pk)
                    for incident in mine
                    if incident.schedule_id in wanted
                },
                now=now,
            )
    except IntegrityError:
        opened = [open_incident(_quiet(new), now=now) for new in batch]
        return [incident for incident in opened if incident is not None]
    return mine


def _quiet(new: NewIncident) -> NewIncident:
    new.quiet = True
    return new


def _chunks(items: list, size: int = 1000):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def set_health_of_many(changes: dict[int, tuple[str, str, int | None]], *, now: datetime) -> int:
    """Flip many schedules' health: ``{schedule id: (new state, reason, incident id)}``; return the flips.

    The rows are locked in schedule order (``SELECT … FOR UPDATE``) before
    they are read, so what is read is what is changed and two detectors
    flipping the same schedules queue behind each other instead of
    deadlocking; a schedule already in its new state gets no flip.
    """
    if not changes:
        return 0
    flips: list[Flip] = []
    with transaction.atomic():
        ScheduleHealth.objects.bulk_create(
            [
                ScheduleHealth(schedule_id=pk, state=Health.UP, since=NEVER)
                for pk, (state, _, _) in changes.items()
                if state != Health.UP
            ],
            ignore_conflicts=True,
            batch_size=1000,
        )
        moves: dict[tuple[str, str], list[int]] = {}
        for chunk in _chunks(sorted(changes)):
            for pk, old in (
                ScheduleHealth.objects.select_for_update()
                .filter(schedule_id__in=chunk)
                .order_by("schedule_id")
                .values_list("schedule_id", "state")
            ):
                new_state, reason, incident_id = changes[pk]
                if old != new_state:
                    moves.setdefault((old, new_state), []).append(pk)
                    flips.append(
                        Flip(
                            schedule_id=pk,
                            incident_id=incident_id,
                            old_state=old,
                            new_state=new_state,
                            at=now,
                            reason=reason[:500],
                        )
                    )
        for (_, new_state), ids in moves.items():
            for chunk in _chunks(ids):
                ScheduleHealth.objects.filter(schedule_id__in=chunk).update(state=new_state, since=now)
        Flip.objects.bulk_create(flips, batch_size=1000)
    return len(flips)


def resolve_quietly_many(items: list[tuple[Incident, str]], *, now: datetime) -> list[Incident]:
    """Resolve many quiet incidents (``(incident, resolution)``), health up; return those this call resolved.

    For the schedules of an outage recovering together: nothing pages (they
    were never paged). The incidents are locked in id order and only those
    still open and quiet are resolved, so an incident another detector
    resolved or escalated meanwhile is left to it.
    """
    if not items:
        return []
    wanted = {incident.pk: (incident, resolution) for incident, resolution in items}
    resolved: list[Incident] = []
    with transaction.atomic():
        for chunk in _chunks(sorted(wanted)):
            still = list(
                Incident.objects.select_for_update()
                .filter(pk__in=chunk, resolved_at__isnull=True, quiet=True)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            by_text: dict[str, list[int]] = {}
            for pk in still:
                by_text.setdefault(wanted[pk][1][:500], []).append(pk)
            for text, ids in by_text.items():
                Incident.objects.filter(pk__in=ids).update(
                    resolved_at=now, resolution=text, next_reminder_at=None
                )
            for pk in still:
                incident, text = wanted[pk]
                incident.resolved_at, incident.resolution, incident.next_reminder_at = now, text[:500], None
                resolved.append(incident)
        set_health_of_many(
            {
                incident.schedule_id: (Health.UP, incident.resolution, incident.pk)
                for incident in resolved
                if incident.schedule_id is not None
            },
            now=now,
        )
    return resolved
