"""The admin dashboard for the on-call engineer: what ran, what runs, what is wrong, what comes next.

One page (``/admin/dashboard/``), for staff who may view schedules. Its
queries are the same ten at any size, and none reads the whole run history:
the largest reads the last 24 hours of runs (their number, not the table's,
sets its cost). The paused schedules are found by scanning the policies
(no index on ``paused_at``: 12–40 ms at 100,000). Measured at 100,000
schedules and 1,000,000 runs by ``bench/dashboard.py``.

- runs by status over the last 24 h and runs per hour (one grouped query over
  the slots of the window, ``run_history``); each count links to the run list
  filtered the same way;
- running now and waiting (the ``run_active`` partial index), with the
  oldest running runs;
- failing schedules: those whose newest executed run (succeeded or ended
  badly; missed and skipped slots say nothing of the job) ended badly, among
  the runs of the same 24 h: candidates are the bad runs of the window
  (collected by the scan above on PostgreSQL), each checked for a newer
  executed run of its schedule through ``one_run_per_slot``;
- paused schedules (``scheduler.services.paused_now``), paused most recently first;
- next due slots: what the beat leader publishes with its lease
  (``BeatEngine.status``, the head of its heap), never computed here for
  every schedule; nothing is shown when no leader publishes;
- the beat leader and its last renewal (it renews from its loop, so a stale
  renewal is a stuck or dead beat);
- per-queue backlog, asked of the broker through the Celery app's connection
  (a passive declare: on Redis the length of the queue's lists, every
  priority step included), for the catalog's queues, the live workers' and
  the default one; a broker that does not answer is said, not raised;
- live workers (``jobs.workers.LIVE_SECONDS``);
- p95 duration and lateness per catalog job over 7 days, from each job's
  newest ``SAMPLE_PER_JOB`` timed runs in the window (``run_by_job``):
  PostgreSQL's ``percentile_cont`` in one query; elsewhere (SQLite) one
  bounded query per job and the same interpolation in Python.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, Window
from django.db.models.functions import TruncHour
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import ACTIVE_STATUSES, JobDefinition, JobRun, RunStatus, WorkerPresence
from jobs.reports import BAD_STATUSES, FINISHED_FOR_RATE
from jobs.workers import LIVE_SECONDS
from scheduler.beat.lease import current_leader
from scheduler.charts import Series, grouped_bars, stacked_columns
from scheduler.models import SchedulePolicy
from scheduler.services import paused_now

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "django_celery_beat.view_periodictask"
HOURS = 24
BAD_IDS_LIMIT = 5000  # bad runs in the window past which they are read again instead of by key
PERCENTILE_WINDOW = timedelta(days=7)
SAMPLE_PER_JOB = 2000
LIST_LIMIT = 10  # rows shown in each list; the counts are exact
RUNNING_SHOWN = 5
BROKER_TIMEOUT_SECONDS = 2.0

# Bottom to top in the stacked chart: the bad endings first, where the eye lands.
STATUS_COLORS = {
    RunStatus.FAILED: "#d62728",
    RunStatus.HARD_TIMEOUT: "#8c1c13",
    RunStatus.SOFT_TIMEOUT: "#ff7f0e",
    RunStatus.LOST: "#9467bd",
    RunStatus.MISSED: "#e377c2",
    RunStatus.SKIPPED: "#bcbd22",
    RunStatus.RETRYING: "#17becf",
    RunStatus.RUNNING: "#1f77b4",
    RunStatus.QUEUED: "#aec7e8",
    RunStatus.SUCCEEDED: "#2ca02c",
}
# Labels as the run list shows them, capitalised alike ("Soft timeout", "Failed").
STATUS_SERIES = [
    Series(status.value, str(status.label).capitalize(), color) for status, color in STATUS_COLORS.items()
]


@dataclass(frozen=True)
class QueueBacklog:
    queue: str
    messages: int | None  # None: the broker did not say


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def run_list_url(**filters: Any) -> str:
    query = {
        key: value.isoformat() if isinstance(value, datetime) else value for key, value in filters.items()
    }
    return f"{reverse('admin:jobs_jobrun_changelist')}?{urlencode(query)}"


@dataclass(frozen=True)
class RunWindow:
    """What one scan of the window's runs found."""

    per_hour: dict[tuple[datetime, str], int]  # runs per (hour of their slot, status)
    bad_run_ids: list[UUID] | None  # runs of a schedule that ended badly; None: not collected


