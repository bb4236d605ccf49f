"""Sentry Crons: one monitor per schedule, kept in step with the database by check-ins.

Each schedule Sentry can represent is one monitor, keyed by its policy's
stable slug (``SchedulePolicy.slug``: renaming the schedule keeps the
monitor). Every check-in carries the monitor's ``monitor_config``, as the
schedule's rows are when it is sent, and Sentry upserts it: an edit in the
admin reaches Sentry with the next check-in.

What is sent, per run of a schedule (``JobRun.schedule`` set, whatever the
origin: beat's slots, and runs by hand from a schedule, which run the
monitored job with its arguments, so their outcome is the monitor's news),
by receivers of ``jobs.signals`` in the process that recorded the transition:

- ``in_progress`` when the first attempt STARTS on a worker (not when beat
  dispatches: a run waiting in a queue is not running);
- ``ok`` when it succeeds; ``error`` when it fails after its last attempt,
  times out (soft: from the pool process; hard: from the worker's main
  process), is lost with its worker (recorded by the main process), or is
  terminated by a revoke (or revoked while it waited for a retry);
- nothing on a retry: the run's check-in id is its UUID (``run.pk.hex``),
  the same for every attempt, so the next attempt continues the one check-in
  and only the last attempt ends it. A lost pool process with retries left
  is a retry too. ``duration`` (seconds) is the attempt's when the first
  attempt ends it; after retries it is left out and Sentry measures the
  check-in from its ``in_progress`` (the whole run, backoff included).

What is not sent, and why:

- **missed** slots (no start by the deadline; beat's catch-up): nothing.
  Sentry marks a monitor's slot missed itself when no check-in arrives
  within ``checkin_margin`` after it, and the margin is the policy's
  ``grace``, the bound our own detector pages on. The SDK's statuses are
  in_progress/ok/error; an ``error`` for a missed slot would count as a
  failure on top of Sentry's own missed check-in.
- **skipped** slots (overlap ``skip``, revoked before start): nothing. The
  slot did not run, so an ``ok`` would be a lie that can resolve a real
  failure, and an ``error`` would page for a policy choice. Sentry may show
  such a slot as missed when the run it skipped for outlives the margin;
  our detector (``alerts.detector``) does not page for it.
- Schedules Sentry cannot represent (an interval under a minute or not in
  whole minutes, a one-off clocked time, a solar one, no policy row): no
  check-in at all. ``monitor_config_for`` returns the reason, the admin's
  "Sentry Crons monitors" page shows it, and the platform's own detector
  covers them like every schedule.
- Runs with no schedule (a service's ``dispatch`` by job name): no monitor.

Endings no worker signal reports, which Sentry ends itself as a timeout
(an ``error``) once ``max_runtime`` passes after the ``in_progress``: a run
whose whole worker died and whose redelivered copy found no retry left
(``jobs.runs.start_run`` records it ``lost``), an attempt recorded
abandoned by the presence sweep, and a running run beat cut short for a
newer slot (overlap ``replace``: beat's hot path sends nothing). Caveat:
``max_runtime`` is the hard limit of one attempt, so a run whose retries
and backoff together outlast it is timed out by Sentry before its last
attempt reports. And Sentry expects an interval monitor's next check-in
one interval after the last one it received, so a run by hand of an
interval schedule moves that expectation later (a crontab monitor keeps its
slots): a slot missed right after it is reported up to one interval late
by Sentry, on time by our detector.

Costs. Beat never calls Sentry (it only inserts runs). The receivers are
connected only when ``SENTRY_DSN`` is set (``AlertsConfig.ready``): without
it a run costs the worker one attribute test per signal (about 60 ns). With
it, each check-in of a scheduled run reads the change log's head (one index
lookup, about 0.15 ms) and uses the monitor this process read before when no
schedule changed since (``MonitorCache``); otherwise it reads the schedule,
its crontab/interval/clocked row and policy in one join (about 2 ms through
the ORM on the test machine; the job's default hard limit is the one the run
carries, not read). So an edit in the admin reaches Sentry with the next
check-in, and a steady worker pays one small query per check-in.
``capture_checkin`` only queues the envelope for the SDK's background thread.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import signals as run_signals
from jobs.models import JobRun, RunStatus
from scheduler.beat.slots import InvalidInterval, interval_length
from scheduler.models import ScheduleChange, SchedulePolicy
from scheduler.validation import cron_expression, effective_time_limits

if TYPE_CHECKING:
    from sentry_sdk._types import MonitorConfig

logger = logging.getLogger(__name__)

# Relay cuts monitor slugs at 50 characters.
MAX_SLUG_LENGTH = 50

# Interval units Sentry takes, largest first, with their length in seconds.
INTERVAL_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))

OK_STATUSES = frozenset({RunStatus.SUCCEEDED})
ERROR_STATUSES = frozenset({RunStatus.FAILED, RunStatus.SOFT_TIMEOUT, RunStatus.HARD_TIMEOUT, RunStatus.LOST})

NOT_A_MONITOR = "not a Crons monitor"
COVERED = "covered by the platform's own detector"


def monitor_slug(slug: str) -> str:
    """The monitor's slug for a policy slug: lowercase, at most ``MAX_SLUG_LENGTH`` characters.

    A longer slug (the column allows 64) keeps its first 41 characters and a
    hash of the whole, so two long slugs sharing a prefix stay two monitors.
    """
    slug = slug.lower()
    if len(slug) <= MAX_SLUG_LENGTH:
        return slug
    digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"{slug[: MAX_SLUG_LENGTH - 9]}-{digest}"


def _minutes_up(seconds: float) -> int:
    """Whole minutes, rounded up, at least 1 (Sentry's margin and runtime are in minutes)."""
    return max(1, math.ceil(seconds / 60))


def interval_config(every: int, period: str) -> dict[str, Any] | str:
    """Sentry's interval schedule for ``every`` × ``period``, or why there is none."""
    try:
        seconds = interval_length(every, period).total_seconds()  # beat's own reading of the row
    except InvalidInterval:
        return f"{NOT_A_MONITOR}: {every} {period} is not an interval"
    shown = f"{seconds:g} s interval"
    if seconds < 60:
        return f"{NOT_A_MONITOR}: {shown} (Sentry Crons' shortest interval is 1 minute) — {COVERED}"
    if seconds % 60:
        return f"{NOT_A_MONITOR}: {shown} (Sentry Crons takes whole minutes only) — {COVERED}"
    for unit, length in INTERVAL_UNITS:
        if seconds % length == 0:
            return {"type": "interval", "value": int(seconds // length), "unit": unit}
    raise AssertionError("a whole number of minutes divides by 60")  # pragma: no cover


def monitor_config_for(
    schedule: PeriodicTask,
    *,
    policy: SchedulePolicy | None = None,
    job_hard_limits: Mapping[str, int] | None = None,
) -> MonitorConfig | str:
    """The Sentry Crons ``monitor_config`` for ``schedule``, or the reason it is not a monitor.

    ``schedule``: crontab ``{"type": "crontab", "value": "m h dom mon dow"}``
    with the crontab's time zone, or interval ``{"type": "interval", "value":
    N, "unit": "minute" | "hour" | "day"}`` (the largest unit that divides it;
    time zone UTC: intervals are fixed durations). ``checkin_margin``: the
    policy's ``grace`` in minutes, rounded up, at least 1. ``max_runtime``:
    the effective hard time limit (the policy's, else the job's catalog
    default) in minutes, rounded up; left out when neither is known.
    ``failure_issue_threshold`` / ``recovery_threshold``: the policy's
    ``failures_before_alert`` / ``successes_before_recovery``.

    A reason (a string starting "not a Crons monitor") for an interval under
    a minute or not in whole minutes (90 s), a clocked one-off, a solar
    schedule, or a schedule with none of these rows. ``policy``: the
    schedule's policy if the caller has it (else ``schedule.policy``, or the
    field defaults when it has no row). ``job_hard_limits``: job name ->
    default hard limit, to spare one catalog query per schedule in a list.
    """
    if policy is None:
        try:
            policy = schedule.policy  # reverse one-to-one
        except SchedulePolicy.DoesNotExist:
            policy = SchedulePolicy()
    assert policy is not None
    if schedule.clocked_id is not None:
        return f"{NOT_A_MONITOR}: a one-off (clocked) schedule has no recurrence to monitor — {COVERED}"
    if schedule.solar_id is not None:
        return f"{NOT_A_MONITOR}: solar schedules are not run by beat — {COVERED}"
    timezone_name = "UTC"
    if schedule.crontab_id is not None:
        crontab = schedule.crontab
        assert crontab is not None
        kind: dict[str, Any] | str = {"type": "crontab", "value": cron_expression(crontab)}
        timezone_name = str(crontab.timezone)
    elif schedule.interval_id is not None:
        interval = schedule.interval
        assert interval is not None
        kind = interval_config(interval.every, interval.period)
    else:
        return f"{NOT_A_MONITOR}: the schedule has no crontab or interval — {COVERED}"
    if isinstance(kind, str):
        return kind
    hard = policy.hard_time_limit
    if hard is None:  # the job's default, from the caller's map or the catalog
        if job_hard_limits is not None:
            hard = job_hard_limits.get(schedule.task)
        else:
            _, hard, _ = effective_time_limits(None, None, schedule.task)
    config: MonitorConfig = {
        "schedule": kind,  # type: ignore[typeddict-item]  # the SDK's TypedDict of it
        "timezone": timezone_name,
        "checkin_margin": _minutes_up(policy.grace),
        "failure_issue_threshold": max(1, policy.failures_before_alert),
        "recovery_threshold": max(1, policy.successes_before_recovery),
    }
    if hard:
        config["max_runtime"] = _minutes_up(hard)
    return config


@dataclass(frozen=True)
class Monitor:
    """A schedule as Sentry Crons sees it: its slug and config, or why it is not a monitor."""

    slug: str
    config: MonitorConfig | None
    reason: str = ""


def load_monitor(schedule_id: int, *, job_hard_limit: int | None = None) -> Monitor | None:
    """The schedule's monitor read fresh from the database (one SELECT); ``None`` when the schedule is gone.

    ``job_hard_limit``: the hard limit to fall back on when the policy sets
    none, if the caller knows it (a run carries the effective limit beat or
    dispatch gave it); otherwise the job's catalog row is read too.
    """
    schedule = (
        PeriodicTask.objects.select_related("crontab", "interval", "clocked", "policy")
        .filter(pk=schedule_id)
        .first()
    )
    if schedule is None:
        return None
    try:
        policy = schedule.policy  # reverse one-to-one
    except SchedulePolicy.DoesNotExist:
        return Monitor(slug="", config=None, reason=f"{NOT_A_MONITOR}: no policy row, so no stable slug")
    defaults = {schedule.task: job_hard_limit} if job_hard_limit else None
    config = monitor_config_for(schedule, policy=policy, job_hard_limits=defaults)
    if isinstance(config, str):
        return Monitor(slug=monitor_slug(policy.slug), config=None, reason=config)
    return Monitor(slug=monitor_slug(policy.slug), config=config)


def change_log_head() -> int:
    """The newest ``ScheduleChange`` id (0 for none): it moves with every write to a schedule."""
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_SQL.format(table=connection.ops.quote_name(ScheduleChange._meta.db_table)))
        row = cursor.fetchone()
    return int(row[0] or 0) if row else 0


_HEAD_SQL = "SELECT max(id) FROM {table}"  # the primary key's index: one index lookup


class MonitorCache:
    """Monitors by (schedule, the run's hard limit), valid while the change log's head stays put.

    Every write to a schedule (the admin, the ORM, ``scheduler.services``)
    appends to ``ScheduleChange`` in its transaction, so a head that did not
    move means no schedule changed since the monitor was read; a head that
    moved empties the cache. What a check-in pays: one index lookup (about
    0.15 ms) instead of reading the rows again (about 2 ms through the ORM).
    The head is read BEFORE the rows, so a write landing in between is caught
    at the next check-in. Bounded: the oldest entries go past ``LIMIT``.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._head = -1
        self._monitors: OrderedDict[tuple[int, int | None], Monitor | None] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._head = -1
            self._monitors.clear()

    def get(self, schedule_id: int, job_hard_limit: int | None) -> Monitor | None:
        head = change_log_head()
        key = (schedule_id, job_hard_limit)
        with self._lock:
            if head != self._head:
                self._monitors.clear()
                self._head = head
            elif key in self._monitors:
                self._monitors.move_to_end(key)
                return self._monitors[key]
        monitor = load_monitor(schedule_id, job_hard_limit=job_hard_limit)
        with self._lock:
            if self._head == head:
                self._monitors[key] = monitor
                while len(self._monitors) > self.LIMIT:
                    self._monitors.popitem(last=False)
        return monitor


monitors = MonitorCache()


def check_in(monitor: Monitor, run: JobRun, status: str, duration: float | None = None) -> None:
    """Send one check-in of ``run`` to ``monitor`` (the SDK queues it; never raises)."""
    from sentry_sdk.crons import capture_checkin

    assert monitor.config is not None
    try:
        capture_checkin(
            monitor_slug=monitor.slug,
            check_in_id=run.pk.hex,
            status=status,
            duration=duration,
            monitor_config=monitor.config,
        )
    except Exception:  # a check-in must never break a run's record
        logger.exception("Sentry Crons check-in of run %s (%s) could not be sent", run.pk, status)


def _monitor_of(run: JobRun) -> Monitor | None:
    assert run.schedule_id is not None
    try:
        return monitors.get(run.schedule_id, run.hard_time_limit)
    except DatabaseError:
        logger.exception("run %s: its schedule could not be read for its Sentry Crons check-in", run.pk)
        return None


def on_run_started(sender: Any = None, run: JobRun | None = None, **_: Any) -> None:
    """``in_progress`` at a scheduled run's first attempt; later attempts continue that check-in."""
    if run is None or run.schedule_id is None or run.attempt > 1:
        return
    monitor = _monitor_of(run)
    if monitor is None or monitor.config is None:
        return
    check_in(monitor, run, "in_progress")


def on_run_ended(
    sender: Any = None,
    run: JobRun | None = None,
    status: str | None = None,
    will_retry: bool = False,
    **_: Any,
) -> None:
    """``ok`` or ``error`` when a scheduled run ends for good; nothing on a retry or a run never started."""
    if run is None or run.schedule_id is None or will_retry:
        return
    if status in OK_STATUSES:
        outcome = "ok"
    elif status in ERROR_STATUSES:
        outcome = "error"
    elif run.started_at is not None:
        outcome = "error"  # skipped / missed between attempts (a revoke while it waited to retry)
    else:
        return  # skipped / missed before it started: no check-in is open (see the module doc)
    monitor = _monitor_of(run)
    if monitor is None or monitor.config is None:
        return
    duration = None
    if run.attempt <= 1 and run.started_at is not None:
        ended = run.finished_at or timezone.now()
        duration = max(0.0, (ended - run.started_at) / timedelta(seconds=1))
    check_in(monitor, run, outcome, duration)


def connect() -> None:
    """Connect the check-in receivers to the jobs signals (idempotent)."""
    run_signals.run_started.connect(on_run_started, dispatch_uid="alerts.crons.on_run_started")
    run_signals.run_ended.connect(on_run_ended, dispatch_uid="alerts.crons.on_run_ended")


def disconnect() -> None:
    run_signals.run_started.disconnect(dispatch_uid="alerts.crons.on_run_started")
    run_signals.run_ended.disconnect(dispatch_uid="alerts.crons.on_run_ended")
