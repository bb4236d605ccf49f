"""Prometheus metrics at ``/metrics``: what an SRE alerts on, read from the database at scrape time.

Off unless ``METRICS_TOKEN`` is set: then ``/metrics`` answers 404, as if it
did not exist. With a token, a scrape must send ``Authorization: Bearer
<token>`` (compared in constant time); anything else gets 401 with
``WWW-Authenticate: Bearer``. The body is prometheus_client's text exposition
of a private ``CollectorRegistry`` holding one ``PlatformCollector``, which
reads everything when scraped (no state kept between scrapes, so every web
process answers the same).

Series (prefix ``beatplatform_``):

- per schedule (kube-state-metrics' CronJob style; ``METRICS_PER_SCHEDULE=0``
  leaves them all out, bounding the cardinality by jobs, statuses and queues):
  ``schedule_info{schedule,name,job,timezone}`` 1 (``schedule`` is the policy
  slug, stable across renames; ``timezone`` the crontab's zone, ``UTC`` for
  intervals and clocked times), ``schedule_next_schedule_time_seconds`` (beat's
  own slot computation: ``EntryFactory`` + ``Entry.next_slot`` over beat's
  ``fetch_rows``; absent for a disabled, ended or quarantined schedule),
  ``schedule_last_schedule_time_seconds`` (the newest claimed slot,
  ``SchedulePolicy.last_slot_at``; absent before the first),
  ``schedule_last_successful_time_seconds`` (the newest succeeded run's
  ``finished_at``; absent before the first success),
  ``schedule_active_runs`` (queued, retrying or running: the ``run_active``
  partial index) and ``schedule_suspended`` (1 when disabled or paused now:
  ``scheduler.services.paused_now``).
- ``runs_total{job,status}``: a counter. It is monotonic because runs are
  never deleted (a run only changes status: a run counted ``running`` moves to
  ``succeeded``, so one status' count can drop while the job's sum never
  does; ``rate()`` on a single status sees that as a reset only when a run
  leaves that status, which is why alert rules use the final statuses).
  Runs of deleted schedules keep their job and still count.
- ``run_duration_seconds{job}`` and ``run_lateness_seconds{job}``: histograms
  with fixed buckets (``DURATION_BUCKETS``, ``LATENESS_BUCKETS``), over the
  runs that have a duration (finished) or a lateness (started). The counter
  and both histograms are ``jobs.tally.run_counts``: the tally of runs that
  ended more than a few minutes ago plus one grouped read of the runs after
  its watermark, the same counts as a scan of every run (each scrape first
  moves the watermark when a minute of endings is due: ``jobs.tally.advance``).
- ``beat_leader{holder}`` 1 while the holder's lease is unexpired, else 0;
  ``beat_last_tick_timestamp_seconds``: its last renewal (beat renews from its
  loop, so a stale one is a stuck or dead beat). Both absent before any beat
  ran (alert on ``absent()`` too).
- ``queue_length{queue}``: messages waiting, asked of the broker
  (``scheduler.dashboard.queue_backlog`` for the dashboard's queues:
  the catalog's, the live workers' and the default one); absent when the broker
  does not answer, and then ``broker_up`` is 0.
- ``workers{queue}``: live workers (``jobs.workers.LIVE_SECONDS``) serving
  each of those queues, 0 included (a queue nobody serves).

Cost: a fixed number of queries whatever the number of schedules (measured
by ``bench/metrics_scrape.py``): the per-schedule block streams two reads of
the schedules and two grouped reads of the runs; the run counters the
tally's rows and the runs of the last minutes, whatever the size of the run
table. The per-schedule block grows with the schedules (seconds at 100,000,
and ~40 MB of text), so ``/metrics`` keeps its rendered text per process and
renders the next one in the background once it is ``SCHEDULE_CACHE_SECONDS``
old (``schedule_exposition``), the first one as soon as the process serves its
first request (``warm_up_on_first_request``); everything else is read on every
scrape.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.signals import request_started
from django.db import close_old_connections, connection
from django.db.models import BooleanField, CharField, Count, ExpressionWrapper, Max
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django_celery_beat.models import PeriodicTask
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from jobs import tally
from jobs.models import ACTIVE_STATUSES, JobDefinition, JobRun, RunStatus
from jobs.tally import DURATION_BUCKETS, LATENESS_BUCKETS, bucket_key
from scheduler.beat.entries import EntryFactory, UnusableSchedule, fetch_rows, job_defaults
from scheduler.beat.lease import current_leader
from scheduler.beat.slots import InvalidInterval
from scheduler.dashboard import known_queues, live_workers, queue_backlog
from scheduler.services import paused_now

logger = logging.getLogger(__name__)

PREFIX = "beatplatform_"


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


class PlatformCollector(Collector):
    """Every series above, read when collected.

    ``now`` fixes the clock (tests); ``per_schedule`` overrides ``METRICS_PER_SCHEDULE``.
    """

    def __init__(self, now: datetime | None = None, per_schedule: bool | None = None) -> None:
        self.now = now
        self.per_schedule = settings.METRICS_PER_SCHEDULE if per_schedule is None else per_schedule

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        if self.per_schedule:
            yield from schedule_metrics(now)
        yield from run_metrics()
        yield from beat_metrics(now)
        yield from broker_metrics(now)


# --- Per schedule ------------------------------------------------------------------------


def next_schedule_times(now: datetime) -> dict[int, float]:
    """Each enabled schedule's next slot after ``now`` (epoch seconds), as beat computes it.

    Beat's own reading (``fetch_rows``: one streamed query) and entries
    (``EntryFactory``: identical definitions shared, cron slots memoised per
    expression, zone and minute by ``shared_next_cron_slot``). A schedule beat
    would quarantine, or with no slot left, has none.
    """
    factory = EntryFactory(job_defaults())
    found: dict[int, float] = {}
    # A cron or clocked schedule's next slot depends on its shared definition alone (not on
    # its anchor or progress): computed once per definition, not once per schedule.
    by_definition: dict[int, float | None] = {}
    for row in fetch_rows():
        try:
            definition = factory.definition_of(row)
            shared = definition.interval is None
            if shared and id(definition) in by_definition:
                timestamp = by_definition[id(definition)]
            else:
                slot = factory.build(row)[0].next_slot(now)
                timestamp = None if slot is None else slot.timestamp()
                if shared:
                    by_definition[id(definition)] = timestamp
        except (UnusableSchedule, InvalidInterval):
            continue
        if timestamp is not None:
            found[row[0]] = timestamp
    return found


def schedule_rows(now: datetime) -> Iterable[tuple]:
    """(id, name, job, enabled, zone, slug, last slot, paused now) of every schedule, streamed."""
    return (
        PeriodicTask.objects.annotate(
            zone=Cast("crontab__timezone", CharField()),
            paused=ExpressionWrapper(paused_now(now, "policy__"), output_field=BooleanField()),
        )
        .values_list(
            "pk", "name", "task", "enabled", "zone", "policy__slug", "policy__last_slot_at", "paused"
        )
        .order_by()
        .iterator(chunk_size=5000)
    )


def schedule_metrics(now: datetime) -> Iterator[Metric]:
    next_times = next_schedule_times(now)
    last_success = dict(
        JobRun.objects.filter(status=RunStatus.SUCCEEDED, schedule__isnull=False)
        .values_list("schedule_id")
        .annotate(last=Max("finished_at"))
        .order_by()
    )
    active = dict(
        JobRun.objects.filter(status__in=ACTIVE_STATUSES, schedule__isnull=False)
        .values_list("schedule_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    info = InfoMetricFamily(
        f"{PREFIX}schedule", "A schedule: its slug, name, job and time zone.", labels=["schedule"]
    )
    families = {
        "next": GaugeMetricFamily(
            f"{PREFIX}schedule_next_schedule_time_seconds",
            "The schedule's next slot after now (Unix time), as beat computes it.",
            labels=["schedule"],
        ),
        "last": GaugeMetricFamily(
            f"{PREFIX}schedule_last_schedule_time_seconds",
            "The newest slot beat claimed for the schedule (Unix time).",
            labels=["schedule"],
        ),
        "success": GaugeMetricFamily(
            f"{PREFIX}schedule_last_successful_time_seconds",
            "When the schedule's newest succeeded run finished (Unix time).",
            labels=["schedule"],
        ),
        "active": GaugeMetricFamily(
            f"{PREFIX}schedule_active_runs",
            "The schedule's runs queued, retrying or running.",
            labels=["schedule"],
        ),
        "suspended": GaugeMetricFamily(
            f"{PREFIX}schedule_suspended",
            "1 when the schedule is disabled or paused now.",
            labels=["schedule"],
        ),
    }
    for pk, name, job, enabled, zone, slug, last_slot, paused in schedule_rows(now):
        key = [slug or f"task-{pk}"]  # every schedule has a policy once beat ran; before, its id
        info.add_metric(key, {"name": name, "job": job, "timezone": zone or "UTC"})
        if pk in next_times:
            families["next"].add_metric(key, next_times[pk])
        if last_slot is not None:
            families["last"].add_metric(key, last_slot.timestamp())
        succeeded = last_success.get(pk)
        if succeeded is not None:
            families["success"].add_metric(key, succeeded.timestamp())
        families["active"].add_metric(key, active.get(pk, 0))
        families["suspended"].add_metric(key, 0 if enabled and not paused else 1)
    yield info
    yield from families.values()


# --- Runs --------------------------------------------------------------------------------


def _histogram(name: str, doc: str, rows: dict[str, dict[str, float]], kind: str, bounds) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["job"])
    for job, sums in sorted(rows.items()):
        buckets = [(repr(bound), sums[bucket_key(kind, i)]) for i, bound in enumerate(bounds)]
        buckets.append(("+Inf", sums[f"{kind}_n"]))
        family.add_metric([job], buckets, (sums[f"{kind}_sum"] or 0) / 1000)
    return family


def run_metrics() -> Iterator[Metric]:
    runs = CounterMetricFamily(
        f"{PREFIX}runs", "Runs by job and current status (runs are never deleted).", labels=["job", "status"]
    )
    per_job: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counted: set[str] = set()
    tally.advance()  # the real clock always: a watermark is never set from a fixed one
    for row in tally.run_counts():
        runs.add_metric([row["job"], row["status"]], row["n"])
        counted.add(row["job"])
        sums = per_job[row["job"]]
        for key, value in row.items():
            if key not in ("job", "status") and key != "n":
                sums[key] += value or 0
    # Every job of the catalog has its series from the start (0 until it runs), so rules
    # on rate() see the first run as an increase.
    for job in JobDefinition.objects.values_list("name", flat=True):
        if job not in counted:
            per_job[job] = defaultdict(float)
            runs.add_metric([job, RunStatus.SUCCEEDED.value], 0)
    yield runs
    yield _histogram(
        f"{PREFIX}run_duration_seconds",
        "How long finished runs took.",
        per_job,
        "d",
        DURATION_BUCKETS,
    )
    yield _histogram(
        f"{PREFIX}run_lateness_seconds",
        "How late after their slot runs started.",
        per_job,
        "l",
        LATENESS_BUCKETS,
    )


# --- Beat and the broker -----------------------------------------------------------------


def beat_metrics(now: datetime) -> Iterator[Metric]:
    leader = GaugeMetricFamily(
        f"{PREFIX}beat_leader", "1 while this holder's beat lease is unexpired.", labels=["holder"]
    )
    tick = GaugeMetricFamily(
        f"{PREFIX}beat_last_tick_timestamp_seconds",
        "When the beat leader last renewed its lease (Unix time).",
    )
    lease = current_leader()
    if lease is not None and lease.holder:
        leader.add_metric([lease.holder], 1 if lease.expires_at > now else 0)
        if lease.renewed_at is not None:
            tick.add_metric([], lease.renewed_at.timestamp())
    yield leader
    yield tick


def broker_metrics(now: datetime) -> Iterator[Metric]:
    workers = live_workers(now)
    definitions = list(JobDefinition.objects.values_list("name", "queue"))
    queues = known_queues(definitions, workers)
    backlog, error = queue_backlog(queues)
    lengths = GaugeMetricFamily(f"{PREFIX}queue_length", "Messages waiting in the queue.", labels=["queue"])
    for found in backlog:
        if found.messages is not None:
            lengths.add_metric([found.queue], found.messages)
    up = GaugeMetricFamily(f"{PREFIX}broker_up", "1 when the broker answered the queue lengths.")
    up.add_metric([], 0 if error else 1)
    serving = GaugeMetricFamily(f"{PREFIX}workers", "Live workers serving the queue.", labels=["queue"])
    for queue in queues:
        serving.add_metric([queue], sum(1 for worker in workers if queue in worker["queues"]))
    yield lengths
    yield up
    yield serving


# --- The view ----------------------------------------------------------------------------


class _Families(Collector):
    """Metric families computed beforehand, for a registry of their own."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(collector: Collector | None = None) -> bytes:
    """The text exposition of ``collector`` (uncached), or of one scrape as ``/metrics`` serves it.

    A scrape is the per-schedule block (``schedule_exposition``: cached for
    ``SCHEDULE_CACHE_SECONDS``) followed by everything else, read afresh.
    Two expositions of distinct families concatenate into one valid one.
    """
    registry = CollectorRegistry(auto_describe=False)
    if collector is not None:
        registry.register(collector)
        return generate_latest(registry)
    registry.register(PlatformCollector(per_schedule=False))
    rest = generate_latest(registry)
    return (schedule_exposition() if settings.METRICS_PER_SCHEDULE else b"") + rest


