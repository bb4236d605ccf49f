"""The Celery beat scheduler class (``CELERY_BEAT_SCHEDULER``).

Replaces django-celery-beat's ``DatabaseScheduler`` while reading the same
models, so existing data and the admin keep working. Any number of beat
processes may run: one leads under the database lease (``beat.lease``) and
dispatches; the others stand by and take over when the lease expires.

Outages do not crash beat: a database or broker error is logged once per
outage, the connection is dropped, and the next loop tries again. Nor does
bad data: the engine quarantines a schedule it cannot evaluate, and any
other error in a tick is logged (once) and the engine rebuilt, never raised
out of beat. A leader
that loses its lease stops dispatching at once and drops its in-memory state
(the database has all of it).
"""

from __future__ import annotations

import logging
import time

from celery.beat import ScheduleEntry, Scheduler
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connections
from kombu.exceptions import OperationalError as BrokerError

from jobs.publishing import publish_outbox, warm_up_broker
from scheduler.beat.engine import BeatEngine
from scheduler.beat.lease import Lease, LeaseLost

logger = logging.getLogger(__name__)

OUTAGES = (DatabaseError, InterfaceError, BrokerError, OSError)

# Django's connection housekeeping (close a connection past CONN_MAX_AGE or
# broken) runs on this clock, not every tick: it cost more than the rest of an
# idle tick. A failed tick does it at once (``_note_failure``) and makes the
# next tick do it again, so an outage is still handled on the next tick.
HOUSEKEEPING_SECONDS = 5.0


class DatabaseBeat(Scheduler):
    """Celery ``Scheduler`` driven by :class:`BeatEngine` under a leader lease."""

    def __init__(self, *args, **kwargs) -> None:
        self.engine: BeatEngine | None = None
        self.lease = Lease(ttl=settings.BEAT_LEASE_SECONDS)
        self._failing = False
        self._last_unexpected = ""
        self._next_lease_check = 0.0
        self._next_housekeeping = 0.0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        logger.info("beat %s starting as a standby", self.lease.holder)

    # Celery's own ``schedule`` is a property too; celery-types declares a plain
    # attribute, so a read-only one reads as an override error.
    @property
    def schedule(self) -> dict[str, ScheduleEntry]:  # type: ignore[override]
        """No Celery entries: the engine keeps the schedules."""
        return {}

    def _new_engine(self) -> BeatEngine:
        return BeatEngine(
            self.app,
            fence=self.lease.fence,
            max_sleep=float(self.max_interval or 1),
            reconcile_interval=float(settings.BEAT_RECONCILE_SECONDS),
        )

    def tick(self, *args, **kwargs) -> float:
        clock = time.monotonic()
        if clock >= self._next_housekeeping:
            close_old_connections()
            self._next_housekeeping = clock + HOUSEKEEPING_SECONDS
        try:
            wait = self._tick()
        except LeaseLost as exc:
            self._step_down(str(exc))
            return 0.0
        except OUTAGES as exc:
            self._note_failure(exc)
            self._next_housekeeping = 0.0
            if self.engine is not None:
                # Slots popped for a claim that failed exist only in memory:
                # rebuild from the database (last_slot_at did not advance) on
                # recovery, so catch-up records or runs them instead of losing them.
                self.engine.loaded = False
            return float(self.max_interval or 1)
        except Exception as exc:  # noqa: BLE001 (guarantee 8: no schedule's data makes beat exit)
            # Per-schedule errors are quarantined inside the engine; this is the
            # net under a bug of our own. Rebuild from the database and go on.
            self._note_unexpected(exc)
            self._next_housekeeping = 0.0
            if self.engine is not None:
                self.engine.loaded = False
            return float(self.max_interval or 1)
        self._last_unexpected = ""
        if self._failing:
            logger.warning("beat: recovered; carrying on")
            self._failing = False
        return wait

    def _tick(self) -> float:
        clock = time.monotonic()
        if clock >= self._next_lease_check:
            was_leader = self.engine is not None
            leads = self.lease.acquire_or_renew(status=self.engine.status() if self.engine else None)
            self._next_lease_check = clock + self.lease.renew_every
            if leads and not was_leader:
                logger.warning("beat %s now LEADS (fencing token %s)", self.lease.holder, self.lease.token)
                self.engine = self._new_engine()
                warm_up_broker(self.app)
                republished = publish_outbox(self.app)
                if republished:
                    logger.warning("beat: published %d claimed runs left unpublished", republished)
                self.engine.load()
            elif not leads and was_leader:
                self._step_down("the lease was taken over")
        if self.engine is None:
            return min(self.lease.renew_every, max(0.0, self._next_lease_check - time.monotonic()))
        wait = self.engine.tick()
        return min(wait, max(0.0, self._next_lease_check - time.monotonic()))

    def _step_down(self, why: str) -> None:
        if self.engine is not None:
            # A warning, not an error: stepping down is the failover working.
            logger.warning("beat %s stops dispatching: %s", self.lease.holder, why)
            self.engine.close()
        self.engine = None
        self.lease.token = None

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            logger.error("beat: cannot reach the database or broker (%s); retrying", exc)
            self._failing = True
        for conn in connections.all():
            conn.close_if_unusable_or_obsolete()

    def _note_unexpected(self, exc: Exception) -> None:
        """Log an unexpected tick error with its traceback, once until a tick succeeds."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_unexpected:
            logger.exception("beat: unexpected error in a tick (%s); rebuilding from the database", text)
            self._last_unexpected = text

    def sync(self) -> None:  # state lives in the database, nothing to flush
        pass

    def close(self) -> None:
        """On shutdown: send what a stop interrupted after commit, then hand the lease over."""
        try:
            if self.engine is not None:
                publish_outbox(self.app)
                self.engine.close()
            self.lease.release()
        except OUTAGES as exc:
            logger.warning("beat: could not flush the outbox or release the lease on shutdown: %s", exc)
        connections.close_all()

    @property
    def info(self) -> str:
        return f"    . leader lease: {settings.BEAT_LEASE_SECONDS} s ({self.lease.holder})"
