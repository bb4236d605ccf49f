"""Which workers are alive and what they serve: the presence each worker publishes.

Each worker's main process writes its ``WorkerPresence`` row at start and
every ``WORKER_PRESENCE_REFRESH_SECONDS`` after (a daemon thread), and deletes
it on shutdown. A row older than ``LIVE_SECONDS`` is a dead worker.

The row also says when its process started (``PROCESS_STARTED_AT``), so a
run's attempt can be told alive (:func:`attempt_is_alive`): its worker still
publishes presence *and* is the process that started it, not a successor
restarted under the same hostname after a crash. Beat reads the same rows to
flag schedules no live worker serves (``scheduler.presence``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs.concurrency import renew as renew_leases
from jobs.models import WorkerPresence

logger = logging.getLogger(__name__)

LIVE_SECONDS = 90  # three refreshes at the default WORKER_PRESENCE_REFRESH_SECONDS

# When this process started, as far as attempts are concerned. jobs.runs (so
# jobs.framework) imports this module, and a worker's main process imports the
# jobs before its pool forks: every attempt this worker starts starts after
# this instant, and every attempt of a previous process under its hostname
# started before it.
PROCESS_STARTED_AT = datetime.now(UTC)


def record_worker(hostname: str, queues: list[str], jobs: list[str]) -> None:
    WorkerPresence.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "jobs": sorted(jobs),
            "last_seen_at": timezone.now(),
            "started_at": PROCESS_STARTED_AT,
        },
    )


def forget_worker(hostname: str) -> None:
    WorkerPresence.objects.filter(hostname=hostname).delete()


def keep_presence_fresh(
    hostname: str,
    queues: list[str],
    jobs: list[str],
    stop: threading.Event,
    record_abandoned_attempts: Callable[[], int],
) -> None:
    """Loop of the worker's presence thread; it also renews this worker's concurrency places
    (``jobs.concurrency.renew``) and ends runs abandoned by dead workers.

    ``record_abandoned_attempts`` (``jobs.runs``) is passed in by the worker's
    start-up code: this module is below ``jobs.runs``, which asks it whether
    an attempt is alive. The loop outlives any error: a thread stopped
    silently would make this worker's running attempts look dead to a
    redelivered message.
    """
    while not stop.wait(settings.WORKER_PRESENCE_REFRESH_SECONDS):
        try:
            close_old_connections()
            record_worker(hostname, queues, jobs)
        except Exception as exc:
            logger.warning("worker presence not refreshed: %s", exc)
            continue
        try:
            # The concurrency places this worker's runs hold live three refreshes.
            renew_leases(hostname)
        except Exception as exc:
            logger.warning("concurrency places of this worker not renewed: %s", exc)
        try:
            if abandoned := record_abandoned_attempts():
                logger.warning("%d runs abandoned by dead workers recorded lost", abandoned)
        except Exception as exc:
            logger.warning("runs abandoned by dead workers not looked for: %s", exc)


def attempt_is_alive(now: datetime | None = None) -> Exists:
    """For a filter on ``JobRun``: its running attempt's worker is alive and is the one that started it.

    True when the run's ``worker`` publishes presence (seen within
    ``LIVE_SECONDS``) from a process that started no later than the attempt
    (``started_at``). False for a worker that stopped publishing (dead, or
    shut down: the row is deleted), for one restarted under the same hostname
    since, and for a row that does not say when its process started. Not
    covered: a pool process that died under a live main process; that worker
    records it itself (``jobs.runs.record_lost_process``).
    """
    now = now or timezone.now()
    return Exists(
        WorkerPresence.objects.filter(
            hostname=OuterRef("worker"),
            last_seen_at__gte=now - timedelta(seconds=LIVE_SECONDS),
            started_at__lte=OuterRef("started_at"),
        )
    )


def served_pairs(now=None) -> set[tuple[str, str]]:
    now = now or timezone.now()
    pairs: set[tuple[str, str]] = set()
    for queues, jobs in WorkerPresence.objects.filter(
        last_seen_at__gte=now - timedelta(seconds=LIVE_SECONDS)
    ).values_list("queues", "jobs"):
        pairs.update((q, j) for q in queues for j in jobs)
    return pairs
