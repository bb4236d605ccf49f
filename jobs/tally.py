"""Run counts for ``/metrics`` without scanning every run: a tally of the runs that ended a while ago.

A run's counts (per job and status: how many, and the duration and lateness
histograms) change while it is queued, retrying or running, and once more
when it ends. After that they never change, with one exception: a run
recorded ``lost`` takes its real ending when its worker's main process
reports it (``jobs.runs.record_from_main_process``). So:

- ``advance`` adds to ``RunTally`` the runs that ended (in any final status
  but ``lost``) in ``[watermark, now - GRACE)`` and moves the watermark
  there, in one transaction that starts with a guarded UPDATE of the
  watermark from the value it read: of two processes advancing at once, the
  second matches nothing and adds nothing, so each run is added once.
  ``GRACE`` is there because ``finished_at`` is written by the transaction
  that ends the run: a run whose ending commits more than ``GRACE`` after
  its ``finished_at`` (a transaction stalled that long, a worker's clock that
  far behind the database's readers) would be left out of the counts.
- ``run_counts`` reads the tally and the watermark in one statement (one
  snapshot) and aggregates only the runs not in it: ended at or after the
  watermark, without an ending time (not ended yet; both through the
  ``run_by_finish`` index), or ``lost``. Every run is counted exactly once
  against the watermark that statement read, even when another process
  advances it meanwhile.

The first advance tallies every run that ended before ``now - GRACE`` (one
scan of the run table, as every scrape cost before); later ones read at least
``ADVANCE_EVERY`` of endings through the index. Runs are never deleted, so
the counts only grow; were they, the tally would keep counting them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from jobs.models import FINISHED_STATUSES, JobRun, RunStatus, RunTally

# Upper bounds in seconds; fixed so series from every process and release add up.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

GRACE = timedelta(minutes=5)
ADVANCE_EVERY = timedelta(minutes=1)

# The statuses a run never leaves: tallied once it ended before the watermark.
SETTLED_STATUSES = FINISHED_STATUSES - {RunStatus.LOST}

# A row of run_counts / aggregate: "job", "status", "n" (runs), then per histogram
# ("d": duration, "l": lateness) its count, its sum in milliseconds and one
# cumulative count per bound: "d_n", "d_sum", "d_le_0" … ("l" likewise).
Counts = dict[str, Any]
LABELS = ("job", "status")


def bucket_key(kind: str, index: int) -> str:
    return f"{kind}_le_{index}"


def aggregate(runs: QuerySet[JobRun]) -> list[Counts]:
    """Per (job, status) of ``runs``: their number and both histograms, in one grouped query.

    Each bucket is a filtered count of the runs at or under its bound, so
    buckets come out cumulative as Prometheus wants them.
    """
    aggregates: dict[str, Any] = {
        "n": Count("pk"),
        "d_n": Count("duration_ms"),
        "d_sum": Sum("duration_ms"),
        "l_n": Count("lateness_ms"),
        "l_sum": Sum("lateness_ms"),
    }
    for i, bound in enumerate(DURATION_BUCKETS):
        aggregates[bucket_key("d", i)] = Count("pk", filter=Q(duration_ms__lte=round(bound * 1000)))
    for i, bound in enumerate(LATENESS_BUCKETS):
        aggregates[bucket_key("l", i)] = Count("pk", filter=Q(lateness_ms__lte=round(bound * 1000)))
    counts: list[Counts] = []
    for row in runs.values("job", "status").annotate(**aggregates).order_by():
        found: Counts = dict(row)
        counts.append({key: value if key in LABELS else value or 0 for key, value in found.items()})
    return counts


def _as_counts(tally: RunTally) -> Counts:
    counts: Counts = {
        "job": tally.job,
        "status": tally.status,
        "n": tally.runs,
        "d_n": tally.duration_count,
        "d_sum": tally.duration_sum_ms,
        "l_n": tally.lateness_count,
        "l_sum": tally.lateness_sum_ms,
    }
    for kind, bounds, stored in (
        ("d", DURATION_BUCKETS, tally.duration_buckets),
        ("l", LATENESS_BUCKETS, tally.lateness_buckets),
    ):
        for i in range(len(bounds)):
            counts[bucket_key(kind, i)] = stored[i] if i < len(stored) else 0
    return counts


def _add(total: Counts, more: Counts) -> None:
    for key, value in more.items():
        if key not in LABELS:
            total[key] = total.get(key, 0) + value


def run_counts() -> list[Counts]:
    """Every run's counts per (job, status): the tally plus the runs it does not hold yet."""
    tallies = list(RunTally.objects.all())  # the watermark row too: one snapshot
    since = next((t.tallied_before for t in tallies if not t.job), None)
    untallied = JobRun.objects.all()
    if since is not None:
        untallied = JobRun.objects.filter(
            Q(finished_at__gte=since) | Q(finished_at__isnull=True) | Q(status=RunStatus.LOST)
        )
    merged: dict[tuple[str, str], Counts] = {(row["job"], row["status"]): row for row in aggregate(untallied)}
    for tally in tallies:
        if tally.job:
            total = merged.setdefault((tally.job, tally.status), {"job": tally.job, "status": tally.status})
            _add(total, _as_counts(tally))
    return list(merged.values())


def advance(now: datetime | None = None) -> bool:
    """Tally the runs settled before ``now - GRACE``; ``False`` when not due or another process did.

    Due once the watermark is ``ADVANCE_EVERY`` behind ``now - GRACE`` (or
    has never been set). Safe to call from every scrape of every process.
    """
    until = (now or timezone.now()) - GRACE
    mark, _ = RunTally.objects.get_or_create(job="", status="")
    since = mark.tallied_before
    if since is not None and until - since < ADVANCE_EVERY:
        return False
    # A run without an ending time is never tallied (run_counts reads it each time).
    window = Q(finished_at__lt=until) if since is None else Q(finished_at__gte=since, finished_at__lt=until)
    with transaction.atomic():
        # Guarded by the value read (None matches IS NULL): the loser waited on this row's lock.
        if not RunTally.objects.filter(pk=mark.pk, tallied_before=since).update(tallied_before=until):
            return False  # another process moved it first
        for row in aggregate(JobRun.objects.filter(window, status__in=SETTLED_STATUSES)):
            tally, _ = RunTally.objects.get_or_create(job=row["job"], status=row["status"])
            counts = _as_counts(tally)
            _add(counts, row)
            tally.runs = counts["n"]
            tally.duration_count, tally.duration_sum_ms = counts["d_n"], counts["d_sum"]
            tally.lateness_count, tally.lateness_sum_ms = counts["l_n"], counts["l_sum"]
            tally.duration_buckets = [counts[bucket_key("d", i)] for i in range(len(DURATION_BUCKETS))]
            tally.lateness_buckets = [counts[bucket_key("l", i)] for i in range(len(LATENESS_BUCKETS))]
            tally.save()
    return True
