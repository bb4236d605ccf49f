"""Liveness for load balancers and Docker's HEALTHCHECK.

``/healthz`` needs no login, so its body says only ``ok`` or ``failing`` per
dependency; what failed and why (host, port, the driver's error) goes to the
log at WARNING, for the operator.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from settings.celery_app import app

logger = logging.getLogger(__name__)


def database_ok() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return False, str(exc)
    return True, "ok"


def broker_ok(timeout: int = 2) -> tuple[bool, str]:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 (any broker failure means "down")
        return False, str(exc)
    return True, "ok"


@never_cache
def healthz(request):
    """200 when the database answers ``SELECT 1`` and the broker accepts a connection, else 503."""
    checks = {"database": database_ok(), "broker": broker_ok()}
    for name, (ok, detail) in checks.items():
        if not ok:
            logger.warning("healthz: %s failing: %s", name, detail)
    healthy = all(ok for ok, _ in checks.values())
    body = {"status": "ok" if healthy else "unhealthy"}
    body.update({name: "ok" if ok else "failing" for name, (ok, _) in checks.items()})
    return JsonResponse(body, status=200 if healthy else 503)
