"""A worker keeps its database connection across tasks, and never starts a run on a dead one.

Celery's Django fix-up would close the connection after every task; with
``CELERY_DB_REUSE_MAX`` it is kept, and ``jobs.framework`` applies Django's
own rules at each task's edges plus a ping after an idle spell, so a
connection the server dropped meanwhile (a restart, an idle timeout) is
replaced before a run's first statement would fail on it.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection, connections

from jobs.framework import close_dead_connections
from settings.celery_app import app


def test_it_tells_celerys_fixup_to_keep_the_connection_on_postgresql():
    # The fix-up reads this name from the app's configuration (celery/fixups/django.py).
    assert app.conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        assert settings.CELERY_DB_REUSE_MAX is None
    else:
        assert settings.CELERY_DB_REUSE_MAX >= 100


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_live_connection():
    connection.ensure_connection()
    kept = connection.connection

    assert close_dead_connections() == 0
    assert connection.connection is kept


@pytest.mark.django_db(transaction=True)
def test_it_replaces_a_connection_the_server_dropped_while_the_worker_was_idle():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    connection.ensure_connection()
    backend_pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
    finally:
        other.close()

    assert close_dead_connections() == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != backend_pid
