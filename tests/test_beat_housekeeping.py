"""Beat's database connection housekeeping runs on a clock, not on every idle tick."""

from __future__ import annotations

import time

import pytest
from django.db import connection

import scheduler.beat.scheduler
from scheduler.beat.scheduler import DatabaseBeat
from scheduler.celery import app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def beat(catalog):
    sched = DatabaseBeat(app=app)
    deadline = time.monotonic() + 30
    while sched.engine is None or not sched.engine.loaded:
        assert time.monotonic() < deadline, "the in-process beat never led"
        sched.tick()
    yield sched
    sched.close()


def idle_ticks(sched: DatabaseBeat, n: int = 20) -> None:
    for _ in range(n):
        sched.tick()


def test_it_keeps_its_database_connection_between_idle_ticks(beat):
    connection.ensure_connection()
    kept = connection.connection

    idle_ticks(beat)

    assert connection.connection is kept


def test_it_closes_a_connection_past_its_age_on_its_housekeeping_clock(beat, monkeypatch):
    connection.ensure_connection()
    old = connection.connection
    connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had passed
    idle_ticks(beat)
    assert connection.connection is old  # not yet: the clock is not due

    monkeypatch.setattr(scheduler.beat.scheduler, "HOUSEKEEPING_SECONDS", 0.0)
    beat._next_housekeeping = 0.0
    idle_ticks(beat, 1)
    connection.ensure_connection()

    assert connection.connection is not old
