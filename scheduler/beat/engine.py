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

One bad row never stops the others (guarantee 8 in ARCHITECTURE.md). Each schedule is
built and advanced in isolation: a row beat cannot evaluate (bad JSON, an
unknown job, an impossible interval or cron, any exception while building
or advancing its entry, or a claim the database refuses) is *quarantined*:
its policy's ``problem`` says why, one ERROR line is logged (a Sentry event,
tagged with the schedule), and no slot is claimed for it, while every other
schedule keeps firing. The ``problem`` UPDATE is guarded, so a reason is
reported once, not at every reload or by every beat. An edit of the row
(the change log), a reconcile or a new job catalog rebuilds it; once it
builds, it fires again and its problem is cleared.

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

import sentry_sdk
from celery import Celery
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError as BrokerError

from jobs.publishing import publish_outbox, send_batch
from scheduler.beat import dispatch
from scheduler.beat.dispatch import MISSED, RUN, SKIPPED, Claim, PlannedSlot
from scheduler.beat.entries import (
    Entry,
    EntryFactory,
    Pause,
    UnusableSchedule,
    enabled_id_range,
    ensure_policies,
    fetch_rows,
    fetch_rows_after,
    job_defaults,
    pause_of,
)
from scheduler.beat.lease import LeaseLost
from scheduler.beat.table import IdTable
from scheduler.changes import ChangeFeed, ChangeListener
from scheduler.models import CatchUp, SchedulePolicy
from scheduler.presence import flag_unserved

logger = logging.getLogger(__name__)

# At most this many past slots of one schedule are enumerated per catch-up;
# older ones are skipped over (and counted in the log), which bounds the work
# after a long outage at the price of not recording every missed slot.
MAX_CATCHUP_SLOTS = 100
# How often beat compares schedules with what live workers serve, and how
# long after it starts leading before the first look: workers started with
# beat (runplatform, a compose up) publish their presence a few seconds
# after it, and a flag must mean a real problem.
PRESENCE_CHECK_SECONDS = 60.0
PRESENCE_GRACE_SECONDS = 60.0
# Errors that mean "the database, the broker or the lease is unavailable":
# the whole tick is retried later. Anything else raised while claiming is
# blamed on the rows being claimed (see BeatEngine._claim).
OUTAGES = (OperationalError, InterfaceError, BrokerError, OSError, LeaseLost)
# How a quarantine's reason starts in the policy's ``problem``.
QUARANTINE_PREFIX = "not scheduled: "
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


