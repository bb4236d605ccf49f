"""The alert detector: one cycle looks at what changed and opens, pages, reminds and resolves incidents.

``manage.py alertd`` calls :meth:`Detector.run_cycle` every
``ALERT_CHECK_INTERVAL`` seconds. Every write goes through
``alerts.incidents`` (guarded, so several detectors may run side by side:
each open, page, reminder and recovery happens once).

Conditions, per schedule (an incident of scope ``schedule:<id>``):

- **missed**: no run started by slot + ``grace``: a run recorded ``missed``
  (catch-up, starting deadline), or one still waiting (``queued``, or
  ``retrying`` and never started) past its slot + grace;
- **late** (a warning): a run started more than ``late_after`` after its slot;
- **failed** / **timed_out** / **lost**: a run ended ``failed`` (after its
  last retry), ``soft_timeout`` / ``hard_timeout`` (``details.timeout``), or
  ``lost``; opens after ``failures_before_alert`` consecutive ones;
- **overrun**: a run still ``running`` past ``expected_duration``.

An open incident takes further conditions of the same schedule without
paging again; it resolves (with a recovery message) after
``successes_before_recovery`` consecutive successful runs (on-time ones for
a *late* incident). A disabled schedule is *paused*: its open incident
resolves quietly. Pausing is seen through the change log (every ORM save
and bulk edit) and, for schedules with an open incident, by a sweep of the
open incidents (raw SQL edits too); a schedule enabled again is found by its
paused health row.

System conditions: **beat down** (scope ``beat``: no leader renewed the lease
for ``ALERT_BEAT_DOWN_AFTER`` seconds) and **no worker** (scope
``queue:<name>``: runs waited ``NO_WORKER_AFTER`` in a queue no live worker
consumes). They are the root cause of the schedule incidents they explain:
a missed slot inside a beat outage, or a run waiting in a queue without a
worker, opens its schedule's incident ``quiet`` with ``cause`` = the system
incident; it resolves quietly when the schedule recovers, and the system
incident's recovery says how many it grouped (``details.effects``). A quiet
incident that fails again for a reason its cause does not explain, with no
mute over it, is paged after all (escalated).

Beat's recovery has two halves: a leader renewing the lease again is noted
(``back_at``); the incident resolves at the leader's next renewal, which
comes after its first tick, so the slots its catch-up recorded missed are
already grouped under the incident when its recovery message counts them.

Cost (query plan intent): a cycle never walks the schedules. What it reads:

1. runs that *ended* in ``(cursor - OVERLAP, now]``: a range of the
   ``run_by_finish`` index, kept to the interesting ones in SQL (bad endings,
   runs of schedules whose health is not up, late starts), then the last few
   runs of each such schedule through the ``one_run_per_slot`` index;
2. runs *waiting* whose slot + grace passed since the last cycle: a range of
   ``run_active`` (status, scheduled_for; waiting and running runs only) no
   wider than the largest grace plus the cycle, joined to their policy,
   exact per grace in SQL;
3. runs *running* with a duration or lateness threshold: ``run_active``
   for ``running`` (as many as the workers' concurrency);
4. queues with runs waiting for more than ``NO_WORKER_AFTER``: a range of
   ``run_active``, grouped; live presence (a handful of rows);
5. schedules edited since the cursor (paused, resumed): the change log's
   ``created_at`` index;
6. open incidents (the ``incident_reminders_due`` partial index; few), the
   lease row, the active mutes (``maintenance_by_end``).

``tests/test_alert_detector.py`` checks that a cycle runs the same
statements at 20 or 2,000 healthy schedules; ``bench/alerting_cycle.py``
measures one at 100,000 schedules and 1,000,000 runs, with the plans.

The cursor is kept by each detector process (several may run; each reads
what changed since its own last cycle) and derived at start: the first
cycle looks back ``FIRST_LOOKBACK``. Re-reading is harmless: every judgment
is made on a schedule's latest runs and every write is guarded. A detector
that was down longer than ``FIRST_LOOKBACK`` does not judge the runs that
ended before that again; the schedules' next runs are judged as usual.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Count, Min, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import PeriodicTask

from alerts import incidents
from alerts.incidents import BEAT_SCOPE, NEVER, NewIncident, queue_scope, schedule_scope
from alerts.maintenance import MuteSet, active_mutes
from alerts.models import Health, Incident, IncidentKind, ScheduleHealth
from jobs.models import JobRun, RunStatus, WorkerPresence
from jobs.workers import LIVE_SECONDS
from lib.sequences import chunks
from scheduler.beat.engine import QUARANTINE_PREFIX
from scheduler.models import BeatLease, ScheduleChange, SchedulePolicy
from scheduler.services import paused_now

logger = logging.getLogger(__name__)

# Runs are re-read this far behind the cursor: a run's end commits a moment
# after its finished_at (beat's claim of missed slots, up to seconds), so a run
# may appear behind a cycle that already read past it. Each cycle reads
# OVERLAP + its interval of ended runs: keep it short.
OVERLAP = timedelta(seconds=10)
# A detector's first cycle judges the runs that ended this long before it started.
FIRST_LOOKBACK = timedelta(minutes=5)
# A cycle reads at most this much of the ended runs' history (a detector catching up does it in steps).
MAX_WINDOW = timedelta(minutes=5)
# A queue whose runs waited this long with no live worker consuming it has no worker.
NO_WORKER_AFTER = timedelta(seconds=30)
# Resolved beat incidents a missed slot may still be grouped under (beat's catch-up records them late).
BEAT_HISTORY = timedelta(hours=6)
# The distinct graces of the policies, re-read this often (a full read of the policies).
GRACE_REFRESH_SECONDS = 60.0
# At most this many distinct graces are matched exactly in SQL; more are filtered here.
MAX_EXACT_GRACES = 16
# Schedule incidents reminded per cycle (the rest next cycle).
REMINDERS_PER_CYCLE = 500

BAD_KINDS: dict[str, str] = {
    RunStatus.FAILED: IncidentKind.FAILED,
    RunStatus.SOFT_TIMEOUT: IncidentKind.TIMED_OUT,
    RunStatus.HARD_TIMEOUT: IncidentKind.TIMED_OUT,
    RunStatus.LOST: IncidentKind.LOST,
    RunStatus.MISSED: IncidentKind.MISSED,
}
# Kinds that open only after failures_before_alert consecutive bad runs; a missed slot opens at once.
THRESHOLDED = frozenset({IncidentKind.FAILED, IncidentKind.TIMED_OUT, IncidentKind.LOST})
JUDGED_STATUSES = [*BAD_KINDS, RunStatus.SUCCEEDED]
WAITING_STATUSES = [RunStatus.QUEUED, RunStatus.RETRYING]
RUN_FIELDS = (
    "id", "schedule_id", "job", "queue", "status", "scheduled_for", "started_at", "finished_at",
    "lateness_ms", "error_type", "error_message", "attempt",
)  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """A schedule's alert thresholds (``SchedulePolicy``; its field defaults when it has no policy)."""

    grace: int = 60
    late_after: int | None = None
    expected_duration: int | None = None
    failures_before_alert: int = 1
    successes_before_recovery: int = 1
    remind_every: int | None = None

    @property
    def reminder_seconds(self) -> int:
        return settings.ALERT_REMINDER_SECONDS if self.remind_every is None else self.remind_every


