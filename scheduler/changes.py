"""The schedule change log: written with every edit, tailed by beat.

``record_changes`` is called by the signals in :mod:`scheduler.signals` and by
:func:`scheduler.services.update_schedules` (bulk edits, which skip signals),
inside the writer's transaction: a rolled-back edit leaves no change behind.

On PostgreSQL, ``record_changes`` also sends a ``NOTIFY`` on ``CHANNEL`` in
the same transaction (delivered only if it commits), and ``ChangeListener``
lets beat notice it with a non-blocking socket read instead of a query per
tick. The notification is only a wake-up call: the log stays the truth, so a
lost notification (the listening connection dropped) delays an edit by the
fallback poll interval at most, never loses it.

``ChangeFeed`` reads the log. Auto-increment ids can commit out of order (id 7
commits before id 6), so the feed does not trust "everything above the
highest id seen": a gap below it is re-read until it fills or is older than
``GAP_PATIENCE`` (a rolled-back insert leaves a gap for ever). Re-reading a
change is harmless: applying one is idempotent (the entry is rebuilt).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from django.db import connection
from django.db.models import Max
from django.utils import timezone

from scheduler.models import ScheduleChange

logger = logging.getLogger(__name__)

GAP_PATIENCE = 10.0  # seconds
CHANNEL = "schedule_changes"


def record_changes(task_ids: Iterable[int]) -> int:
    rows = [ScheduleChange(task_id=task_id) for task_id in set(task_ids)]
    ScheduleChange.objects.bulk_create(rows, batch_size=1000)
    if rows and connection.vendor == "postgresql":
        # Transactional: PostgreSQL delivers it at commit (once per transaction
        # and channel, however many edits), and never for a rollback.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return len(rows)


class ChangeListener:
    """``LISTEN`` on ``CHANNEL`` over a connection of its own (PostgreSQL only).

    ``notified()`` costs a few microseconds (a non-blocking read of the
    socket), which is what lets an idle beat tick skip the change-log query.
    Any error on the listening connection closes it and reports "notified",
    so the caller polls the log (and meets the outage there, if it is one);
    ``open()`` is called again on the next load.
    """

    def __init__(self) -> None:
        self.conn = None

    @property
    def listening(self) -> bool:
        return self.conn is not None

    def open(self) -> bool:
        """Start listening; False where the database has no LISTEN (SQLite)."""
        self.close()
        if connection.vendor != "postgresql":
            return False
        # Wrapped: a failure to connect is Django's OperationalError, the
        # outage beat already waits out, not a driver error that would crash it.
        with connection.wrap_database_errors:
            conn = connection.get_new_connection(connection.get_connection_params())
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
        self.conn = conn
        return True

    def notified(self) -> bool:
        """Whether a change committed since the last call (drains every notification)."""
        if self.conn is None:
            return False
        try:
            return sum(1 for _ in self.conn.notifies(timeout=0)) > 0
        except Exception as exc:  # noqa: BLE001 (any driver error: fall back to polling)
            logger.warning("beat: change notifications lost (%s); polling the change log", exc)
            self.close()
            return True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001, S110 (closing a broken connection)
                pass
            self.conn = None


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
