"""The schedule change log: written with every edit, tailed by beat.

``record_changes`` is called by the signals in :mod:`scheduler.signals` and by
:func:`scheduler.services.update_schedules` (bulk edits, which skip signals),
inside the writer's transaction: a rolled-back edit leaves no change behind.

``ChangeFeed`` reads it. Auto-increment ids can commit out of order (id 7
commits before id 6), so the feed does not trust "everything above the
highest id seen": a gap below it is re-read until it fills or is older than
``GAP_PATIENCE`` (a rolled-back insert leaves a gap for ever). Re-reading a
change is harmless: applying one is idempotent (the entry is rebuilt).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from django.db.models import Max
from django.utils import timezone

from scheduler.models import ScheduleChange

GAP_PATIENCE = 10.0  # seconds


def record_changes(task_ids: Iterable[int]) -> int:
    rows = [ScheduleChange(task_id=task_id) for task_id in set(task_ids)]
    ScheduleChange.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


class ChangeFeed:
    def __init__(self) -> None:
        self.cursor = 0  # every id <= cursor was applied (or given up on)
        self.gaps: dict[int, float] = {}  # missing id -> when first seen missing

    def start_at_head(self) -> None:
        """Skip the history: the caller is about to load every schedule anyway."""
        self.cursor = ScheduleChange.objects.aggregate(top=Max("id"))["top"] or 0
        self.gaps.clear()

    def poll(self, limit: int = 10_000) -> set[int]:
        """Task ids changed since the last poll (possibly a few seen before)."""
        low = min(self.gaps, default=self.cursor + 1) - 1
        rows = list(
            ScheduleChange.objects.filter(id__gt=low).order_by("id").values_list("id", "task_id")[:limit]
        )
        now = time.monotonic()
        seen = {change_id for change_id, _ in rows}
        for gap in list(self.gaps):
            if gap in seen or now - self.gaps[gap] > GAP_PATIENCE:
                del self.gaps[gap]
        if rows:
            top = rows[-1][0]
            for missing in set(range(self.cursor + 1, top)) - seen:
                self.gaps.setdefault(missing, now)
            self.cursor = max(self.cursor, top)
        return {task_id for _, task_id in rows}

    def prune(self, keep_seconds: int = 3600) -> int:
        """Delete changes older than ``keep_seconds`` (every beat has applied them)."""
        cutoff = timezone.now() - timedelta(seconds=keep_seconds)
        deleted, _ = ScheduleChange.objects.filter(created_at__lt=cutoff, id__lte=self.cursor).delete()
        return deleted
