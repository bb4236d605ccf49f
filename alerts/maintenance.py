"""Maintenance windows: mute a schedule, a job or everything, with a note and an end.

A mute never stops anything from running or being recorded: slots still run
(or are recorded missed), health still changes, and incidents still open,
but an incident opened while its schedule (or its job, or everything) is
muted opens *quiet*: recorded, never paged. A reminder that falls due in a
window waits for its end. A mute ends by itself at ``ends_at``; nothing
has to be undone. If the schedule is still failing after the window, its next
bad run pages (``alerts.detector`` escalates the quiet incident).

System incidents (beat down, a queue without a worker) are muted only by a
mute of everything.

The detector reads the active windows once per cycle (:func:`active_mutes`,
a handful of rows through the ``maintenance_by_end`` index) and asks the
:class:`MuteSet` per incident; :func:`active_mute_for` is the same question
for one schedule or job, for the admin and for tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from alerts.models import Maintenance, MaintenanceScope


class MaintenanceError(ValueError):
    """A mute that cannot be recorded as asked; the message says why."""


def mute(
    *,
    note: str,
    ends_at: datetime,
    schedule: PeriodicTask | int | None = None,
    job: str = "",
    everything: bool = False,
    starts_at: datetime | None = None,
    created_by: str = "",
) -> Maintenance:
    """Record a mute of exactly one of ``schedule``, ``job`` or ``everything``; return it.

    ``starts_at`` defaults to now. Refused (:class:`MaintenanceError`, nothing
    written): no target or more than one, an empty note, an end that is not
    after the start, a naive datetime, a schedule that does not exist.
    """
    starts_at = starts_at or timezone.now()
    targets = [schedule is not None, bool(job.strip()), everything]
    if sum(targets) != 1:
        raise MaintenanceError("mute exactly one of: a schedule, a job, everything")
    if not note.strip():
        raise MaintenanceError("a mute needs a note saying why (who reads the alert history will ask)")
    for name, moment in (("starts_at", starts_at), ("ends_at", ends_at)):
        if timezone.is_naive(moment):
            raise MaintenanceError(f"{name} must be timezone-aware, got {moment!r}")
    if ends_at <= starts_at:
        raise MaintenanceError(f"a mute must end after it starts ({starts_at} .. {ends_at})")
    schedule_id: int | None = None
    if schedule is not None:
        schedule_id = schedule if isinstance(schedule, int) else schedule.pk
        if not PeriodicTask.objects.filter(pk=schedule_id).exists():
            raise MaintenanceError(f"no schedule with id {schedule_id}")
    scope = (
        MaintenanceScope.SCHEDULE
        if schedule_id is not None
        else MaintenanceScope.JOB
        if job.strip()
        else MaintenanceScope.ALL
    )
    return Maintenance.objects.create(
        scope=scope,
        schedule_id=schedule_id,
        job=job.strip(),
        note=note.strip()[:500],
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=created_by[:150],
    )


def end_mute(maintenance: Maintenance, now: datetime | None = None) -> bool:
    """End a mute early (now); ``False`` when it had already ended."""
    now = now or timezone.now()
    return bool(Maintenance.objects.filter(pk=maintenance.pk, ends_at__gt=now).update(ends_at=now))


def _active(now: datetime):
    return Maintenance.objects.filter(starts_at__lte=now, ends_at__gt=now)


def active_mute_for(
    schedule: PeriodicTask | int | None = None, job: str = "", now: datetime | None = None
) -> Maintenance | None:
    """The active mute covering ``schedule`` or ``job`` (or everything), the longest first; or ``None``."""
    now = now or timezone.now()
    schedule_id = schedule.pk if isinstance(schedule, PeriodicTask) else schedule
    covering = Q(scope=MaintenanceScope.ALL)
    if schedule_id is not None:
        covering |= Q(scope=MaintenanceScope.SCHEDULE, schedule_id=schedule_id)
    if job:
        covering |= Q(scope=MaintenanceScope.JOB, job=job)
    return _active(now).filter(covering).order_by("-ends_at").first()


@dataclass(frozen=True)
class MuteSet:
    """The mutes active at one moment, for many questions without a query each."""

    everything_until: datetime | None
    schedules: dict[int, datetime]  # schedule id -> until
    jobs: dict[str, datetime]  # job name -> until

    def until(self, schedule_id: int | None = None, job: str = "") -> datetime | None:
        """When the mute covering this schedule or job ends (the latest), or ``None`` when none does."""
        ends = [
            self.everything_until,
            self.schedules.get(schedule_id) if schedule_id is not None else None,
            self.jobs.get(job) if job else None,
        ]
        present = [end for end in ends if end is not None]
        return max(present) if present else None

    def covers(self, schedule_id: int | None = None, job: str = "") -> bool:
        return self.until(schedule_id, job) is not None


def mute_set(windows: Iterable[Maintenance]) -> MuteSet:
    everything: datetime | None = None
    schedules: dict[int, datetime] = {}
    jobs: dict[str, datetime] = {}
    for window in windows:
        if window.scope == MaintenanceScope.ALL:
            everything = max(everything or window.ends_at, window.ends_at)
        elif window.scope == MaintenanceScope.SCHEDULE and window.schedule_id is not None:
            schedules[window.schedule_id] = max(
                schedules.get(window.schedule_id, window.ends_at), window.ends_at
            )
        elif window.scope == MaintenanceScope.JOB and window.job:
            jobs[window.job] = max(jobs.get(window.job, window.ends_at), window.ends_at)
    return MuteSet(everything, schedules, jobs)


def active_mutes(now: datetime | None = None) -> MuteSet:
    """Every mute active at ``now`` (one query; windows are few and end by themselves)."""
    return mute_set(_active(now or timezone.now()))
