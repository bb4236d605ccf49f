"""The beat engine: a heap of next due times, kept in step by the change log.

Cost model: a tick with nothing due is a heap peek; a due slot costs
O(log N) plus its share of one claim transaction and one pipelined publish.
Edits reach the heap through ``ChangeFeed`` without a reload. On PostgreSQL
the feed is read when ``ChangeListener`` reports a committed change (a
socket read of a few microseconds per tick) and every
``fallback_poll_interval`` in case a notification was lost; elsewhere it is
polled every ``poll_interval``. Every ``reconcile_interval`` a reconcile
compares every row with its entry, the safety net for raw SQL edits; it
walks the table by id in steps of ``RECONCILE_STEP`` rows, one step per
tick, so no tick pays for all of it.

Restart safety: an entry resumes after its policy's ``last_slot_at`` (advanced
in the claim transaction), never after an in-memory time, so a restarted
beat fires no slot twice. Slots that passed while no beat ran are handled by
the schedule's catch-up policy (``plan_due_slots``) and recorded.

The heap holds the entries themselves, ordered by ``entry.due_at`` (the
pending slot plus jitter). An entry replaced by an edit or removed is marked
``retired`` and dropped when popped (lazy deletion: an edit costs O(log N),
not O(N)).
"""

from __future__ import annotations

import gc
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.client import publish_outbox, send_batch
from scheduler.beat import dispatch
from scheduler.beat.dispatch import MISSED, RUN, PlannedSlot
from scheduler.beat.entries import (
    Entry,
    EntryFactory,
    enabled_id_range,
    ensure_policies,
    fetch_rows,
    fetch_rows_after,
    job_defaults,
)
from scheduler.beat.table import IdTable
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
CLAIM_BATCH = 2000
# Rows a reconcile compares per tick (about 30 ms at 5,000 here).
RECONCILE_STEP = 5000
# How often beat looks for outbox batches other processes left, and how old
# one must be (younger ones may still be on their way to the broker).
OUTBOX_SWEEP_SECONDS = 30.0
OUTBOX_SWEEP_AGE = timedelta(seconds=30)
# catchup=none still runs a slot this late (a tick is never exactly on time).
ON_TIME_GRACE = timedelta(seconds=60)


def plan_due_slots(entry: Entry, slots: list[datetime], now: datetime) -> list[PlannedSlot]:
    """Decide, per the catch-up policy, which due slots run and which are missed.

    ``slots`` are due (≤ now), oldest first. A slot older than the starting
    deadline is always missed. Of the rest: ``latest`` runs the newest,
    ``all`` runs each, ``none`` runs the newest only if it is on time.
    """
    deadline = entry.definition.starting_deadline
    catchup = entry.definition.catchup
    runnable = [s for s in slots if now - s <= deadline]
    if catchup == CatchUp.ALL:
        chosen = set(runnable)
    elif catchup == CatchUp.NONE:
        chosen = {slots[-1]} if now - slots[-1] <= min(ON_TIME_GRACE, deadline) else set()
    else:
        chosen = {runnable[-1]} if runnable else set()
    planned = []
    for slot in slots:
        if slot in chosen:
            planned.append(PlannedSlot(entry, slot, RUN))
        else:
            why = "past its starting deadline" if now - slot > deadline else f"catch-up policy {catchup}"
            planned.append(PlannedSlot(entry, slot, MISSED, f"not run: {why}"))
    return planned


