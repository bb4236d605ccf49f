"""Alert digest: incidents opened and resolved in a window, per scope and kind, with time to resolve.

One row per (scope, kind) that had an incident touching ``[window_start,
window_end)``: opened in it, resolved in it, or open at its end. Columns:

- ``opened``: incidents opened in the window; ``paged`` of them: those whose
  trigger was sent (not quiet: not in maintenance, not grouped under a cause);
- ``resolved``: incidents resolved in the window, whenever they opened;
  ``median_resolve_s`` / ``max_resolve_s``: their time from opening to
  resolution, in seconds (``None`` when none was resolved);
- ``open_at_end``: incidents opened before the window's end and not resolved
  by then (resolved later, or still open), and ``oldest_open_since``: when the
  oldest of them opened.

Rows with incidents open at the end come first (most first), then by most
opened. Incidents are few next to runs (one per outage, not per run), so the
matching rows are read once (``opened_at`` before the end and not resolved
before the start) and grouped here; an empty window gives no rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q

from alerts.models import Incident
from reports.framework import Window, report

COLUMNS = [
    "scope",
    "kind",
    "schedule",
    "job",
    "queue",
    "opened",
    "paged",
    "resolved",
    "median_resolve_s",
    "max_resolve_s",
    "open_at_end",
    "oldest_open_since",
]


@dataclass
class _Group:
    schedule: str = ""
    job: str = ""
    queue: str = ""
    opened: int = 0
    paged: int = 0
    resolve_seconds: list[float] = field(default_factory=list)
    open_at_end: int = 0
    oldest_open_since: datetime | None = None


def alert_digest_rows(window_start: datetime, window_end: datetime) -> Iterator[list[Any]]:
    """The digest's rows (``COLUMNS``) over ``[window_start, window_end)``.

    ``ValueError`` when the window ends before it starts; an empty one has no rows.
    """
    if window_end < window_start:
        raise ValueError(
            f"the window ends ({window_end.isoformat()}) before it starts ({window_start.isoformat()})"
        )
    groups: dict[tuple[str, str], _Group] = {}
    touching = Incident.objects.filter(
        Q(opened_at__lt=window_end), Q(resolved_at__isnull=True) | Q(resolved_at__gte=window_start)
    ).values_list("scope", "kind", "schedule_name", "job", "queue", "opened_at", "resolved_at", "alerted_at")
    for scope, kind, schedule, job, queue, opened_at, resolved_at, alerted_at in touching.iterator(2000):
        group = groups.setdefault((scope, kind), _Group(schedule, job, queue))
        if opened_at >= window_start:
            group.opened += 1
            group.paged += alerted_at is not None
        if resolved_at is not None and window_start <= resolved_at < window_end:
            group.resolve_seconds.append((resolved_at - opened_at).total_seconds())
        if resolved_at is None or resolved_at >= window_end:
            group.open_at_end += 1
            if group.oldest_open_since is None or opened_at < group.oldest_open_since:
                group.oldest_open_since = opened_at
    rows: list[list[Any]] = []
    for (scope, kind), group in groups.items():
        took = group.resolve_seconds
        rows.append(
            [
                scope,
                kind,
                group.schedule,
                group.job,
                group.queue,
                group.opened,
                group.paged,
                len(took),
                round(statistics.median(took), 1) if took else None,
                round(max(took), 1) if took else None,
                group.open_at_end,
                group.oldest_open_since,
            ]
        )
    rows.sort(key=lambda row: (-row[10], -row[5], row[0], row[1]))
    yield from rows


@report(
    "reports.alert_digest",
    columns=COLUMNS,
    chunk_size=None,
    formats=["csv", "html", "json"],
    title="Alert digest",
    queue="reports",
    soft_time_limit=240,
    hard_time_limit=300,
)
def alert_digest(window: Window) -> Iterator[list[Any]]:
    """Incidents opened and resolved in the window per scope and kind, time to resolve, still open.

    Over the window (default: the last 24 hours), per scope (a schedule, beat,
    a queue) and kind: incidents opened and paged, resolved with their median
    and longest time to resolve, and those open at the window's end.
    """
    return alert_digest_rows(window.start, window.end)
