"""The beat engine: a heap of next due times, kept in step by the change log.

Cost model: a tick with nothing due is a heap peek; a due slot costs
O(log N) plus its share of one claim transaction and one pipelined publish.
Edits reach the heap through ``ChangeFeed`` without a reload. On PostgreSQL
the feed is read when ``ChangeListener`` reports a committed change (a
socket read of a few microseconds per tick) and every
``fallback_poll_interval`` in case a notification was lost; elsewhere it is
polled every ``poll_interval``. ``reconcile`` compares every row's signature
every ``reconcile_interval`` as the safety net for raw SQL edits.

Restart safety: an entry resumes after its policy's ``last_slot_at`` (advanced
in the claim transaction), never after an in-memory time, so a restarted
beat fires no slot twice. Slots that passed while no beat ran are handled by
the schedule's catch-up policy (``plan_due_slots``) and recorded.

The heap holds (fire_at, seq, task_id, version, slot); an entry rebuilt by an
edit gets a new version, and heap items of older versions are dropped when
popped (lazy deletion: an edit costs O(log N), not O(N)).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Celery
from django.utils import timezone

from jobs.client import publish_runs
from scheduler.beat import dispatch
from scheduler.beat.dispatch import MISSED, RUN, PlannedSlot
from scheduler.beat.entries import Entry, ensure_policies, entry_from_row, fetch_rows, job_defaults
from scheduler.changes import ChangeFeed, ChangeListener
from scheduler.models import CatchUp
from scheduler.presence import flag_unserved

logger = logging.getLogger(__name__)

# At most this many past slots of one schedule are enumerated per catch-up;
# older ones are skipped over (and counted in the log), which bounds the work
# after a long outage at the price of not recording every missed slot.
MAX_CATCHUP_SLOTS = 100
# How often beat compares schedules with what live workers serve.
PRESENCE_CHECK_SECONDS = 60.0
# Slots claimed per transaction (see BeatEngine.dispatch).
CLAIM_BATCH = 5000
# catchup=none still runs a slot this late (a tick is never exactly on time).
ON_TIME_GRACE = timedelta(seconds=60)


def plan_due_slots(entry: Entry, slots: list[datetime], now: datetime) -> list[PlannedSlot]:
    """Decide, per the catch-up policy, which due slots run and which are missed.

    ``slots`` are due (≤ now), oldest first. A slot older than the starting
    deadline is always missed. Of the rest: ``latest`` runs the newest,
    ``all`` runs each, ``none`` runs the newest only if it is on time.
    """
    deadline = entry.starting_deadline
    runnable = [s for s in slots if now - s <= deadline]
    if entry.catchup == CatchUp.ALL:
        chosen = set(runnable)
    elif entry.catchup == CatchUp.NONE:
        chosen = {slots[-1]} if now - slots[-1] <= min(ON_TIME_GRACE, deadline) else set()
    else:
        chosen = {runnable[-1]} if runnable else set()
    planned = []
    for slot in slots:
        if slot in chosen:
            planned.append(PlannedSlot(entry, slot, RUN))
        else:
            why = (
                "past its starting deadline" if now - slot > deadline else f"catch-up policy {entry.catchup}"
            )
            planned.append(PlannedSlot(entry, slot, MISSED, f"not run: {why}"))
    return planned


class BeatEngine:
    def __init__(
        self,
        app: Celery,
        *,
        fence: Callable[[], None] | None = None,
        max_sleep: float = 1.0,
        poll_interval: float = 0.25,
        fallback_poll_interval: float = 5.0,
        reconcile_interval: float = 300.0,
    ) -> None:
        self.app = app
        self.fence = fence
        self.max_sleep = max_sleep
        self.poll_interval = poll_interval
        self.fallback_poll_interval = fallback_poll_interval
        self.reconcile_interval = reconcile_interval
        self.entries: dict[int, Entry] = {}
        self.heap: list[tuple[datetime, int, int, int, datetime]] = []
        self.feed = ChangeFeed()
        self.listener = ChangeListener()
        self.defaults: dict[str, tuple[str, int, int]] = {}
        self._seq = itertools.count()
        self._versions = itertools.count(1)
        self.next_poll = 0.0
        self.next_reconcile = 0.0
        self.next_presence_check = 0.0
        self.outbox_dirty = False
        self.loaded = False

    # --- building entries ------------------------------------------------------------
    def load(self, now: datetime | None = None) -> int:
        """Build every entry from the database; return how many are scheduled."""
        now = now or timezone.now()
        self.listener.open()  # first: a change committed while loading wakes the next tick
        self.feed.start_at_head()  # before reading: a concurrent edit is re-read, not lost
        ensure_policies(now)
        self.defaults = job_defaults()
        self.entries.clear()
        self.heap.clear()
        # Building 100,000 long-lived entries triggers many useless collections
        # (a tenth of the load); collect once at the end instead.
        gc.disable()
        try:
            for row in fetch_rows():
                self._install(entry_from_row(row, self.defaults), now, edited=False)
        finally:
            gc.enable()
        heapq.heapify(self.heap)  # _install appends while loading; O(N) beats N pushes
        self.loaded = True
        self.next_poll = time.monotonic() + self.change_poll_every()
        self.next_reconcile = time.monotonic() + self.reconcile_interval
        logger.info("beat engine loaded %d schedules", len(self.entries))
        return len(self.entries)

    def _install(self, entry: Entry, now: datetime, *, edited: bool, previous: Entry | None = None) -> None:
        """Put ``entry`` in place with its next slot.

        A fresh load resumes after the last claimed slot (or the schedule's
        creation), so downtime is caught up. An edit resumes from now, except
        that a slot already due under the old definition is not lost.
        """
        entry.version = next(self._versions)
        self.entries[entry.task_id] = entry
        if edited:
            if previous is not None and previous.last_slot:
                entry.last_slot = max(filter(None, [entry.last_slot, previous.last_slot]))
            after = max(filter(None, [entry.last_slot, now]))
            if previous is not None and previous.pending is not None and previous.pending <= now:
                # Due under the old definition but not yet fired: do not lose it.
                after = max(filter(None, [entry.last_slot, previous.pending - timedelta(microseconds=1)]))
        else:
            after = entry.last_slot or entry.created_at
        if entry.one_off and entry.last_slot is not None:
            return
        slot = entry.next_slot(after)
        if slot is None:
            return
        entry.pending = slot
        item = (entry.fire_at(slot), next(self._seq), entry.task_id, entry.version, slot)
        if self.loaded:
            heapq.heappush(self.heap, item)
        else:
            self.heap.append(item)

    def apply_changes(self, now: datetime | None = None) -> int:
        """Rebuild the entries named by the change log; return how many changed."""
        changed = self.feed.poll()
        if not changed:
            return 0
        now = now or timezone.now()
        self.defaults = job_defaults()
        ensure_policies(now, changed)
        rows = {row[0]: row for row in fetch_rows(changed)}
        for task_id in changed:
            previous = self.entries.pop(task_id, None)
            row = rows.get(task_id)
            if row is not None:
                self._install(entry_from_row(row, self.defaults), now, edited=True, previous=previous)
        return len(changed)

    def reconcile(self, now: datetime | None = None) -> int:
        """Compare every row with its entry; rebuild what differs (raw SQL edits)."""
        now = now or timezone.now()
        self.defaults = job_defaults()
        seen = set()
        rebuilt = 0
        for row in fetch_rows():
            task_id = row[0]
            seen.add(task_id)
            current = self.entries.get(task_id)
            candidate = entry_from_row(row, self.defaults)
            if current is None or current.signature != candidate.signature:
                self.entries.pop(task_id, None)
                self._install(candidate, now, edited=True, previous=current)
                rebuilt += 1
        for gone in set(self.entries) - seen:
            del self.entries[gone]
            rebuilt += 1
        self.feed.prune()
        if rebuilt:
            logger.warning("beat reconcile: %d schedules differed from the change log", rebuilt)
        return rebuilt

    # --- ticking ---------------------------------------------------------------------
    def collect_due(self, now: datetime) -> list[PlannedSlot]:
        """Pop every due entry; plan its due slots; push its next slot."""
        planned: list[PlannedSlot] = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, task_id, version, slot = heapq.heappop(heap)
            entry = self.entries.get(task_id)
            if entry is None or entry.version != version:
                continue  # deleted or edited since this item was pushed
            slots = [slot]
            following = entry.next_slot(slot)
            while following is not None and following <= now and len(slots) < MAX_CATCHUP_SLOTS:
                slots.append(following)
                following = entry.next_slot(following)
            if following is not None and following <= now:
                skipped_to = entry.next_slot(now)
                logger.warning(
                    "beat: %s fell more than %d slots behind; skipping to %s",
                    entry.name,
                    MAX_CATCHUP_SLOTS,
                    skipped_to,
                )
                following = skipped_to
            planned.extend(plan_due_slots(entry, slots, now))
            entry.last_slot = slots[-1]
            entry.pending = None
            if following is not None and not entry.one_off:
                entry.pending = following
                heapq.heappush(heap, (entry.fire_at(following), next(self._seq), task_id, version, following))
        return planned

    def tick(self, now: datetime | None = None) -> float:
        """Apply edits, fire what is due; return seconds until the next look."""
        if not self.loaded:
            self.load(now)
        clock = time.monotonic()
        if clock >= self.next_poll or self.listener.notified():
            self.apply_changes(now)
            self.next_poll = clock + self.change_poll_every()
        if clock >= self.next_reconcile:
            self.reconcile(now)
            self.next_reconcile = clock + self.reconcile_interval
        if clock >= self.next_presence_check:
            flag_unserved(self.entries.values(), now)
            self.next_presence_check = clock + PRESENCE_CHECK_SECONDS
        if self.outbox_dirty:
            self.flush_outbox()
        now = now or timezone.now()
        if self.heap and self.heap[0][0] <= now:
            self.dispatch(self.collect_due(now), now)
        return self.seconds_until_next(timezone.now())

    def dispatch(self, planned: list[PlannedSlot], now: datetime) -> int:
        """Claim and publish ``planned`` in transactions of at most ``CLAIM_BATCH`` slots.

        Bounded batches keep each claim transaction well inside the lease
        (every batch's fence extends it), so a huge catch-up cannot make a
        leader lose its lease mid-claim and roll back for ever.
        """
        sent = claimed_count = 0
        started = time.monotonic()
        for start in range(0, len(planned), CLAIM_BATCH):
            batch = planned[start : start + CLAIM_BATCH]
            claimed, to_revoke = dispatch.claim_slots(batch, fence=self.fence, now=now)
            claimed_count += len(claimed)
            try:
                sent += publish_runs(self.app, claimed)
                dispatch.revoke_replaced(self.app, to_revoke)
            except Exception as exc:  # noqa: BLE001 (any broker error: keep them in the outbox)
                self.outbox_dirty = True
                logger.error(
                    "beat: claimed %d runs but could not publish (%s); they wait in the outbox",
                    len(claimed),
                    exc,
                )
        logger.info(
            "beat: %d slots due, %d claimed, %d published in %.3f s",
            len(planned),
            claimed_count,
            sent,
            time.monotonic() - started,
        )
        return sent

    def flush_outbox(self) -> int:
        try:
            sent = dispatch.publish_outbox(self.app)
        except Exception as exc:  # noqa: BLE001
            logger.debug("beat: outbox still blocked: %s", exc)
            return 0
        self.outbox_dirty = False
        if sent:
            logger.warning("beat: published %d runs from the outbox", sent)
        return sent

    def seconds_until_next(self, now: datetime) -> float:
        wait = self.max_sleep
        if self.heap:
            wait = min(wait, (self.heap[0][0] - now).total_seconds())
        # Wake every poll_interval even when listening: checking costs microseconds
        # and bounds how long a committed edit waits for beat to notice it.
        wait = min(wait, self.poll_interval, max(0.0, self.next_poll - time.monotonic()))
        return max(0.0, wait)

    def change_poll_every(self) -> float:
        """Seconds until the change log is read even without a notification.

        Short without a listener (SQLite) and while the feed waits for a gap
        to fill (an out-of-order commit), long otherwise: then the log is read
        when a notification says a change committed.
        """
        if self.listener.listening and not self.feed.gaps:
            return self.fallback_poll_interval
        return self.poll_interval

    def close(self) -> None:
        """Release the listening connection (the engine is being dropped)."""
        self.listener.close()

    def status(self) -> dict:
        """A small JSON view of the engine for ``manage.py beatstatus``."""
        return {
            "schedules": len(self.entries),
            "heap": len(self.heap),
            "change_cursor": self.feed.cursor,
            "outbox_blocked": self.outbox_dirty,
            "next_due": [
                {"slot": slot.isoformat(), "schedule": entry.name, "job": entry.job}
                for slot, entry in self.next_due(10)
            ],
        }

    def next_due(self, count: int = 10) -> list[tuple[datetime, Entry]]:
        upcoming = []
        for _, _, task_id, version, slot in heapq.nsmallest(count * 3, self.heap):
            entry = self.entries.get(task_id)
            if entry is not None and entry.version == version:
                upcoming.append((slot, entry))
        return upcoming[:count]