# At 100,000 schedules the per-schedule block costs seconds (reading and computing the
# next slots, then writing 600,000 samples: bench/metrics_scrape.py), so each web process
# keeps its rendered text and serves it while a background thread renders the next one
# once it is this old: only a process's first scrape waits for the block.
SCHEDULE_CACHE_SECONDS = 15.0
_schedule_cache: dict[str, tuple[float, bytes]] = {}
_refreshing = threading.Lock()


def render_schedule_block() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(schedule_metrics(timezone.now())))
    return generate_latest(registry)


def schedule_exposition() -> bytes:
    """The per-schedule series as exposition text, stale while revalidated.

    The first call in a process renders the block (it waits). Afterwards a
    call returns the kept text at once; when that text is older than
    ``SCHEDULE_CACHE_SECONDS`` it also starts one background render (never
    two at a time), which replaces the text when done. So per-schedule
    values are at most ``SCHEDULE_CACHE_SECONDS`` plus one render old. A
    render that fails keeps the old text, logs, and is tried again at the
    next scrape.
    """
    cached = _schedule_cache.get("body")
    if cached is None:
        with _refreshing:
            cached = _schedule_cache.get("body")
            if cached is None:
                body = render_schedule_block()
                _schedule_cache["body"] = (time.monotonic(), body)
                return body
    if time.monotonic() - cached[0] >= SCHEDULE_CACHE_SECONDS and _refreshing.acquire(blocking=False):
        threading.Thread(target=_refresh_in_background, name="metrics-schedules", daemon=True).start()
    return cached[1]