THRESHOLD_FIELDS = (
    "grace", "late_after", "expected_duration", "failures_before_alert", "successes_before_recovery",
    "remind_every",
)  # fmt: skip
DEFAULT_THRESHOLDS = Thresholds()


def thresholds_for(schedule_ids: Iterable[int]) -> dict[int, Thresholds]:
    found: dict[int, Thresholds] = {}
    for chunk in chunks(list(set(schedule_ids))):
        for row in SchedulePolicy.objects.filter(task_id__in=chunk).values("task_id", *THRESHOLD_FIELDS):
            schedule_id = row.pop("task_id")
            found[schedule_id] = Thresholds(**row)
    return found


@dataclass
class CycleReport:
    """What one cycle did, and what it cost the database."""

    now: datetime
    window_start: datetime
    window_end: datetime
    runs_examined: int = 0
    schedules_judged: int = 0
    opened: int = 0
    paged: int = 0
    conditions_added: int = 0
    escalated: int = 0
    reminded: int = 0
    resolved: int = 0
    errors: int = 0
    queries: int = 0
    db_ms: float = 0.0
    wall_ms: float = 0.0

    def summary(self) -> str:
        return (
            f"opened {self.opened} (paged {self.paged}), resolved {self.resolved}, reminded "
            f"{self.reminded}, escalated {self.escalated}; {self.runs_examined} runs, "
            f"{self.queries} queries, {self.db_ms:.1f} ms in the database"
        )


@dataclass
class Event:
    """One bad thing seen on a schedule: the condition, when it became true, and its run."""

    kind: str
    at: datetime
    key: str  # unique per event: an incident takes each once
    run: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    failures: int = 1


@contextmanager
def database_clock(report: CycleReport) -> Iterator[None]:
    """Count the statements run inside and the time spent waiting on them."""

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            report.queries += 1
            report.db_ms += (time.perf_counter() - started) * 1000

    with connection.execute_wrapper(timed):
        yield


class Detector:
    """One detector's cursor and caches; :meth:`run_cycle` is one look."""

    def __init__(self) -> None:
        self.cursor: datetime | None = None
        self._graces: list[int] = []
        self._smallest_late_after: int | None = None
        self._graces_read = -GRACE_REFRESH_SECONDS

    def smallest_late_after(self) -> int | None:
        """The smallest ``late_after`` in use (``None``: none judges lateness), cached with the graces."""
        self.graces()
        return self._smallest_late_after

    def graces(self) -> list[int]:
        """The distinct graces in use (the default's too, for schedules without a policy), cached.

        Read every GRACE_REFRESH_SECONDS: two full reads of the policies
        (about 20 ms at 100,000), not worth paying every cycle. A grace or
        ``late_after`` edited to a value outside the cached range is judged
        from the next refresh on.
        """
        clock = time.monotonic()
        if clock - self._graces_read >= GRACE_REFRESH_SECONDS or not self._graces:
            found = set(SchedulePolicy.objects.values_list("grace", flat=True).distinct())
            self._graces = sorted(found | {DEFAULT_THRESHOLDS.grace})
            self._smallest_late_after = SchedulePolicy.objects.aggregate(smallest=Min("late_after"))[
                "smallest"
            ]
            self._graces_read = clock
        return self._graces

    def run_cycle(self, now: datetime | None = None) -> CycleReport:
        now = now or timezone.now()
        start = self.cursor or now - FIRST_LOOKBACK
        end = max(start, min(now, start + MAX_WINDOW))
        report = CycleReport(now=now, window_start=start - OVERLAP, window_end=end)
        clock = time.perf_counter()
        with database_clock(report):
            Cycle(self, report).run()
        report.wall_ms = (time.perf_counter() - clock) * 1000
        self.cursor = end
        return report


_default = Detector()


def run_cycle(now: datetime | None = None) -> CycleReport:
    """One cycle of this process's detector (its cursor carries over between calls)."""
    return _default.run_cycle(now)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _text_id(run_id: Any) -> str | None:
    """A run's id as text for an incident's details; ``None`` for a condition with no run (not scheduled)."""
    return str(run_id) if run_id is not None else None


def _seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


def served_queues(now: datetime) -> set[str]:
    """The queues some live worker consumes (``jobs.workers``: presence seen within LIVE_SECONDS)."""
    served: set[str] = set()
    for queues in WorkerPresence.objects.filter(
        last_seen_at__gte=now - timedelta(seconds=LIVE_SECONDS)
    ).values_list("queues", flat=True):
        served.update(queues or [])
    return served


def _queue_of(run: Mapping[str, Any]) -> str:
    return run.get("queue") or settings.CELERY_TASK_DEFAULT_QUEUE


