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
- ``set_health``: a schedule's health, old -> new, with its ``Flip``.
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
            incident = Incident.objects.create(
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
                quiet=new.quiet,
                opened_at=now,
                alerted_at=now if paged else None,
                next_reminder_at=_next_reminder(now, new.remind_every) if paged else None,
            )
            if paged:
                _enqueue(incident, NotificationEvent.TRIGGER)
            if new.schedule_id is not None:
                set_health(new.schedule_id, new.health, now=now, reason=new.summary, incident_id=incident.pk)
    except IntegrityError:
        return None
    return incident


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