def plan_due_slots(
    entry: Entry, slots: list[datetime], now: datetime, pause: Pause | None = None
) -> list[PlannedSlot]:
    """Decide, per the catch-up policy, which due slots run and which are missed.

    ``slots`` are due (≤ now), oldest first. Slots the schedule's ``pause``
    covers are skipped with its message, whatever the catch-up policy says
    (catch-up is for downtime, not for pauses), and play no part in choosing
    what runs. Of the rest, a slot older than the starting deadline is always
    missed; ``latest`` runs the newest, ``all`` runs each, ``none`` runs the
    newest only if it is on time.
    """
    if pause is not None:
        skipped = [PlannedSlot(entry, s, SKIPPED, pause.message) for s in slots if pause.covers(s, now)]
        if skipped:
            rest = [s for s in slots if not pause.covers(s, now)]
            planned = [*skipped, *plan_due_slots(entry, rest, now)] if rest else skipped
            return sorted(planned, key=lambda p: p.slot)
    deadline = entry.live.starting_deadline
    catchup = entry.live.catchup
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
        self.next_presence_check = time.monotonic() + PRESENCE_GRACE_SECONDS
        self.quarantined: dict[int, str] = {}  # task id -> why beat cannot run it
        # task id -> its pause, for paused schedules only: the unpaused (nearly
        # all) cost nothing, and a due entry pays one lookup while any is paused.
        self.pauses: dict[int, Pause] = {}
        # (task id, reason or None to clear) to write once the rows being
        # streamed are read: the streaming connection takes no other query.
        self.problem_writes: list[tuple[int, str | None]] = []
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
        self.pauses = {}
        self.retired_in_heap = 0
        self.reconciling = None
        # Building 100,000 long-lived entries triggers many useless collections
        # (a tenth of the load); collect once at the end instead.
        gc.disable()
        try:
            seen_quarantined = set()
            for row in fetch_rows():
                self._place(row, now, loading=True)
                if row[0] in self.quarantined:
                    seen_quarantined.add(row[0])
        finally:
            gc.enable()
        for task_id in set(self.quarantined) - seen_quarantined:
            self._release(task_id)  # disabled or deleted since: nothing to report
        self._write_problems()
        heapq.heapify(self.heap)  # _install appends while loading; O(N) beats N pushes
        self.loaded = True
        self.next_poll = time.monotonic() + self.change_poll_every()
        self.next_reconcile = time.monotonic() + self.reconcile_interval
        logger.info("beat engine loaded %d schedules", len(self.entries))
        return len(self.entries)

    def _place(
        self, row: tuple, now: datetime, *, loading: bool = False, previous: Entry | None = None
    ) -> bool:
        """Build ``row``'s entry and put it in place, or quarantine the schedule; True if placed.

        ``loading``: a full load, resuming after the last claimed slot (or the
        schedule's creation) so downtime is caught up; otherwise an edit.
        """
        task_id = row[0]
        try:
            entry, last_slot, created = self.factory.build(row)
            # A load may catch up slots since the last claimed one: a pause that
            # ended meanwhile still covers those within it.
            pause = pause_of(row, min(last_slot or created, now) if loading else now)
            if pause is not None:
                self.pauses[task_id] = pause
            self._install(
                entry,
                now,
                last_slot=last_slot,
                resume_after=(last_slot or created) if loading else None,
                previous=previous,
            )
        except Exception as exc:  # noqa: BLE001 (one row's data, whatever the error: guarantee 8)
            self._quarantine(task_id, exc)
            return False
        if task_id in self.quarantined:
            self._release(task_id)
        return True

    def _quarantine(self, task_id: int, exc: BaseException) -> None:
        """Stop firing ``task_id``: drop its entry, record why, report it once.

        The ``problem`` UPDATE is guarded (``problem`` differs from the new
        reason), so a reason already recorded, by this beat before a reload
        or by another beat before a failover, is not reported again.
        """
        self._remove(task_id)  # callers holding a popped entry cleared its pending slot first
        reason = str(exc) if isinstance(exc, UnusableSchedule) else f"{type(exc).__name__}: {exc}"
        reason = f"{QUARANTINE_PREFIX}{reason}".replace("\x00", "\\x00")[:500]  # text columns refuse NUL
        self.quarantined[task_id] = reason
        self.problem_writes.append((task_id, reason))

    def _release(self, task_id: int) -> None:
        """Forget a quarantine (the row builds again, or is gone) and clear the problem it recorded."""
        reason = self.quarantined.pop(task_id, None)
        if reason is not None:
            self.problem_writes.append((task_id, None))

    def _write_problems(self) -> None:
        """Record quarantines and releases; report each newly recorded reason once (ERROR, Sentry)."""
        writes, self.problem_writes = self.problem_writes, []
        for task_id, reason in writes:
            policies = SchedulePolicy.objects.filter(task_id=task_id)
            if reason is None:
                cleared = policies.filter(problem__startswith=QUARANTINE_PREFIX).update(problem="")
                if cleared:
                    logger.warning("beat: schedule %s is no longer quarantined", task_id)
                continue
            if policies.exclude(problem=reason).update(problem=reason):
                with sentry_sdk.new_scope() as scope:
                    scope.set_tag("schedule", str(task_id))
                    scope.fingerprint = ["quarantined-schedule", str(task_id)]
                    logger.error("beat: schedule %s quarantined, %s", task_id, reason)

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
        if entry.live.one_off and last_slot is not None:
            return
        slot = entry.next_slot(after)
        if slot is None:
            clocked = entry.live.clocked
            if clocked is not None and last_slot is None and entry.live.expires is None:
                # Never silence: a one-off that can no longer fire and never ran is a problem.
                raise UnusableSchedule(
                    f"its one-off time {clocked.isoformat()} passed before it was scheduled; "
                    "nothing will run. Set a time in the future."
                )
            return
        entry.wait_for(slot)
        if self.loaded:
            heapq.heappush(self.heap, entry)
        else:
            self.heap.append(entry)

    def _remove(self, task_id: int) -> Entry | None:
        """Forget ``task_id``'s entry; it is skipped when it comes off the heap."""
        entry = self.entries.pop(task_id, None)
        self.pauses.pop(task_id, None)
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

    def _refresh_defaults(self) -> bool:
        """Re-read the catalog's defaults; new ones mean new definitions (cached ones embed them)."""
        defaults = job_defaults()
        if defaults != self.factory.defaults:
            self.factory = EntryFactory(defaults)
            return True
        return False

    def _rebuild(self, task_ids: set[int], now: datetime) -> None:
        """Re-read ``task_ids`` from the database; drop those no longer enabled."""
        self._refresh_defaults()
        ensure_policies(now, task_ids)
        found: set[int] = set()
        for row in fetch_rows(task_ids):  # streamed: 10,000 rows at once were 10 MB of peak
            found.add(row[0])
            previous = self._remove(row[0])
            self._place(row, now, previous=previous)
        for task_id in task_ids - found:
            self._remove(task_id)
            self._release(task_id)
        self._write_problems()
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
            try:
                same = (
                    entry is not None
                    and self.factory.matches(entry, row)
                    and pause_of(row, now) == self._pause_holding(row[0], now)
                )
            except Exception:  # noqa: BLE001 (an unusable row differs; the rebuild quarantines it)
                same = False
            if not same:
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
        pauses = self.pauses
        while heap and heap[0].heap_due <= now:
            entry = heapq.heappop(heap)
            if entry.retired:
                self.retired_in_heap -= 1
                continue  # edited or deleted since this item was pushed
            try:
                slots, following = self._due_slots(entry, now)
                pause = pauses.get(entry.task_id) if pauses else None
                due = plan_due_slots(entry, slots, now, pause)
                if pause is not None and pause.over(now):
                    del pauses[entry.task_id]  # ended by itself: its later slots run
            except Exception as exc:  # noqa: BLE001 (this schedule's data; the others go on)
                entry.wait_for(None)
                self._quarantine(entry.task_id, exc)
                continue
            planned.extend(due)
            if following is not None and not entry.live.one_off:
                entry.wait_for(following)
                heapq.heappush(heap, entry)
            else:
                entry.wait_for(None)
        return planned

    def _pause_holding(self, task_id: int, now: datetime) -> Pause | None:
        """``task_id``'s pause if it can still cover a slot claimed from ``now`` on."""
        pause = self.pauses.get(task_id)
        return None if pause is None or pause.over(now) else pause

    @staticmethod
    def _due_slots(entry: Entry, now: datetime) -> tuple[list[datetime], datetime | None]:
        """The entry's due slots (oldest first, bounded) and the slot after them."""
        slot = entry.pending
        assert slot is not None  # it came off the heap, so it waits for a slot
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
        return slots, following

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
            if self._refresh_defaults() and self.quarantined:
                self._rebuild(set(self.quarantined), now or timezone.now())  # a job may exist now
            flag_unserved(self.entries.values(), now)
            self.next_presence_check = clock + PRESENCE_CHECK_SECONDS
        if self.outbox_dirty or clock >= self.next_outbox_sweep:
            # Dirty: our own publish failed, retry everything. Otherwise a sweep
            # for batches another process left (a dispatch whose broker call
            # failed, a crashed beat), old enough not to be in flight.
            self.flush_outbox(older_than=None if self.outbox_dirty else OUTBOX_SWEEP_AGE)
            self.next_outbox_sweep = clock + OUTBOX_SWEEP_SECONDS
        now = now or timezone.now()
        if self.heap and self.heap[0].heap_due <= now:
            self.dispatch(self.collect_due(now), now)
        if self.problem_writes:  # schedules quarantined while collecting or claiming
            self._write_problems()
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
            for claim in self._claim(planned[start : start + CLAIM_BATCH], now):
                claimed_count += len(claim.runs)
                sent += self._publish(claim)
        logger.info(
            "beat: %d slots due, %d claimed, %d published in %.3f s",
            len(planned),
            claimed_count,
            sent,
            time.monotonic() - started,
        )
        return sent

    def _claim(self, batch: list[PlannedSlot], now: datetime) -> list[Claim]:
        """Claim ``batch`` in one transaction; if the database refuses it, schedule by schedule.

        An outage (or a lost lease) propagates: the tick is retried. Any other
        error is blamed on the rows: the batch is claimed again one schedule
        per transaction, and a schedule whose own claim still fails is
        quarantined, so its data cannot block the rest of the burst.
        """
        try:
            return [dispatch.claim_slots(batch, fence=self.fence, now=now)]
        except OUTAGES:
            raise
        except Exception as exc:  # noqa: BLE001 (find the row to blame below)
            logger.warning(
                "beat: a claim of %d slots failed (%s); claiming schedule by schedule", len(batch), exc
            )
        by_schedule: dict[int, list[PlannedSlot]] = {}
        for planned in batch:
            by_schedule.setdefault(planned.entry.task_id, []).append(planned)
        claims = []
        for task_id, slots in by_schedule.items():
            try:
                claims.append(dispatch.claim_slots(slots, fence=self.fence, now=now))
            except OUTAGES:
                raise
            except Exception as exc:  # noqa: BLE001 (this schedule's data)
                self._quarantine(task_id, exc)
        return claims

    def _publish(self, claim: Claim) -> int:
        """Revoke what the claim replaced, then publish its runs; return how many were sent."""
        try:
            # Before publishing: the old run stops before its replacement can start.
            dispatch.revoke_replaced(self.app, claim.to_revoke)
        except Exception as exc:  # noqa: BLE001 (the runs are recorded replaced; say so loudly)
            logger.error("beat: could not revoke %d replaced runs: %s", len(claim.to_revoke), exc)
        try:
            return send_batch(self.app, claim.runs, claim.outbox_batch)
        except Exception as exc:  # noqa: BLE001 (any broker error: keep them in the outbox)
            self.outbox_dirty = True
            logger.error(
                "beat: claimed %d runs but could not publish (%s); they wait in the outbox",
                len(claim.runs),
                exc,
            )
            return 0

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
            wait = min(wait, (self.heap[0].heap_due - now).total_seconds())
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
                    "job": entry.live.job,
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