@dataclass(slots=True)
class ReconcileCycle:
    """Where a reconcile walk stands between ticks."""

    ids: list[int]  # the entries' ids when the cycle began, ascending
    index: int = 0  # ids[:index] are checked
    after_id: int = 0  # rows with ids up to this one are checked
    changes: int = 0


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
        self.entries: IdTable[Entry] = IdTable()
        self.heap: list[Entry] = []
        self.retired_in_heap = 0
        self.feed = ChangeFeed()
        self.listener = ChangeListener()
        self.factory = EntryFactory({})
        self.next_poll = 0.0
        self.next_reconcile = 0.0
        self.reconciling: ReconcileCycle | None = None
        self.next_presence_check = 0.0
        self.outbox_dirty = False
        self.next_outbox_sweep = 0.0
        self.loaded = False
        self.last_reconcile_changes = 0

    # --- building entries ------------------------------------------------------------
    def load(self, now: datetime | None = None) -> int:
        """Build every entry from the database; return how many are scheduled."""
        now = now or timezone.now()
        self.listener.open()  # first: a change committed while loading wakes the next tick
        self.feed.start_at_head()  # before reading: a concurrent edit is re-read, not lost
        ensure_policies(now)
        self.factory = EntryFactory(job_defaults())
        self.entries = IdTable(*enabled_id_range())
        self.heap.clear()
        self.retired_in_heap = 0
        self.reconciling = None
        # Building 100,000 long-lived entries triggers many useless collections
        # (a tenth of the load); collect once at the end instead.
        gc.disable()
        try:
            for row in fetch_rows():
                entry, last_slot, created = self.factory.build(row)
                self._install(entry, now, last_slot=last_slot, resume_after=last_slot or created)
        finally:
            gc.enable()
        heapq.heapify(self.heap)  # _install appends while loading; O(N) beats N pushes
        self.loaded = True
        self.next_poll = time.monotonic() + self.change_poll_every()
        self.next_reconcile = time.monotonic() + self.reconcile_interval
        logger.info("beat engine loaded %d schedules", len(self.entries))
        return len(self.entries)

    def _install(
        self,
        entry: Entry,
        now: datetime,
        *,
        last_slot: datetime | None,
        resume_after: datetime | None = None,
        previous: Entry | None = None,
    ) -> None:
        """Put ``entry`` in place with its next slot.

        ``last_slot`` is the row's ``last_slot_at``: every claim advances it
        in its own transaction, so it is never behind what beat fired. A full
        load resumes after ``resume_after`` (the last claimed slot, or the
        schedule's creation), so downtime is caught up. An edit resumes from
        now, except that a slot already due under the old definition
        (``previous``) is not lost.
        """
        self.entries[entry.task_id] = entry
        if resume_after is not None:
            after = resume_after
        else:
            after = max(filter(None, [last_slot, now]))
            if previous is not None and previous.pending is not None and previous.pending <= now:
                # Due under the old definition but not yet fired: do not lose it.
                after = max(filter(None, [last_slot, previous.pending - timedelta(microseconds=1)]))
        if entry.definition.one_off and last_slot is not None:
            return
        slot = entry.next_slot(after)
        if slot is None:
            return
        entry.wait_for(slot)
        if self.loaded:
            heapq.heappush(self.heap, entry)
        else:
            self.heap.append(entry)

    def _remove(self, task_id: int) -> Entry | None:
        """Forget ``task_id``'s entry; it is skipped when it comes off the heap."""
        entry = self.entries.pop(task_id, None)
        if entry is not None:
            if entry.pending is not None:  # it is in the heap
                self.retired_in_heap += 1
            entry.retire()
        return entry

    def _compact_heap(self) -> None:
        """Drop retired entries from the heap once they are a quarter of it.

        Lazy deletion alone would keep an edited far-future entry until its
        old slot came round: hourly bulk edits of daily schedules would hold
        a day of dead copies. O(N), at most once per N/4 retirements.
        """
        if self.retired_in_heap > max(1000, len(self.heap) // 4):
            self.heap = [entry for entry in self.heap if not entry.retired]
            heapq.heapify(self.heap)
            self.retired_in_heap = 0

    def apply_changes(self, now: datetime | None = None) -> int:
        """Rebuild the entries named by the change log; return how many changed."""
        changed = self.feed.poll()
        if not changed:
            return 0
        self._rebuild(changed, now or timezone.now())
        return len(changed)

    def _refresh_defaults(self) -> None:
        """Re-read the catalog's defaults; new ones mean new definitions (cached ones embed them)."""
        defaults = job_defaults()
        if defaults != self.factory.defaults:
            self.factory = EntryFactory(defaults)

    def _rebuild(self, task_ids: set[int], now: datetime) -> None:
        """Re-read ``task_ids`` from the database; drop those no longer enabled."""
        self._refresh_defaults()
        ensure_policies(now, task_ids)
        found: set[int] = set()
        for row in fetch_rows(task_ids):  # streamed: 10,000 rows at once were 10 MB of peak
            found.add(row[0])
            previous = self._remove(row[0])
            entry, last_slot, _ = self.factory.build(row)
            self._install(entry, now, last_slot=last_slot, previous=previous)
        for task_id in task_ids - found:
            self._remove(task_id)
        self._compact_heap()

    def reconcile(self, now: datetime | None = None) -> int:
        """A whole reconcile cycle at once; return how many schedules it rebuilt or dropped."""
        self.reconciling = None
        while not self.reconcile_step(now):
            pass
        return self.last_reconcile_changes

    def reconcile_step(self, now: datetime | None = None) -> bool:
        """Compare the next ``RECONCILE_STEP`` rows with their entries; True when the cycle ends.

        A row that does not match its entry (or has none) is rebuilt; an entry
        whose id the walk passed without a row is dropped. Entries are walked
        in the id order they had when the cycle began (a copy of the ids, not
        of the entries: 100,000 ints, not a second schedule).
        """
        now = now or timezone.now()
        if self.reconciling is None:
            self._refresh_defaults()
            self.reconciling = ReconcileCycle(sorted(self.entries))
        cycle = self.reconciling
        seen: set[int] = set()
        differ: set[int] = set()
        for row in fetch_rows_after(cycle.after_id, RECONCILE_STEP):
            seen.add(row[0])
            entry = self.entries.get(row[0])
            if entry is None or not self.factory.matches(entry, row):
                differ.add(row[0])
        done = len(seen) < RECONCILE_STEP
        upto = None if done else max(seen)
        ids, i = cycle.ids, cycle.index
        while i < len(ids) and (upto is None or ids[i] <= upto):
            if ids[i] not in seen and self._remove(ids[i]) is not None:
                cycle.changes += 1
            i += 1
        cycle.index = i
        cycle.after_id = upto or 0
        if differ:
            self._rebuild(differ, now)
            cycle.changes += len(differ)
        self._compact_heap()
        if not done:
            return False
        self.factory.keep_only(self.entries.values())
        self.feed.prune()
        self.reconciling = None
        self.last_reconcile_changes = cycle.changes
        if cycle.changes:
            logger.warning("beat reconcile: %d schedules differed from the change log", cycle.changes)
        return True

    # --- ticking ---------------------------------------------------------------------
    def collect_due(self, now: datetime) -> list[PlannedSlot]:
        """Pop every due entry; plan its due slots; push its next slot."""
        planned: list[PlannedSlot] = []
        heap = self.heap
        while heap and heap[0].due_at <= now:
            entry = heapq.heappop(heap)
            if entry.retired:
                self.retired_in_heap -= 1
                continue  # edited or deleted since this item was pushed
            slot = entry.pending
            slots = [slot]
            following = entry.next_slot(slot)
            while following is not None and following <= now and len(slots) < MAX_CATCHUP_SLOTS:
                slots.append(following)
                following = entry.next_slot(following)
            if following is not None and following <= now:
                skipped_to = entry.next_slot(now)
                logger.warning(
                    "beat: schedule %s fell more than %d slots behind; skipping to %s",
                    entry.task_id,
                    MAX_CATCHUP_SLOTS,
                    skipped_to,
                )
                following = skipped_to
            planned.extend(plan_due_slots(entry, slots, now))
            if following is not None and not entry.definition.one_off:
                entry.wait_for(following)
                heapq.heappush(heap, entry)
            else:
                entry.wait_for(None)
        return planned

    def tick(self, now: datetime | None = None) -> float:
        """Apply edits, fire what is due; return seconds until the next look."""
        if not self.loaded:
            self.load(now)
        clock = time.monotonic()
        if clock >= self.next_poll or self.listener.notified():
            self.apply_changes(now)
            self.next_poll = clock + self.change_poll_every()
        if self.reconciling is not None or clock >= self.next_reconcile:
            if self.reconcile_step(now):
                self.next_reconcile = clock + self.reconcile_interval
        if clock >= self.next_presence_check:
            flag_unserved(self.entries.values(), now)
            self.next_presence_check = clock + PRESENCE_CHECK_SECONDS
        if self.outbox_dirty or clock >= self.next_outbox_sweep:
            # Dirty: our own publish failed, retry everything. Otherwise a sweep
            # for batches another process left (a dispatch whose broker call
            # failed, a crashed beat), old enough not to be in flight.
            self.flush_outbox(older_than=None if self.outbox_dirty else OUTBOX_SWEEP_AGE)
            self.next_outbox_sweep = clock + OUTBOX_SWEEP_SECONDS
        now = now or timezone.now()
        if self.heap and self.heap[0].due_at <= now:
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
            claim = dispatch.claim_slots(batch, fence=self.fence, now=now)
            claimed_count += len(claim.runs)
            try:
                # Before publishing: the old run stops before its replacement can start.
                dispatch.revoke_replaced(self.app, claim.to_revoke)
            except Exception as exc:  # noqa: BLE001 (the runs are recorded replaced; say so loudly)
                logger.error("beat: could not revoke %d replaced runs: %s", len(claim.to_revoke), exc)
            try:
                sent += send_batch(self.app, claim.runs, claim.outbox_batch)
            except Exception as exc:  # noqa: BLE001 (any broker error: keep them in the outbox)
                self.outbox_dirty = True
                logger.error(
                    "beat: claimed %d runs but could not publish (%s); they wait in the outbox",
                    len(claim.runs),
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

    def flush_outbox(self, older_than: timedelta | None = None) -> int:
        try:
            sent = publish_outbox(self.app, older_than=older_than)
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
            wait = min(wait, (self.heap[0].due_at - now).total_seconds())
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
        upcoming = self.next_due(10)
        # Names live in the database, not in the entries (memory).
        names = dict(
            PeriodicTask.objects.filter(pk__in=[e.task_id for _, e in upcoming]).values_list("pk", "name")
        )
        return {
            "schedules": len(self.entries),
            "heap": len(self.heap),
            "change_cursor": self.feed.cursor,
            "outbox_blocked": self.outbox_dirty,
            "next_due": [
                {
                    "slot": slot.isoformat(),
                    "schedule": names.get(entry.task_id, ""),
                    "job": entry.definition.job,
                }
                for slot, entry in upcoming
            ],
        }

    def next_due(self, count: int = 10) -> list[tuple[datetime, Entry]]:
        upcoming = []
        for entry in heapq.nsmallest(count * 3, self.heap):
            if not entry.retired and entry.pending is not None:
                upcoming.append((entry.pending, entry))
        return upcoming[:count]
