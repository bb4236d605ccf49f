"""``GET health``: the database, the broker and beat's leader, each ok or failing.

Unlike ``/healthz`` (no login, for load balancers) it needs a token, so it
may say who leads beat and until when its lease runs. 200 when all three
are ok, 503 otherwise; what failed and why goes to the log (the body says
only ``failing``, as ``/healthz`` does).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from django.db import DatabaseError
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema, Status

from api.errors import responses
from scheduler.models import BeatLease
from scheduler.views import broker_ok, database_ok

logger = logging.getLogger(__name__)
router = Router(tags=["health"])

BEAT_LEASE = "beat"  # scheduler.beat.lease.Lease's default name


class BeatOut(Schema):
    status: Literal["ok", "failing"]
    leader: str | None
    lease_expires_at: datetime | None


class HealthOut(Schema):
    status: Literal["ok", "unhealthy"]
    database: Literal["ok", "failing"]
    broker: Literal["ok", "failing"]
    beat: BeatOut


def beat_health() -> dict[str, Any]:
    """ok while a leader holds an unexpired lease."""
    try:
        lease = BeatLease.objects.filter(name=BEAT_LEASE).first()
    except DatabaseError as exc:
        logger.warning("health: cannot read beat's lease: %s", exc)
        lease = None
    alive = lease is not None and bool(lease.holder) and lease.expires_at > timezone.now()
    if not alive:
        logger.warning("health: beat has no live leader (%s)", lease)
    return {
        "status": "ok" if alive else "failing",
        "leader": lease.holder or None if lease is not None else None,
        "lease_expires_at": lease.expires_at if lease is not None else None,
    }


@router.get("/health", response={200: HealthOut, 503: HealthOut, **responses()}, url_name="health")
def health(request: HttpRequest) -> Any:
    """The database answers, the broker takes a connection, a beat process leads."""
    checks = {"database": database_ok(), "broker": broker_ok()}
    for name, (ok, detail) in checks.items():
        if not ok:
            logger.warning("health: %s failing: %s", name, detail)
    beat = (
        beat_health()
        if checks["database"][0]
        else {"status": "failing", "leader": None, "lease_expires_at": None}
    )
    healthy = all(ok for ok, _ in checks.values()) and beat["status"] == "ok"
    body = {name: "ok" if ok else "failing" for name, (ok, _) in checks.items()}
    return Status(200 if healthy else 503, {"status": "ok" if healthy else "unhealthy", **body, "beat": beat})
