"""Liveness for load balancers and Docker's HEALTHCHECK."""

from __future__ import annotations

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from scheduler.celery import app


def database_ok() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return False, str(exc)
    return True, "ok"


def broker_ok(timeout: float = 2.0) -> tuple[bool, str]:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 (any broker failure means "down")
        return False, str(exc)
    return True, "ok"


@never_cache
def healthz(request):
    """200 when the database answers ``SELECT 1`` and the broker accepts a connection."""
    db_ok, db_detail = database_ok()
    broker_up, broker_detail = broker_ok()
    healthy = db_ok and broker_up
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "database": db_detail, "broker": broker_detail},
        status=200 if healthy else 503,
    )
