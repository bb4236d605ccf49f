"""How a run's progress and its wait for a concurrency place read in the admin and the API.

Reads only the run's own columns (``progress_*``, ``waiting_*``: written by
``jobs.progress`` and ``jobs.concurrency``), so a list page shows them
without a query more.

- ``run_progress``: ``None`` until the job reported progress once. ``percent``
  only with a positive total (clamped to 0..100: a job may overshoot its
  estimate); ``done`` alone is a count without an end.
- ``run_waiting``: ``None`` unless the run is still queued (or retrying) and
  says what it waits for; a run that started no longer waits.
- ``compact_progress``: the one-line form for lists ("42 % · 4,200 / 10,000",
  "waiting: …"), only for runs still waiting or running; "" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from jobs.admin_lists import format_duration, format_utc
from jobs.models import JobRun, RunStatus

WAITING_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RETRYING})


@dataclass(frozen=True)
class RunProgress:
    done: int | None
    total: int | None
    percent: int | None
    message: str
    updated_at: datetime
    updated: str  # "2026-11-30 02:00:01 UTC"
    updated_ago: str  # "3.0 s"

    @property
    def counts(self) -> str:
        """ "4,200 / 10,000", "4,200" (no total), or "" (a message only)."""
        if self.done is None:
            return ""
        return f"{self.done:,} / {self.total:,}" if self.total else f"{self.done:,}"


@dataclass(frozen=True)
class RunWaiting:
    reason: str
    since: datetime | None
    since_text: str
    waited: str  # "2 min 3 s"


def age(moment: datetime, now: datetime) -> str:
    return format_duration(max(0, int((now - moment).total_seconds() * 1000)))


def run_progress(run: JobRun, now: datetime | None = None) -> RunProgress | None:
    if run.progress_updated_at is None:
        return None
    now = now or timezone.now()
    done, total = run.progress_done, run.progress_total
    percent = None
    if done is not None and total:
        percent = max(0, min(100, int(done * 100 // total)))
    return RunProgress(
        done=done,
        total=total,
        percent=percent,
        message=run.progress_message,
        updated_at=run.progress_updated_at,
        updated=format_utc(run.progress_updated_at),
        updated_ago=age(run.progress_updated_at, now),
    )


def run_waiting(run: JobRun, now: datetime | None = None) -> RunWaiting | None:
    if run.status not in WAITING_STATUSES or not run.waiting_for:
        return None
    now = now or timezone.now()
    since = run.waiting_since
    return RunWaiting(
        reason=run.waiting_for,
        since=since,
        since_text=format_utc(since),
        waited=age(since, now) if since else "",
    )


def compact_progress(run: JobRun) -> str:
    waiting = run_waiting(run)
    if waiting is not None:
        return f"waiting: {waiting.reason}"
    if run.status != RunStatus.RUNNING:
        return ""
    progress = run_progress(run)
    if progress is None:
        return ""
    parts = [f"{progress.percent} %"] if progress.percent is not None else []
    parts += [text for text in (progress.counts, progress.message) if text]
    return " · ".join(parts)
