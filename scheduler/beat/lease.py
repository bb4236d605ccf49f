"""Leader election for beat: a lease row in the database, with a fencing token.

Why the database and not Redis: the lease must fence the slot claim, and the
claim is a database transaction. ``fence()`` runs inside that transaction and
matches on (holder, token, unexpired), so a leader that lost its lease (a long
GC pause, SIGSTOP, a partition) cannot claim one more slot: its transaction
updates zero lease rows and rolls back. A Redis lease could not make that
check atomic with the claim. The database is also already required; a Redis
outage then stops publishing but not leadership, and the outbox publishes
what was claimed once Redis is back.

Timing: the leader renews every ``ttl / 3``; a standby tries every ``ttl / 3``
too, so after the leader dies (SIGKILL) a standby leads within
``ttl + ttl / 3`` (< 2 × ttl). Correctness never depends on clocks (the
token fences); only the takeover time does.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from scheduler.models import BeatLease

logger = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This process no longer holds the lease: it must stop dispatching at once."""


def process_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    def __init__(self, name: str = "beat", ttl: float = 10.0, holder: str | None = None) -> None:
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.holder = holder or process_identity()
        self.token: int | None = None

    @property
    def renew_every(self) -> float:
        return self.ttl.total_seconds() / 3

    @property
    def held(self) -> bool:
        return self.token is not None

    def _ensure_row(self, now: datetime) -> None:
        if BeatLease.objects.filter(name=self.name).exists():
            return
        try:
            with transaction.atomic():
                BeatLease.objects.create(name=self.name, holder="", token=0, expires_at=now)
        except IntegrityError:
            pass  # another beat created it first

    def acquire_or_renew(self, now: datetime | None = None, status: dict | None = None) -> bool:
        """Renew our lease, or take it if it expired; return whether we hold it.

        Taking it increments the token. Losing it (another process took it after
        it expired) sets ``token`` to ``None``.
        """
        now = now or timezone.now()
        expires = now + self.ttl
        if self.token is not None:
            fields: dict[str, object] = {"expires_at": expires, "renewed_at": now}
            if status is not None:
                fields["status"] = status
            renewed = BeatLease.objects.filter(name=self.name, holder=self.holder, token=self.token).update(
                **fields
            )
            if renewed:
                return True
            logger.warning("beat %s lost the lease (token %s)", self.holder, self.token)
            self.token = None
        self._ensure_row(now)
        taken = BeatLease.objects.filter(Q(expires_at__lt=now) | Q(holder=""), name=self.name).update(
            holder=self.holder, token=F("token") + 1, expires_at=expires, renewed_at=now
        )
        if not taken:
            return False
        self.token = (
            BeatLease.objects.filter(name=self.name, holder=self.holder)
            .values_list("token", flat=True)
            .first()
        )
        return self.token is not None

    def fence(self, now: datetime | None = None) -> None:
        """Inside a claim's transaction: raise ``LeaseLost`` unless we still lead.

        Passing the check is proof of life, so it also extends the lease.
        """
        now = now or timezone.now()
        if self.token is None:
            raise LeaseLost(f"{self.holder} does not hold the lease")
        still_ours = BeatLease.objects.filter(
            name=self.name, holder=self.holder, token=self.token, expires_at__gt=now
        ).update(renewed_at=now, expires_at=now + self.ttl)
        if not still_ours:
            self.token = None
            raise LeaseLost(f"{self.holder} lost the lease before claiming")

    def release(self) -> None:
        """Give the lease up (clean shutdown), so a standby need not wait for expiry."""
        if self.token is None:
            return
        BeatLease.objects.filter(name=self.name, holder=self.holder, token=self.token).update(
            holder="", expires_at=timezone.now()
        )
        self.token = None


def current_leader(name: str = "beat") -> BeatLease | None:
    return BeatLease.objects.filter(name=name).first()
