"""Concurrency places: at most ``limit`` holders of one key at once, across every worker.

A job with ``max_concurrency=N`` (``jobs.framework``) takes one of its
name's N places before its run starts and gives it back when the run ends.
A place is a ``ConcurrencyLease`` row naming its holder (the run id, or a
report chunk's task id), the worker holding it, and when it expires.

Guarantees:

- **Never more than ``limit`` live leases of a key.** ``acquire`` counts and
  inserts in one transaction, after locking the key's ``ConcurrencyGate``
  row with an UPDATE (a row lock on PostgreSQL, the write lock on SQLite),
  so two acquirers of one key, on any workers, decide one after the other.
- **A killed worker's places come back.** A lease lives ``lease_ttl_seconds()``
  (three presence refreshes, at least 3 s); the worker's presence thread
  renews its leases (``renew``) at every refresh. A SIGKILLed worker renews
  nothing: its leases expire, and the next ``acquire`` of the key deletes them.
  The other side of this: a live worker whose presence thread stalls for
  three refreshes loses its places too (as it would look dead to everything
  else).
- **One place per holder.** ``holder`` is unique: asking again for a place
  the holder already holds (a redelivered copy of a run's message, the next
  attempt of a run whose worker died) answers ``granted`` with that same
  place (``new=False``) and extends it, never a second one. The caller must
  then not release it unless it turns out to be the holder (the framework
  releases only a place its own call inserted when the run does not start).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from jobs.models import ConcurrencyGate, ConcurrencyLease

MIN_LEASE_TTL_SECONDS = 3


def lease_ttl_seconds() -> int:
    """How long a lease lives without renewal: three presence refreshes of its worker, at least 3 s."""
    return max(MIN_LEASE_TTL_SECONDS, 3 * int(settings.WORKER_PRESENCE_REFRESH_SECONDS))


@dataclass(frozen=True)
class Admission:
    """What ``acquire`` decided; true when the holder has a place.

    ``new``: this call inserted the place (the caller owns it and releases
    it if it does not use it); ``False`` with ``granted``: the holder already
    held it. ``held``: live leases of the key when the decision was made,
    this one included when granted.
    """

    granted: bool
    new: bool
    held: int

    def __bool__(self) -> bool:
        return self.granted


def acquire(key: str, holder: str, limit: int, worker: str, *, now: datetime | None = None) -> Admission:
    """Take one of ``key``'s ``limit`` places for ``holder`` on ``worker``, if one is free.

    In one transaction: make sure the key's gate row exists, lock it
    (UPDATE), delete the key's expired leases, then count the live ones and
    insert ``holder``'s if fewer than ``limit``. A lease ``holder`` already
    has is extended and granted (``new=False``); see the module docstring.
    ``limit`` below 1 raises ``ValueError``.
    """
    if limit < 1:
        raise ValueError(f"a concurrency limit must be 1 or more, got {limit}")
    now = now or timezone.now()
    expires_at = now + timedelta(seconds=lease_ttl_seconds())
    with transaction.atomic():
        _lock_gate(key, now)
        # The key's expired leases, and an expired one of this holder under
        # another key (holder is unique: it would make the insert fail).
        ConcurrencyLease.objects.filter(Q(key=key) | Q(holder=holder), expires_at__lt=now).delete()
        leases = ConcurrencyLease.objects.filter(key=key)
        counts = leases.aggregate(held=Count("pk"), mine=Count("pk", filter=Q(holder=holder)))
        held, mine = counts["held"], counts["mine"]
        if mine:
            leases.filter(holder=holder).update(expires_at=expires_at)
            return Admission(granted=True, new=False, held=held)
        if held >= limit:
            return Admission(granted=False, new=False, held=held)
        ConcurrencyLease.objects.create(
            key=key, holder=holder, worker=worker[:255], acquired_at=now, expires_at=expires_at
        )
        return Admission(granted=True, new=True, held=held + 1)


def _lock_gate(key: str, now: datetime) -> None:
    """Lock the key's gate row for the rest of the transaction, creating it the first time.

    The UPDATE is the lock. A key seen for the first time has no row: it is
    inserted with ``ON CONFLICT DO NOTHING`` (two first acquirers at once
    both succeed; the second waits for the first's commit), then locked.
    """
    if ConcurrencyGate.objects.filter(key=key).update(touched_at=now):
        return
    ConcurrencyGate.objects.bulk_create([ConcurrencyGate(key=key, touched_at=now)], ignore_conflicts=True)
    ConcurrencyGate.objects.filter(key=key).update(touched_at=now)


def release(holder: str) -> bool:
    """Give back ``holder``'s place, whatever its key and worker; ``True`` if there was one.

    Idempotent: a second release, or one after the lease expired and was
    deleted, changes nothing.
    """
    deleted, _ = ConcurrencyLease.objects.filter(holder=holder).delete()
    return bool(deleted)


def renew(worker: str, *, now: datetime | None = None) -> int:
    """Extend every lease ``worker`` holds by a full TTL from now; return how many.

    Called by the worker's presence thread (``jobs.workers``) at every
    refresh. A lease that already expired is renewed too if no acquire
    deleted it yet: its holder is alive, as this call proves.
    """
    now = now or timezone.now()
    expires_at = now + timedelta(seconds=lease_ttl_seconds())
    return ConcurrencyLease.objects.filter(worker=worker[:255]).update(expires_at=expires_at)


def adopt(holder: str, worker: str, *, now: datetime | None = None) -> bool:
    """Move ``holder``'s place to ``worker`` (the attempt that now runs it) and extend it.

    For a place ``acquire`` found already held (``new=False``) once the run
    did start here: the previous attempt's worker is dead, so only this
    worker renews it from now on. ``False``: no such lease (it was released).
    """
    now = now or timezone.now()
    expires_at = now + timedelta(seconds=lease_ttl_seconds())
    return bool(
        ConcurrencyLease.objects.filter(holder=holder).update(worker=worker[:255], expires_at=expires_at)
    )


def live_holders(key: str, *, now: datetime | None = None) -> int:
    """How many live leases ``key`` has now (for pages and tests; a read, no lock)."""
    now = now or timezone.now()
    return ConcurrencyLease.objects.filter(key=key, expires_at__gte=now).count()