def _refresh_in_background() -> None:
    try:
        close_old_connections()
        _schedule_cache["body"] = (time.monotonic(), render_schedule_block())
    except Exception:
        logger.exception("/metrics: the per-schedule block could not be rendered; the previous one is served")
    finally:
        connection.close()  # this thread's own connection; the thread ends here
        _refreshing.release()


def warm_up_on_first_request(**_: Any) -> None:
    """Render the per-schedule block in the background when a web process serves its first request.

    Connected to ``request_started`` by ``scheduler.wsgi`` and disconnected
    by its first call, so it runs in the process that serves (never in a
    parent that forks workers afterwards: a thread does not survive a fork,
    and the lock it held would stay held). Health checks usually come first,
    so Prometheus' first scrape finds the block rendered, or waits only for
    the rest of the render. Nothing when metrics or per-schedule series are off.
    """
    request_started.disconnect(warm_up_on_first_request)
    if not (settings.METRICS_TOKEN and settings.METRICS_PER_SCHEDULE) or "body" in _schedule_cache:
        return
    if _refreshing.acquire(blocking=False):
        threading.Thread(target=_refresh_in_background, name="metrics-schedules", daemon=True).start()


def wait_for_schedule_refresh(timeout: float = 30.0) -> bool:
    """Wait until no background render runs (tests, benches); ``False`` on timeout."""
    if not _refreshing.acquire(timeout=timeout):
        return False
    _refreshing.release()
    return True


def forget_cached_schedules() -> None:
    """Drop the kept per-schedule block (tests; the next scrape renders it and waits)."""
    wait_for_schedule_refresh()
    _schedule_cache.clear()


def token_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics``: 404 while ``METRICS_TOKEN`` is unset, 401 without its bearer token, 405 but for GET."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: set METRICS_TOKEN")
    if not token_matches(request, token):
        response = HttpResponse("a bearer token is needed (Authorization: Bearer …)\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("GET only\n", status=405, headers={"Allow": "GET, HEAD"})
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
