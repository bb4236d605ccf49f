"""The beat engine: a heap of next due times over the database schedules.

``tick`` pops every entry whose slot is due, claims those slots in one
transaction (``dispatch.claim_slots``), publishes the claimed runs in one
producer session, and pushes each entry's next slot: idle schedules cost
nothing per tick.

Restart safety: an entry's next slot is computed after the newest slot ever
claimed for it (read from ``JobRun``), never from memory, so a restarted beat
does not fire a slot again. A slot older than the schedule's starting deadline
at load is not fired.

Edits: django-celery-beat bumps ``PeriodicTasks.last_update`` on every change
through the ORM; the engine reloads when it moves, and every
``RECONCILE_SECONDS`` regardless (raw SQL edits).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from datetime import datetime

from celery import Celery
from django.db.models import Max
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from jobs.client import publish_runs
from jobs.models import JobDefinition, JobRun
from scheduler.beat import dispatch
from scheduler.beat.entries import Entry, build_entry
from scheduler.models import SchedulePolicy

logger = logging.getLogger(__name__)

RECONCILE_SECONDS = 60.0


class BeatEngine:
    def __init__(self, app: Celery, max_sleep: float = 1.0) -> None:
        self.app = app
        self.max_sleep = max_sleep
        self.entries: dict[int, Entry] = {}
        self.heap: list[tuple[datetime, int, int]] = []
        self._seq = itertools.count()
        self.seen_change: datetime | None = None
        self.loaded_at = 0.0

    # --- loading ------------------------------------------------------------
    def load(self, now: datetime | None = None) -> int:
        """(Re)build every entry and its next slot; return how many are scheduled."""
        now = now or timezone.now()
        self.seen_change = PeriodicTasks.last_change()
        tasks = PeriodicTask.objects.filter(enabled=True).select_related(
            "crontab", "interval", "clocked"
        )
        policies = {p.task_id: p for p in SchedulePolicy.objects.all()}
        definitions = {d.name: d for d in JobDefinition.objects.all()}
        last_slots = dict(
            JobRun.objects.filter(schedule__isnull=False)
            .values("schedule_id")
            .annotate(last=Max("scheduled_for"))
            .values_list("schedule_id", "last")
        )
        self.entries.clear()
        self.heap.clear()
        for task in tasks:
            policy = policies.get(task.pk)
            entry = build_entry(task, policy, definitions.get(task.task))
            last = last_slots.get(task.pk)
            if entry.one_off and last is not None:
                continue
            after = last or (policy.created_at if policy else now)
            due = entry.next_slot(after)
            if due is not None and due < now - entry.starting_deadline:
                # Down for longer than the starting deadline: those slots are
                # past saving; resume from the oldest slot still within it.
                due = entry.next_slot(now - entry.starting_deadline)
            if due is None:
                continue
            self.entries[task.pk] = entry
            self._push(due, task.pk)
        self.loaded_at = time.monotonic()
        logger.info("beat engine loaded %d schedules", len(self.entries))
        return len(self.entries)

    def _push(self, due: datetime, task_id: int) -> None:
        heapq.heappush(self.heap, (due, next(self._seq), task_id))

    def needs_reload(self) -> bool:
        if time.monotonic() - self.loaded_at >= RECONCILE_SECONDS:
            return True
        return PeriodicTasks.last_change() != self.seen_change

    # --- ticking --------------------------------------------------------------
    def pop_due(self, now: datetime) -> list[tuple[Entry, datetime]]:
        due = []
        while self.heap and self.heap[0][0] <= now:
            slot, _, task_id = heapq.heappop(self.heap)
            entry = self.entries.get(task_id)
            if entry is None:
                continue
            due.append((entry, slot))
            if not entry.one_off:
                following = entry.next_slot(slot)
                if following is not None:
                    self._push(following, task_id)
        return due

    def tick(self, now: datetime | None = None) -> float:
        """Fire what is due; return seconds until the next look."""
        if self.needs_reload():
            self.load(now)
        now = now or timezone.now()
        due = self.pop_due(now)
        if due:
            claimed = dispatch.claim_slots(due, now)
            sent = publish_runs(self.app, claimed)
            logger.info("beat: %d slots due, %d claimed, %d published", len(due), len(claimed), sent)
        return self.seconds_until_next(timezone.now())

    def seconds_until_next(self, now: datetime) -> float:
        if not self.heap:
            return self.max_sleep
        wait = (self.heap[0][0] - now).total_seconds()
        return max(0.0, min(wait, self.max_sleep))

    def next_due(self, count: int = 10) -> list[tuple[datetime, Entry]]:
        return [
            (slot, self.entries[task_id])
            for slot, _, task_id in heapq.nsmallest(count, self.heap)
            if task_id in self.entries
        ]