def scan_window(since: datetime) -> RunWindow:
    """Runs per (hour of their slot, status) since ``since``: one grouped query.

    On PostgreSQL the same scan also collects the ids of the runs of a
    schedule that ended badly (``array_agg … FILTER``, a few hundred among
    100,000s), so finding the failing schedules need not read the window
    again (40–70 ms at 1,000,000 runs, measured). Past ``BAD_IDS_LIMIT`` (a
    failure storm) or on SQLite they are not collected (``None``).
    """
    aggregates: dict[str, Any] = {"n": Count("pk")}
    collect = connection.vendor == "postgresql"
    if collect:
        from django.contrib.postgres.aggregates import ArrayAgg

        aggregates["bad"] = ArrayAgg("pk", filter=Q(status__in=BAD_STATUSES, schedule_id__isnull=False))
    rows = (
        JobRun.objects.filter(scheduled_for__gte=since)
        .annotate(hour=TruncHour("scheduled_for", tzinfo=UTC))
        .values_list("hour", "status")
        .annotate(**aggregates)
        .order_by()
    )
    per_hour: dict[tuple[datetime, str], int] = {}
    bad: list[UUID] | None = [] if collect else None
    for hour, status, n, *ids in rows:
        per_hour[(hour.astimezone(UTC), status)] = n
        if bad is not None and ids and ids[0]:
            bad.extend(ids[0])
    if bad is not None and len(bad) > BAD_IDS_LIMIT:
        bad = None
    return RunWindow(per_hour, bad)