class Cycle:
    """One look: load what is needed, judge the system, then the schedules that changed."""

    def __init__(self, detector: Detector, report: CycleReport) -> None:
        self.detector = detector
        self.report = report
        self.now = report.now
        self.lo, self.hi = report.window_start, report.window_end
        self.mutes: MuteSet = active_mutes(self.now)
        self.served = served_queues(self.now)
        self.beat_open: Incident | None = None
        self.beat_history: list[Incident] = []
        self.lease: dict[str, Any] | None = None
        self.queue_open: dict[str, Incident] = {}
        self.waiting_by_queue: dict[str, tuple[int, datetime]] = {}
        # Per schedule judged this cycle.
        self.info: dict[int, dict[str, Any]] = {}
        self.thresholds: dict[int, Thresholds] = {}
        self.health: dict[int, tuple[str, datetime]] = {}
        self.open: dict[int, Incident] = {}
        self.missed_in_window: list[dict[str, Any]] = []
        # Schedule incidents grouped under a system incident, opened together (open_grouped).
        self.grouped: dict[int, NewIncident] = {}
        self.recent: dict[int, list[dict[str, Any]]] = {}
        self.quiet_recoveries: list[tuple[Incident, str]] = []

    def run(self) -> None:
        self.load_system_incidents()
        self.judge_beat_down()
        self.judge_queues()
        events: dict[int, list[Event]] = defaultdict(list)
        self.collect_waiting(events)
        self.collect_running(events)
        self.collect_not_scheduled(events)
        ended = self.collect_ended()
        changed = self.collect_changes()
        self.judge_schedules(events, ended, changed)
        self.sweep_paused_and_deleted()
        self.resume_enabled()
        self.send_reminders()
        self.judge_beat_back()
        self.resolve_queues()

    # --- system incidents ------------------------------------------------------------
    def load_system_incidents(self) -> None:
        for incident in Incident.objects.filter(
            resolved_at__isnull=True, kind__in=[IncidentKind.BEAT_DOWN, IncidentKind.NO_WORKER]
        ):
            if incident.scope == BEAT_SCOPE:
                self.beat_open = incident
            elif incident.queue:
                self.queue_open[incident.queue] = incident
        self.beat_history = list(
            Incident.objects.filter(
                scope=BEAT_SCOPE, resolved_at__isnull=False, opened_at__gte=self.now - BEAT_HISTORY
            )
        )

    def _reminder_seconds_system(self) -> int:
        return settings.ALERT_REMINDER_SECONDS

    def _open_system(self, new: NewIncident) -> Incident | None:
        new.quiet = self.mutes.everything_until is not None
        new.remind_every = self._reminder_seconds_system()
        incident = incidents.open_incident(new, now=self.now)
        if incident is not None:
            self.report.opened += 1
            self.report.paged += not incident.quiet
            logger.warning("incident #%s opened: %s", incident.pk, incident.summary)
            return incident
        return Incident.objects.filter(scope=new.scope, resolved_at__isnull=True).first()

    def judge_beat_down(self) -> None:
        """Open the beat incident when no leader renewed the lease for ALERT_BEAT_DOWN_AFTER.

        No lease row at all means beat never ran here: not judged (a fresh
        install, a test database).
        """
        lease = (
            BeatLease.objects.filter(name="beat")
            .values("holder", "token", "renewed_at", "expires_at")
            .first()
        )
        if lease is None:
            return
        self.lease = dict(lease)
        last = self.lease["renewed_at"] or self.lease["expires_at"]
        threshold = timedelta(seconds=settings.ALERT_BEAT_DOWN_AFTER)
        self.lease["last"] = last
        self.lease["down"] = last < self.now - threshold
        if not self.lease["down"] or self.beat_open is not None:
            return
        silent = _seconds(self.now - last)
        self.beat_open = self._open_system(
            NewIncident(
                scope=BEAT_SCOPE,
                kind=IncidentKind.BEAT_DOWN,
                summary=f"beat down: no leader has renewed its lease for {silent} s "
                f"(threshold {settings.ALERT_BEAT_DOWN_AFTER} s); no slot is being claimed",
                details={
                    "lease_holder": self.lease["holder"],
                    "lease_token": self.lease["token"],
                    "last_tick_at": last.isoformat(),
                    "down_for_s": silent,
                },
            )
        )

    def judge_beat_back(self) -> None:
        """Resolve the beat incident at the second renewal seen after the outage (see the module doc)."""
        incident, lease = self.beat_open, self.lease
        if incident is None or lease is None or lease["down"]:
            return
        renewed = lease["last"]
        down_since = parse_datetime(incident.details.get("last_tick_at", "")) or NEVER
        if renewed <= down_since:
            return
        back_at = parse_datetime(incident.details.get("back_at") or "")
        if back_at is None:
            incidents.note_beat_back(incident, renewed_at=renewed)
            return
        if renewed <= back_at:
            return
        effects = Incident.objects.filter(cause=incident).count()
        if incidents.resolve(
            incident,
            now=self.now,
            resolution=f"beat is back: {lease['holder'] or 'a leader'} renews the lease "
            f"(token {lease['token']}); {effects} schedule incidents recovered with it",
            health=None,
            effects=effects,
            back_at=back_at.isoformat(),
        ):
            self.report.resolved += 1
            logger.warning("incident #%s resolved: beat is back (%d grouped)", incident.pk, effects)

    def judge_queues(self) -> None:
        """Open a no-worker incident for each queue with runs waiting NO_WORKER_AFTER and no live consumer."""
        rows = (
            JobRun.objects.filter(
                status=RunStatus.QUEUED,
                started_at__isnull=True,
                scheduled_for__lt=self.now - NO_WORKER_AFTER,
            )
            .values("queue")
            .annotate(waiting=Count("id"), oldest=Min("scheduled_for"))
        )
        for row in rows:
            queue = _queue_of(row)
            count, oldest = self.waiting_by_queue.get(queue, (0, row["oldest"]))
            self.waiting_by_queue[queue] = (count + row["waiting"], min(oldest, row["oldest"]))
        for queue, (waiting, oldest) in self.waiting_by_queue.items():
            if queue not in self.served:
                self.queue_incident(queue, waiting, oldest)

    def queue_incident(self, queue: str, waiting: int, oldest: datetime) -> Incident | None:
        """The open no-worker incident of ``queue``, opened now if there is none."""
        if queue in self.queue_open:
            return self.queue_open[queue]
        incident = self._open_system(
            NewIncident(
                scope=queue_scope(queue),
                kind=IncidentKind.NO_WORKER,
                queue=queue,
                summary=f"no live worker consumes queue {queue!r}: {waiting} runs waiting, the oldest "
                f"for {_seconds(self.now - oldest)} s",
                details={"queue": queue, "waiting_runs": waiting, "oldest_slot": oldest.isoformat()},
            )
        )
        if incident is not None:
            self.queue_open[queue] = incident
        return incident

    def resolve_queues(self) -> None:
        for queue, incident in self.queue_open.items():
            if queue in self.served:
                why = f"a live worker consumes queue {queue!r} again"
            elif not JobRun.objects.filter(
                status__in=WAITING_STATUSES, started_at__isnull=True, queue=queue
            ).exists():
                why = f"no run waits in queue {queue!r} any more"
            else:
                continue
            effects = Incident.objects.filter(cause=incident).count()
            if incidents.resolve(
                incident,
                now=self.now,
                resolution=f"{why}; {effects} schedule incidents recovered with it",
                health=None,
                effects=effects,
            ):
                self.report.resolved += 1
                logger.warning("incident #%s resolved: %s", incident.pk, why)

    # --- collecting what changed -----------------------------------------------------
    def collect_waiting(self, events: dict[int, list[Event]]) -> None:
        """Runs still waiting whose slot + grace passed in this cycle's window (missed, for now)."""
        graces = self.detector.graces()
        waiting = JobRun.objects.filter(
            status__in=WAITING_STATUSES,
            started_at__isnull=True,
            schedule__isnull=False,
            scheduled_for__gt=self.lo - timedelta(seconds=max(graces)),
            scheduled_for__lte=self.now - timedelta(seconds=min(graces)),
        )
        if len(graces) <= MAX_EXACT_GRACES:
            exact = Q()
            for grace in graces:
                crossed = Q(
                    scheduled_for__gt=self.lo - timedelta(seconds=grace),
                    scheduled_for__lte=self.now - timedelta(seconds=grace),
                )
                own = Q(schedule__policy__grace=grace)
                if grace == DEFAULT_THRESHOLDS.grace:
                    own |= Q(schedule__policy__isnull=True)
                exact |= crossed & own
            waiting = waiting.filter(exact)
        rows = list(waiting.values(*RUN_FIELDS))
        self.report.runs_examined += len(rows)
        thresholds = thresholds_for(row["schedule_id"] for row in rows)
        for run in rows:
            grace = thresholds.get(run["schedule_id"], DEFAULT_THRESHOLDS).grace
            due = run["scheduled_for"] + timedelta(seconds=grace)
            if not self.lo < due <= self.now:
                continue
            events[run["schedule_id"]].append(
                Event(
                    kind=IncidentKind.MISSED,
                    at=due,
                    key=f"missed:{run['id']}",
                    run=run,
                    details={
                        "grace_s": grace,
                        "waiting_for_s": _seconds(self.now - run["scheduled_for"]),
                        "error_message": f"not started {grace} s after its slot; still {run['status']} "
                        f"in queue {_queue_of(run)!r}",
                    },
                )
            )

    def collect_not_scheduled(self, events: dict[int, list[Event]]) -> None:
        """Schedules beat quarantined: their row cannot be evaluated, so no slot (and no run) comes.

        Such a schedule would otherwise never be missed: nothing is claimed
        for it. Beat writes the reason on its policy (``problem``, starting
        ``QUARANTINE_PREFIX``; the ``policy_with_problem`` partial index holds
        only those rows). The condition opens the schedule's incident at once;
        a fixed row brings the schedule back (beat clears the problem), and
        its next successful run resolves the incident as usual. The key
        carries the reason, so a schedule quarantined again for another
        reason adds a condition to the open incident.
        """
        rows = list(
            SchedulePolicy.objects.exclude(problem="")
            .filter(problem__startswith=QUARANTINE_PREFIX, task__enabled=True)
            .values("task_id", "problem", "queue", "task__task")
        )
        for row in rows:
            problem = row["problem"]
            run = {
                "id": None,
                "schedule_id": row["task_id"],
                "job": row["task__task"],
                "queue": row["queue"],
                "status": "",
                "scheduled_for": self.now,
            }
            digest = hashlib.sha1(problem.encode(), usedforsecurity=False).hexdigest()[:12]
            events[row["task_id"]].append(
                Event(
                    kind=IncidentKind.NOT_SCHEDULED,
                    at=self.now,
                    key=f"not-scheduled:{digest}",
                    run=run,
                    details={"error_message": problem},
                )
            )

    def collect_running(self, events: dict[int, list[Event]]) -> None:
        """Running runs past their expected duration (overrun) or started late.

        The running runs (``run_active``; as many as the workers run at
        once) without a join, then the policies of those that ran long enough
        or started late enough to matter, by primary key: joining every
        running run to its policy made PostgreSQL hash all 100,000 policies.
        """
        rows = list(
            JobRun.objects.filter(status=RunStatus.RUNNING, schedule__isnull=False)
            .order_by()
            .values(*RUN_FIELDS)
        )
        self.report.runs_examined += len(rows)
        thresholds = thresholds_for(row["schedule_id"] for row in rows)
        for run in rows:
            limits = thresholds.get(run["schedule_id"], DEFAULT_THRESHOLDS)
            started = run["started_at"]
            if started is None:
                continue
            late = self._late_event(run, limits)
            if late is not None:
                events[run["schedule_id"]].append(late)
            if limits.expected_duration is not None:
                due = started + timedelta(seconds=limits.expected_duration)
                if due < self.now:
                    events[run["schedule_id"]].append(
                        Event(
                            kind=IncidentKind.OVERRUN,
                            at=due,
                            key=f"overrun:{run['id']}",
                            run=run,
                            details={
                                "running_for_s": _seconds(self.now - started),
                                "expected_duration_s": limits.expected_duration,
                            },
                        )
                    )

    def _late_event(self, run: dict[str, Any], limits: Thresholds) -> Event | None:
        lateness = run["lateness_ms"]
        if limits.late_after is None or lateness is None or lateness <= limits.late_after * 1000:
            return None
        return Event(
            kind=IncidentKind.LATE,
            at=run["started_at"] or self.now,
            key=f"late:{run['id']}",
            run=run,
            details={"late_by_s": round(lateness / 1000, 1), "late_after_s": limits.late_after},
        )

    def collect_ended(self) -> set[int]:
        """Schedules with an interesting run that ended in the window.

        One range of the ``run_by_finish`` index, no join: the runs that
        ended badly, the runs of schedules whose health is not up (read
        first: only schedules that flipped have a row), and the runs that
        started later than the smallest ``late_after`` in use (then checked
        against their own policy here). A healthy schedule's on-time
        success, nearly every run, is read by nothing else.
        """
        unhealthy = list(
            ScheduleHealth.objects.filter(state__in=[Health.LATE, Health.DOWN]).values_list(
                "schedule_id", flat=True
            )
        )
        interesting = Q(status__in=list(BAD_KINDS)) | Q(schedule_id__in=unhealthy)
        smallest_late_after = self.detector.smallest_late_after()
        if smallest_late_after is not None:
            interesting |= Q(lateness_ms__gt=smallest_late_after * 1000)
        rows = list(
            JobRun.objects.filter(
                finished_at__gt=self.lo,
                finished_at__lte=self.hi,
                schedule__isnull=False,
                status__in=JUDGED_STATUSES,
            )
            .filter(interesting)
            .order_by()
            .values(*RUN_FIELDS)
        )
        self.report.runs_examined += len(rows)
        unhealthy_ids = set(unhealthy)
        ids = {
            run["schedule_id"]
            for run in rows
            if run["status"] in BAD_KINDS or run["schedule_id"] in unhealthy_ids
        }
        self.missed_in_window = [run for run in rows if run["status"] == RunStatus.MISSED]
        maybe_late = {
            run["schedule_id"] for run in rows if run["schedule_id"] not in ids and run["lateness_ms"]
        }
        if maybe_late:
            limits = thresholds_for(maybe_late)
            for run in rows:
                pk, lateness = run["schedule_id"], run["lateness_ms"]
                late_after = limits.get(pk, DEFAULT_THRESHOLDS).late_after if pk in maybe_late else None
                if late_after is not None and lateness > late_after * 1000:
                    ids.add(pk)
        return ids

    def collect_changes(self) -> set[int]:
        """Schedules edited in the window (the change log): paused or resumed, perhaps."""
        return set(
            ScheduleChange.objects.filter(created_at__gt=self.lo, created_at__lte=self.now)
            .values_list("task_id", flat=True)
            .distinct()
        )

    # --- judging schedules -----------------------------------------------------------
    def load_schedules(self, ids: set[int]) -> None:
        for chunk in chunks(sorted(ids)):
            paused = set(
                PeriodicTask.objects.filter(paused_now(self.now, "policy__"), pk__in=chunk).values_list(
                    "pk", flat=True
                )
            )
            for row in PeriodicTask.objects.filter(pk__in=chunk).values(
                "id", "name", "task", "enabled", "crontab__timezone"
            ):
                self.info[row["id"]] = {**row, "paused": row["id"] in paused}
            for pk, state, since in ScheduleHealth.objects.filter(schedule_id__in=chunk).values_list(
                "schedule_id", "state", "since"
            ):
                self.health[pk] = (state, since)
            for incident in Incident.objects.filter(
                scope__in=[schedule_scope(pk) for pk in chunk], resolved_at__isnull=True
            ):
                if incident.schedule_id is not None:
                    self.open[incident.schedule_id] = incident
        self.thresholds.update(thresholds_for(ids))

    def judge_schedules(self, events: dict[int, list[Event]], ended: set[int], changed: set[int]) -> None:
        ids = set(events) | ended | changed
        if not ids:
            return
        self.load_schedules(ids)
        missed_by_schedule: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for run in sorted(self.missed_in_window, key=lambda run: run["scheduled_for"]):
            missed_by_schedule[run["schedule_id"]].append(run)
        # Two passes: what went wrong (grouped incidents are opened together
        # after the first), then each schedule's latest endings, which may
        # resolve what the first pass opened (a catch-up's newest slot ran).
        active = []
        for schedule_id in sorted(ids):
            info = self.info.get(schedule_id)
            if info is None:
                continue  # deleted: its open incident is resolved by sweep_paused_and_deleted
            self.report.schedules_judged += 1
            with self.isolated(schedule_id):
                if not info["enabled"] or info["paused"]:
                    self.pause(schedule_id, "schedule paused" if info["enabled"] else "schedule disabled")
                    continue
                active.append(schedule_id)
                if self.health.get(schedule_id, (Health.UP,))[0] == Health.PAUSED:
                    incidents.set_health(
                        schedule_id, Health.UP, now=self.now, reason="schedule enabled again"
                    )
                    self.health[schedule_id] = (Health.UP, self.now)
                for event in sorted(events.get(schedule_id, []), key=lambda e: e.at):
                    self.on_bad(schedule_id, event)
                for run in missed_by_schedule.get(schedule_id, []):
                    self.group_missed_slot(schedule_id, run)
        self.open_grouped()
        judged = [schedule_id for schedule_id in active if schedule_id in ended]
        self.recent = self.latest_runs(judged)
        for schedule_id in judged:
            with self.isolated(schedule_id):
                self.judge_ended(schedule_id)
        self.resolve_quiet_recoveries()

    def latest_runs(self, schedule_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The latest finished runs of each schedule, newest slot first, as deep as its thresholds need.

        PostgreSQL: one statement per thousand schedules, a LATERAL subquery
        each reading its schedule's newest runs through the
        ``one_run_per_slot`` index (no schedule's whole history is read).
        Elsewhere (SQLite, embedded): one query per schedule.
        """
        depth = {
            pk: max(self._limits(pk).failures_before_alert, self._limits(pk).successes_before_recovery, 1)
            for pk in schedule_ids
        }
        found: dict[int, list[dict[str, Any]]] = defaultdict(list)
        if connection.vendor != "postgresql":
            for pk in schedule_ids:
                found[pk] = list(
                    JobRun.objects.filter(schedule_id=pk, status__in=JUDGED_STATUSES)
                    .order_by("-scheduled_for")
                    .values(*RUN_FIELDS)[: depth[pk]]
                )
            return found
        table = connection.ops.quote_name(JobRun._meta.db_table)
        columns = ", ".join(f"r.{connection.ops.quote_name(name)}" for name in RUN_FIELDS)  # column names
        statuses = ", ".join(["%s"] * len(JUDGED_STATUSES))
        for chunk in chunks(schedule_ids):
            limit = max(depth[pk] for pk in chunk)
            sql = (
                f"SELECT {columns} FROM unnest(%s::integer[]) AS s(id) CROSS JOIN LATERAL ("  # noqa: S608
                f"SELECT * FROM {table} WHERE schedule_id = s.id AND status IN ({statuses}) "
                "ORDER BY scheduled_for DESC LIMIT %s) AS r"
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, [list(chunk), *[str(s) for s in JUDGED_STATUSES], limit])
                for values in cursor.fetchall():
                    run = dict(zip(RUN_FIELDS, values, strict=True))
                    found[run["schedule_id"]].append(run)
        for pk, runs in found.items():
            runs.sort(key=lambda run: run["scheduled_for"], reverse=True)
            del runs[depth.get(pk, 1) :]
        return found

    def resolve_quiet_recoveries(self) -> None:
        """Resolve together the quiet incidents whose schedules recovered this cycle (an outage's end)."""
        if not self.quiet_recoveries:
            return
        resolved = incidents.resolve_quietly_many(self.quiet_recoveries, now=self.now)
        self.quiet_recoveries = []
        for incident in resolved:
            self.open.pop(incident.schedule_id or 0, None)
        self.report.resolved += len(resolved)
        if resolved:
            logger.info("%d quiet schedule incidents resolved: their schedules recovered", len(resolved))

    @contextmanager
    def isolated(self, schedule_id: int) -> Iterator[None]:
        """One schedule's trouble (a bug, a row deleted under us) never stops the cycle."""
        try:
            yield
        except (OperationalError, InterfaceError):
            raise  # the database is gone: the whole cycle is retried
        except Exception:  # noqa: BLE001
            self.report.errors += 1
            logger.exception("alert detector: schedule %s not judged", schedule_id)

    def open_grouped(self) -> None:
        """Open the quiet incidents this cycle grouped under a system incident, in a few statements."""
        if not self.grouped:
            return
        batch = list(self.grouped.values())
        self.grouped = {}
        opened = incidents.open_quiet_incidents(batch, now=self.now)
        for incident in opened:
            if incident.schedule_id is not None:
                self.open[incident.schedule_id] = incident
                self.health[incident.schedule_id] = (Health.DOWN, self.now)
        self.report.opened += len(opened)
        mine = {incident.scope for incident in opened}
        others = [new.scope for new in batch if new.scope not in mine]
        for chunk in chunks(others):  # opened first by another detector
            for incident in Incident.objects.filter(scope__in=chunk, resolved_at__isnull=True):
                if incident.schedule_id is not None:
                    self.open[incident.schedule_id] = incident
        if opened:
            causes = sorted({str(i.cause_id) for i in opened})
            logger.warning(
                "%d quiet schedule incidents opened under incident %s", len(opened), ", ".join(causes)
            )

    def group_missed_slot(self, schedule_id: int, run: dict[str, Any]) -> None:
        """Record a slot missed inside a beat outage under the beat incident, even if a later run succeeded.

        Beat's catch-up records the outage's slots missed and runs the newest
        at once; judged by its latest run only, the schedule would look as if
        nothing happened, and the beat incident could not say how many
        schedules it stalled. The grouped incident is quiet and resolves
        (quietly) as soon as the schedule has a successful run after it.
        Once the schedule's health changed after the slot was recorded, it
        was judged already (a re-read of the window's overlap).
        """
        event = Event(
            kind=IncidentKind.MISSED,
            at=run["finished_at"] or self.now,
            key=f"missed:{run['id']}",
            run=run,
            details={"error_message": (run["error_message"] or "")[:1000]},
        )
        cause = self.cause_for(event)
        if cause is None or cause.scope != BEAT_SCOPE:
            return  # judged by its latest run, like any other ending
        since = self.health.get(schedule_id, (Health.UP, NEVER))[1]
        if schedule_id not in self.open and event.at <= since:
            return
        self.on_bad(schedule_id, event)

    def pause(self, schedule_id: int, reason: str) -> None:
        """A disabled or paused schedule: its open incident resolves quietly, its health is paused."""
        incident = self.open.pop(schedule_id, None)
        if incident is not None and incidents.resolve(
            incident,
            now=self.now,
            resolution=f"{reason} (paused)",
            quietly=True,
            health=Health.PAUSED,
        ):
            self.report.resolved += 1
        incidents.set_health(schedule_id, Health.PAUSED, now=self.now, reason=reason)

    def _limits(self, schedule_id: int) -> Thresholds:
        return self.thresholds.get(schedule_id, DEFAULT_THRESHOLDS)

    def classify(self, run: dict[str, Any], limits: Thresholds) -> str | None:
        """The incident kind a finished run stands for, ``None`` for an on-time success."""
        if run["status"] in BAD_KINDS:
            return BAD_KINDS[run["status"]]
        late = limits.late_after is not None and (run["lateness_ms"] or 0) > limits.late_after * 1000
        return IncidentKind.LATE if late else None

    def judge_ended(self, schedule_id: int) -> None:
        """Judge a schedule by its latest finished runs (slot order): open, add to, or resolve."""
        limits = self._limits(schedule_id)
        depth = max(limits.failures_before_alert, limits.successes_before_recovery, 1)
        recent = self.recent.get(schedule_id, [])[:depth]
        if not recent:
            return
        self.report.runs_examined += len(recent)
        kinds = [self.classify(run, limits) for run in recent]
        latest, kind = recent[0], kinds[0]
        incident = self.open.get(schedule_id)
        succeeded = latest["status"] == RunStatus.SUCCEEDED
        if incident is not None and incident.kind != IncidentKind.LATE and succeeded:
            streak = _leading(recent, lambda run: run["status"] == RunStatus.SUCCEEDED)
            self.recover(schedule_id, incident, latest, streak, limits)
            return
        if kind is None:
            if incident is not None:  # a late incident: on-time successes recover it
                self.recover(schedule_id, incident, latest, _leading(kinds, lambda k: k is None), limits)
            elif self.health.get(schedule_id, (Health.UP,))[0] in (Health.DOWN, Health.LATE):
                incidents.set_health(
                    schedule_id,
                    Health.UP,
                    now=self.now,
                    reason="a run succeeded",
                    last_good_run_id=latest["id"],
                )
            return
        since = self.health.get(schedule_id, (Health.UP, NEVER))[1]
        if incident is None and latest["finished_at"] is not None and latest["finished_at"] <= since:
            return  # judged before the schedule's current health began
        if kind == IncidentKind.LATE:
            event = self._late_event(latest, limits)
            if event is not None:
                self.on_bad(schedule_id, event)
            return
        failures = _leading(kinds, lambda k: k is not None and k != IncidentKind.LATE)
        details: dict[str, Any] = {
            "error_type": latest["error_type"],
            "error_message": (latest["error_message"] or "")[:1000],
        }
        if kind == IncidentKind.TIMED_OUT:
            details["timeout"] = "soft" if latest["status"] == RunStatus.SOFT_TIMEOUT else "hard"
        self.on_bad(
            schedule_id,
            Event(
                kind=kind,
                at=latest["finished_at"] or self.now,
                key=f"{kind}:{latest['id']}",
                run=latest,
                details=details,
                failures=failures,
            ),
        )

    def recover(
        self, schedule_id: int, incident: Incident, latest: dict[str, Any], streak: int, limits: Thresholds
    ) -> None:
        if streak < limits.successes_before_recovery:
            return
        opened_by = parse_datetime(incident.details.get("slot") or "")
        if opened_by is not None and latest["scheduled_for"] < opened_by:
            return  # an older slot's success: the incident's own slot has not recovered
        runs = "run" if streak == 1 else f"{streak} consecutive runs"
        if incident.quiet:  # never paged: resolved with the others at the end of the pass
            self.quiet_recoveries.append((incident, f"recovered: {runs} succeeded"))
            return
        if incidents.resolve(
            incident,
            now=self.now,
            resolution=f"recovered: {runs} succeeded (the latest at {latest['finished_at']:%H:%M:%S}Z)",
            last_good_run_id=latest["id"],
            recovered_by_run=str(latest["id"]),
        ):
            self.report.resolved += 1
            self.open.pop(schedule_id, None)
            logger.info("incident #%s resolved: %s", incident.pk, incident.resolution)

    def cause_for(self, event: Event) -> Incident | None:
        """The system incident that explains ``event``, if any (only missed slots have one)."""
        if event.kind != IncidentKind.MISSED:
            return None
        slot = event.run["scheduled_for"]
        # A slot due shortly before the dead leader's last renewal may not have
        # been claimed yet (claims trail their slots by up to a loop).
        margin = timedelta(seconds=settings.BEAT_LEASE_SECONDS + settings.CELERY_BEAT_MAX_LOOP_INTERVAL)
        for incident in ([self.beat_open] if self.beat_open else []) + self.beat_history:
            down_since = parse_datetime(incident.details.get("last_tick_at", "")) or incident.opened_at
            if down_since - margin <= slot <= (incident.resolved_at or self.now):
                return incident
        if event.run["status"] in WAITING_STATUSES:
            queue = _queue_of(event.run)
            if queue not in self.served:
                return self.queue_incident(queue, 1, slot)
        return None

    def on_bad(self, schedule_id: int, event: Event) -> None:
        """Open the schedule's incident for ``event``, or add it to the open one."""
        info, limits = self.info[schedule_id], self._limits(schedule_id)
        job = event.run.get("job") or info["task"]
        muted_until = self.mutes.until(schedule_id, job)
        incident = self.open.get(schedule_id)
        if incident is not None:
            counts: dict[str, Any] = {}
            if event.kind in THRESHOLDED or event.kind == IncidentKind.MISSED:
                counts["failures"] = max(event.failures, int(incident.details.get("failures", 0)) + 1)
            if incidents.add_condition(
                incident,
                {"key": event.key, "kind": event.kind, "run": _text_id(event.run["id"])},
                now=self.now,
                **counts,
            ):
                self.report.conditions_added += 1
                if incident.quiet and muted_until is None and self.cause_for(event) is None:
                    if incidents.escalate(
                        incident,
                        now=self.now,
                        remind_every=limits.reminder_seconds,
                        reason=f"still failing ({event.kind}) after its cause or mute ended",
                    ):
                        self.report.escalated += 1
                        self.report.paged += 1
            if event.kind != IncidentKind.LATE:
                if incidents.set_health(schedule_id, Health.DOWN, now=self.now, reason=event.kind):
                    self.health[schedule_id] = (Health.DOWN, self.now)
            return
        pending = self.grouped.get(schedule_id)
        if pending is not None:  # opened with the others of its outage at the end of the pass
            conditions = pending.details["conditions"]
            if all(c["key"] != event.key for c in conditions) and len(conditions) < incidents.CONDITIONS_KEPT:
                conditions.append({"key": event.key, "kind": event.kind, "run": _text_id(event.run["id"])})
                pending.details["conditions_seen"] = len(conditions)
            return
        if event.kind in THRESHOLDED and event.failures < limits.failures_before_alert:
            return
        cause = self.cause_for(event)
        new = self.new_incident(schedule_id, event, info, limits, last_good=cause is None)
        new.cause_id = cause.pk if cause is not None else None
        if cause is not None:
            new.quiet = True
            self.grouped[schedule_id] = new
            return
        new.quiet = muted_until is not None
        if muted_until is not None:
            new.details["muted_until"] = muted_until.isoformat()
        opened = incidents.open_incident(new, now=self.now)
        if opened is None:  # another detector opened it first: add to theirs
            existing = Incident.objects.filter(scope=new.scope, resolved_at__isnull=True).first()
            if existing is not None:
                self.open[schedule_id] = existing
                self.on_bad(schedule_id, event)
            return
        self.open[schedule_id] = opened
        self.health[schedule_id] = (new.health, self.now)
        self.report.opened += 1
        self.report.paged += not opened.quiet
        logger.warning(
            "incident #%s opened%s: %s", opened.pk, " (quiet)" if opened.quiet else "", opened.summary
        )

    def new_incident(
        self,
        schedule_id: int,
        event: Event,
        info: dict[str, Any],
        limits: Thresholds,
        *,
        last_good: bool = True,
    ) -> NewIncident:
        """The incident ``event`` opens; ``last_good``: look up the last good run (for the page)."""
        run = event.run
        name = info["name"]
        good = (
            JobRun.objects.filter(schedule_id=schedule_id, status=RunStatus.SUCCEEDED)
            .order_by("-scheduled_for")
            .values("id", "finished_at")
            .first()
            if last_good
            else None
        )
        details: dict[str, Any] = {
            **event.details,
            "slot": run["scheduled_for"].isoformat(),
            "timezone": str(info.get("crontab__timezone") or "UTC"),
            "run_id": _text_id(run["id"]),
            "failures": event.failures,
            "last_good_run_at": _iso(good["finished_at"]) if good else None,
            "last_good_run_id": str(good["id"]) if good else None,
            "conditions": [{"key": event.key, "kind": event.kind, "run": _text_id(run["id"])}],
            "conditions_seen": 1,
            "last_condition": event.key,
        }
        return NewIncident(
            scope=schedule_scope(schedule_id),
            kind=event.kind,
            summary=f"{name}: {self.describe(event, limits)}",
            details=details,
            schedule_id=schedule_id,
            schedule_name=name,
            job=run.get("job") or info["task"],
            queue=_queue_of(run),
            run_id=run["id"],
            remind_every=limits.reminder_seconds,
            health=Health.LATE if event.kind == IncidentKind.LATE else Health.DOWN,
        )

    def describe(self, event: Event, limits: Thresholds) -> str:
        details, slot = event.details, f"{event.run['scheduled_for']:%Y-%m-%d %H:%M:%S}Z"
        error = ": ".join(
            str(part) for part in (details.get("error_type"), details.get("error_message")) if part
        )
        error = f": {error}" if error else ""
        failures = f" ({event.failures} in a row)" if event.failures > 1 else ""
        descriptions: dict[str, str] = {
            IncidentKind.MISSED: f"missed: no run started by its slot {slot} + {limits.grace} s grace",
            IncidentKind.LATE: f"late: the run of {slot} started {details.get('late_by_s')} s after its "
            f"slot (threshold {limits.late_after} s)",
            IncidentKind.FAILED: f"failed after its last retry{failures}{error}"[:400],
            IncidentKind.TIMED_OUT: f"timed out ({details.get('timeout')} limit){failures}",
            IncidentKind.LOST: f"lost: its worker died under the run of {slot}{failures}",
            IncidentKind.OVERRUN: f"overrun: running for {details.get('running_for_s')} s, expected "
            f"{details.get('expected_duration_s')} s",
            IncidentKind.NOT_SCHEDULED: f"{details.get('error_message')}: beat runs no slot of it until "
            "the row is fixed"[:400],
        }
        return descriptions.get(event.kind, event.kind)

    # --- open incidents --------------------------------------------------------------
    def sweep_paused_and_deleted(self) -> None:
        """Open schedule incidents whose schedule was disabled, paused or deleted resolve quietly."""
        stopped = Q(schedule__enabled=False) | paused_now(self.now, "schedule__policy__")
        for incident in Incident.objects.filter(
            Q(schedule__isnull=True) | stopped,
            resolved_at__isnull=True,
            scope__startswith="schedule:",
        ).select_related("schedule"):
            deleted = incident.schedule is None
            disabled = incident.schedule is not None and not incident.schedule.enabled
            if incidents.resolve(
                incident,
                now=self.now,
                resolution="schedule deleted"
                if deleted
                else ("schedule disabled (paused)" if disabled else "schedule paused (paused)"),
                quietly=True,
                health=None if deleted else Health.PAUSED,
            ):
                self.report.resolved += 1

    def resume_enabled(self) -> None:
        """Paused schedules that are enabled and unpaused again are up.

        Also when the change log missed the edit, and when a pause ended by
        its end time (which writes nothing). Reads the paused health rows (one
        per disabled or paused schedule the detector has seen) joined to their
        schedule: no walk of the schedules.
        """
        for schedule_id in (
            ScheduleHealth.objects.filter(state=Health.PAUSED, schedule__enabled=True)
            .exclude(paused_now(self.now, "schedule__policy__"))
            .values_list("schedule_id", flat=True)
        ):
            incidents.set_health(schedule_id, Health.UP, now=self.now, reason="schedule enabled again")

    def send_reminders(self) -> None:
        due = list(
            Incident.objects.filter(
                resolved_at__isnull=True, quiet=False, next_reminder_at__lte=self.now
            ).order_by("next_reminder_at")[:REMINDERS_PER_CYCLE]
        )
        limits = thresholds_for(i.schedule_id for i in due if i.schedule_id is not None)
        for incident in due:
            if incident.schedule_id is not None:
                until = self.mutes.until(incident.schedule_id, incident.job)
                every = limits.get(incident.schedule_id, DEFAULT_THRESHOLDS).reminder_seconds
            else:
                until = self.mutes.everything_until
                every = self._reminder_seconds_system()
            if until is not None:
                incidents.postpone_reminder(incident, until=until, now=self.now)
            elif incidents.send_reminder(incident, now=self.now, remind_every=every):
                self.report.reminded += 1


def _leading(items: list, good) -> int:
    """How many items from the start satisfy ``good``."""
    count = 0
    for item in items:
        if not good(item):
            break
        count += 1
    return count
