"""The Celery beat scheduler class (``CELERY_BEAT_SCHEDULER``).

Replaces django-celery-beat's ``DatabaseScheduler`` while reading the same
models, so existing data and the admin keep working. Database outages do not
crash beat: the tick logs the error once per outage, drops the connection and
tries again on the next loop.
"""

from __future__ import annotations

import logging

from celery.beat import Scheduler
from django.db import DatabaseError, InterfaceError, close_old_connections, connections
from kombu.exceptions import OperationalError as BrokerError

from scheduler.beat import dispatch
from scheduler.beat.engine import BeatEngine

logger = logging.getLogger(__name__)


class DatabaseBeat(Scheduler):
    """Celery ``Scheduler`` driven by :class:`BeatEngine`."""

    def __init__(self, *args, **kwargs) -> None:
        self.engine: BeatEngine | None = None
        self._failing = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.engine = BeatEngine(self.app, max_sleep=float(self.max_interval or 1))
        try:
            republished = dispatch.publish_outbox(self.app)
            if republished:
                logger.warning("beat: published %d claimed runs left unpublished", republished)
            self.engine.load()
        except (DatabaseError, InterfaceError, BrokerError) as exc:
            self._note_failure(exc)

    @property
    def schedule(self) -> dict:
        return {}

    def tick(self, *args, **kwargs) -> float:
        assert self.engine is not None
        close_old_connections()
        try:
            if not self.engine.entries and not self.engine.loaded_at:
                dispatch.publish_outbox(self.app)
                self.engine.load()
            wait = self.engine.tick()
        except (DatabaseError, InterfaceError, BrokerError) as exc:
            self._note_failure(exc)
            return float(self.max_interval or 1)
        if self._failing:
            logger.warning("beat: recovered; dispatching again")
            self._failing = False
        return wait

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            logger.error("beat: cannot reach the database or broker (%s); retrying", exc)
            self._failing = True
        for conn in connections.all():
            conn.close_if_unusable_or_obsolete()

    def sync(self) -> None:  # state lives in the database, nothing to flush
        pass

    def close(self) -> None:
        connections.close_all()

    @property
    def info(self) -> str:
        count = len(self.engine.entries) if self.engine else 0
        return f"    . db -> {count} schedules (scheduler.beat)"