def status_counts(per_hour: dict[tuple[datetime, str], int]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for (_, status), n in per_hour.items():
        totals[status] += n
    return totals


def hourly_chart(hours: list[datetime], per_hour: dict[tuple[datetime, str], int]):
    values = [{s.key: per_hour.get((hour, s.key), 0) for s in STATUS_SERIES} for hour in hours]
    labels = [f"{hour:%H}:00" for hour in hours]
    return stacked_columns(
        f"Runs per hour by status, last {HOURS} hours (UTC, by slot)",
        labels,
        STATUS_SERIES,
        values,
        label_every=3,
        describe=lambda hour, series, n: f"{hour} UTC, {series.label}: {n:,} runs",
    )


def active_counts() -> dict[str, int]:
    """Runs waiting or running now, per status (the ``run_active`` partial index)."""
    rows = JobRun.objects.filter(status__in=ACTIVE_STATUSES).values_list("status").annotate(n=Count("pk"))
    return dict(rows.order_by())


def oldest_running(now: datetime) -> list[dict[str, Any]]:
    runs = (
        JobRun.objects.filter(status=RunStatus.RUNNING)
        .order_by("started_at")
        .values("id", "job", "schedule_id", "schedule_name", "started_at", "worker", "attempt")[
            :RUNNING_SHOWN
        ]
    )
    return [{**run, "running_for": now - run["started_at"] if run["started_at"] else None} for run in runs]


def failing_schedules(since: datetime, bad_run_ids: list[UUID] | None) -> tuple[int, list[dict[str, Any]]]:
    """Schedules whose newest executed run ended badly, among the runs with a slot since ``since``.

    The candidates are ``bad_run_ids`` when the window's scan collected them
    (looked up by key), else the window's bad runs (a second read of the
    window). Returns the count and the ``LIST_LIMIT`` most recent, each with
    its bad run.
    """
    newer_executed = JobRun.objects.filter(
        schedule_id=OuterRef("schedule_id"),
        scheduled_for__gt=OuterRef("scheduled_for"),
        status__in=FINISHED_FOR_RATE,
    )
    if bad_run_ids is not None:
        candidates = JobRun.objects.filter(pk__in=bad_run_ids)
    else:
        candidates = JobRun.objects.filter(
            scheduled_for__gte=since, status__in=BAD_STATUSES, schedule_id__isnull=False
        )
    rows = (
        candidates.filter(~Exists(newer_executed))
        # An expression, not the column: ordered by the column, PostgreSQL walks run_history
        # newest first to stop after LIMIT rows, but the window count reads every candidate,
        # so it read the whole table (183 ms at 1,000,000 runs) instead of ~300 rows by key.
        .annotate(total=Window(Count("pk")), newest=F("scheduled_for") + timedelta(0))
        .order_by("-newest")
        .values(
            "id",
            "schedule_id",
            "schedule_name",
            "job",
            "status",
            "scheduled_for",
            "finished_at",
            "error_type",
            "error_message",
            "total",
        )[:LIST_LIMIT]
    )
    listed: list[dict[str, Any]] = [dict(row) for row in rows]
    return (listed[0]["total"] if listed else 0), listed


def paused_schedules(now: datetime) -> tuple[int, list[dict[str, Any]]]:
    rows = (
        SchedulePolicy.objects.filter(paused_now(now))
        .annotate(total=Window(Count("pk")), name=F("task__name"), job=F("task__task"))
        .order_by("-paused_at")
        .values("task_id", "name", "job", "paused_at", "paused_until", "pause_note", "paused_by", "total")[
            :LIST_LIMIT
        ]
    )
    listed: list[dict[str, Any]] = [dict(row) for row in rows]
    return (listed[0]["total"] if listed else 0), listed


def beat_state(now: datetime) -> dict[str, Any]:
    """The leader, its last renewal and the next due slots it published (ids looked up by name)."""
    lease = current_leader()
    if lease is None:
        return {"leader": None, "alive": False, "next_due": [], "published": False}
    alive = bool(lease.holder) and lease.expires_at > now
    status = lease.status or {}
    next_due = []
    for item in status.get("next_due", []) if alive else []:
        try:
            slot = datetime.fromisoformat(item["slot"])
        except (KeyError, TypeError, ValueError):
            continue  # an entry this page cannot read is left out, not a server error
        next_due.append(
            {"slot": slot, "in": slot - now, "schedule": item.get("schedule", ""), "job": item.get("job", "")}
        )
    names = [item["schedule"] for item in next_due if item["schedule"]]
    ids = dict(PeriodicTask.objects.filter(name__in=names).values_list("name", "pk")) if names else {}
    for item in next_due:
        item["schedule_id"] = ids.get(item["schedule"])
    return {
        "leader": lease.holder or None,
        "alive": alive,
        "token": lease.token,
        "renewed_at": lease.renewed_at,
        "renewed_ago": now - lease.renewed_at if lease.renewed_at else None,
        "expires_in": lease.expires_at - now,
        "schedules": status.get("schedules"),
        "outbox_blocked": status.get("outbox_blocked"),
        "next_due": next_due,
        "published": alive and "next_due" in status,
    }


def live_workers(now: datetime) -> list[dict[str, Any]]:
    return [
        dict(worker)
        for worker in WorkerPresence.objects.filter(last_seen_at__gte=now - timedelta(seconds=LIVE_SECONDS))
        .order_by("hostname")
        .values("hostname", "queues", "jobs", "last_seen_at", "started_at")
    ]


def queue_backlog(queues: list[str]) -> tuple[list[QueueBacklog], str]:
    """Messages waiting in each queue, asked of the broker; an error says why it did not answer.

    A passive declare of a queue the broker does not have raises: nothing
    waits there (Redis deletes an emptied list), so it counts 0.
    """
    from kombu.exceptions import ChannelError

    from settings.celery_app import app

    found: list[QueueBacklog] = []
    try:
        with app.connection_for_read(connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            conn.connect()  # one attempt: the page must not wait on a broker's retries
            channel: Any = conn.channel()  # kombu's stubs type it as the bare StdChannel
            try:
                for queue in queues:
                    try:
                        found.append(
                            QueueBacklog(
                                queue, channel.queue_declare(queue=queue, passive=True).message_count
                            )
                        )
                    except ChannelError:
                        found.append(QueueBacklog(queue, 0))
                        if not getattr(channel, "is_open", True):  # AMQP closes a channel on a 404
                            channel = conn.channel()
            finally:
                channel.close()
    except Exception as exc:  # noqa: BLE001 (the dashboard must render while the broker is down)
        logger.warning("dashboard: broker queue lengths not read: %s", exc)
        return [QueueBacklog(queue, None) for queue in queues], f"{type(exc).__name__}: {exc}"
    return found, ""


def known_queues(definitions: list[tuple[str, str]], workers: list[dict[str, Any]]) -> list[str]:
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    queues.update(queue for _, queue in definitions if queue)
    for worker in workers:
        queues.update(worker["queues"])
    return sorted(queues)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks: PostgreSQL's ``percentile_cont``."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


P95_SQL = """
SELECT j.job,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.lateness_ms),
       count(*)
FROM unnest(%s::text[]) AS j(job)
CROSS JOIN LATERAL (
    SELECT duration_ms, lateness_ms FROM jobs_jobrun
    WHERE job >= j.job AND job <= j.job AND scheduled_for >= %s AND duration_ms IS NOT NULL
    ORDER BY job, scheduled_for DESC LIMIT %s
) r
GROUP BY j.job
"""


def p95_per_job(jobs: list[str], now: datetime) -> dict[str, dict[str, float | None]]:
    """Per job: p95 duration and lateness (ms) of its newest ``SAMPLE_PER_JOB`` timed runs in 7 days.

    ``P95_SQL`` spells ``job = j.job`` as a range on purpose: with an equality
    PostgreSQL drops ``job`` from the ORDER BY and may walk ``run_history``
    newest first, filtering on the job, which reads every run of the week
    for a job that has few or none (0.9 s at 1,000,000 runs, measured). As
    written, only ``run_by_job`` (job, -scheduled_for) yields the order, so
    each job costs at most ``SAMPLE_PER_JOB`` index entries.
    """
    since = now - PERCENTILE_WINDOW
    figures: dict[str, dict[str, float | None]] = {}
    if not jobs:
        return figures
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(P95_SQL, [jobs, since, SAMPLE_PER_JOB])
            for job, duration, lateness, n in cursor.fetchall():
                figures[job] = {"duration": duration, "lateness": lateness, "runs": n}
        return figures
    for job in jobs:  # SQLite: no percentile_cont; each query reads at most SAMPLE_PER_JOB rows
        sample = list(
            JobRun.objects.filter(job=job, scheduled_for__gte=since, duration_ms__isnull=False)
            .order_by("-scheduled_for")
            .values_list("duration_ms", "lateness_ms")[:SAMPLE_PER_JOB]
        )
        if sample:
            figures[job] = {
                "duration": percentile([float(d) for d, _ in sample if d is not None], 0.95),
                "lateness": percentile([float(late) for _, late in sample if late is not None], 0.95),
                "runs": len(sample),
            }
    return figures


P95_SERIES = [Series("duration", "p95 duration", "#1f77b4"), Series("lateness", "p95 lateness", "#ff7f0e")]


def p95_chart(figures: dict[str, dict[str, float | None]]):
    jobs = sorted(figures)
    return grouped_bars(
        f"p95 duration and lateness per job, last {PERCENTILE_WINDOW.days} days "
        f"(newest {SAMPLE_PER_JOB:,} runs each)",
        jobs,
        P95_SERIES,
        [{"duration": figures[job]["duration"], "lateness": figures[job]["lateness"]} for job in jobs],
        unit="milliseconds",
    )


def dashboard_context(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    first_hour = floor_hour(now) - timedelta(hours=HOURS - 1)
    hours = [first_hour + timedelta(hours=i) for i in range(HOURS)]
    window = scan_window(first_hour)
    per_hour = window.per_hour
    totals = status_counts(per_hour)
    by_status = [
        {
            "status": s.key,
            "label": s.label,
            "color": s.color,
            "count": totals.get(s.key, 0),
            "url": run_list_url(status__exact=s.key, scheduled_for__gte=first_hour),
        }
        for s in STATUS_SERIES
    ]
    active = active_counts()
    failing_count, failing = failing_schedules(first_hour, window.bad_run_ids)
    paused_count, paused = paused_schedules(now)
    workers = live_workers(now)
    definitions = list(JobDefinition.objects.values_list("name", "queue"))
    backlog, broker_error = queue_backlog(known_queues(definitions, workers))
    figures = p95_per_job([name for name, _ in definitions], now)
    return {
        "now": now,
        "since": first_hour,
        "total_runs": sum(totals.values()),
        "by_status": by_status,
        "runs_url": run_list_url(scheduled_for__gte=first_hour),
        "hourly_chart": hourly_chart(hours, per_hour),
        "running_count": active.get(RunStatus.RUNNING, 0),
        "waiting_count": active.get(RunStatus.QUEUED, 0) + active.get(RunStatus.RETRYING, 0),
        "running_url": run_list_url(status__exact=RunStatus.RUNNING),
        "oldest_running": oldest_running(now),
        "failing_count": failing_count,
        "failing": failing,
        "paused_count": paused_count,
        "paused": paused,
        "beat": beat_state(now),
        "workers": workers,
        "backlog": backlog,
        "broker_error": broker_error,
        "p95": [{"job": job, **figures[job]} for job in sorted(figures)],
        "p95_chart": p95_chart(figures),
        "p95_days": PERCENTILE_WINDOW.days,
        "sample_per_job": SAMPLE_PER_JOB,
        "list_limit": LIST_LIMIT,
    }


def dashboard(request: HttpRequest) -> TemplateResponse:
    """The page; staff without the view permission on schedules get 403 (non-staff: the login page)."""
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        **dashboard_context(),
    }
    return TemplateResponse(request, "admin/scheduler/dashboard.html", context)


dashboard_view = admin.site.admin_view(dashboard)
