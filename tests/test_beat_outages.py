"""Beat through outages: Redis stopped for 30 s, the database unreachable for 30 s.

Real beat subprocesses. Redis is a server this test starts on its own port
(append-only, so it keeps its queue across the restart): Redis as the broker
only. The database outage is a TCP proxy in front of the test database that
the test cuts, on either broker.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import JobRun, OutboxBatch, RunStatus
from scheduler.embedded_redis import start_embedded_redis
from tests.support.broker import app_broker, redis_broker_only
from tests.support.processes import free_port, start_beat
from tests.support.queues import empty_queues, queued_ids
from tests.support.schedules import assert_no_holes, make_interval_schedules, slots_by_schedule
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OUTAGE_SECONDS = 30
EVERY = 5


def start_redis(port: int, data_dir):
    return start_embedded_redis(port, data_dir, append_only=True)


def floor_to(seconds: int):
    now = timezone.now()
    return now - timedelta(seconds=now.timestamp() % seconds)


@redis_broker_only(
    "Redis only: stops the Redis broker this test starts (the RabbitMQ is the machine's, never "
    "stopped); on RabbitMQ, tests/test_rabbitmq.py sends what the outbox kept while the broker was down, "
    "and tests/test_dispatch.py publishes over a kept connection the broker closed",
)
def test_beat_survives_a_redis_outage_and_publishes_every_claimed_slot(
    service_env, logs_dir, tmp_path, catalog
):
    port = free_port()
    broker = start_redis(port, tmp_path)
    queue = "outage-redis"
    # catchup=all: a beat slow to start on a busy machine runs the slots it
    # found due instead of recording the older ones missed (that is "latest").
    ids = make_interval_schedules(50, EVERY, floor_to(EVERY), queue, prefix="redis-outage", catchup="all")
    env = {**service_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    beat = start_beat(env, logs_dir, "redis-outage")
    try:
        beat.wait_for_log("beat engine loaded", timeout=60)
        time.sleep(EVERY * 2)
        broker.terminate()
        broker.wait(timeout=10)
        time.sleep(OUTAGE_SECONDS)
        assert beat.process.poll() is None, "beat crashed while Redis was down"
        broker = start_redis(port, tmp_path)
        time.sleep(EVERY * 3)
        assert beat.process.poll() is None
    finally:
        beat.stop()
        with app_broker(f"redis://127.0.0.1:{port}/0"):
            published = queued_ids(queue)
        broker.terminate()
        broker.wait(timeout=10)

    found = slots_by_schedule(ids)
    first = min(min(s) for s in found.values())
    last = max(max(s) for s in found.values())
    assert last - first >= timedelta(seconds=OUTAGE_SECONDS + EVERY * 4)
    assert_no_holes(ids, EVERY, first, last)
    runs = JobRun.objects.filter(schedule_id__in=ids)
    # Beat kept claiming during the outage (the database was up); every claim
    # reached the broker once Redis was back, none was lost or missed.
    assert set(runs.values_list("status", flat=True)) == {RunStatus.QUEUED}
    assert not OutboxBatch.objects.exists()
    assert {str(pk) for pk in runs.values_list("pk", flat=True)} <= set(published)
    assert "could not publish" in beat.log()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL over TCP to cut")
def test_beat_waits_out_a_database_outage_and_records_the_slots_it_could_not_run(
    service_env, logs_dir, catalog
):
    settings_dict = connection.settings_dict
    proxy = TcpProxy(settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432))
    queue = "outage-db"
    empty_queues([queue])
    ids = make_interval_schedules(50, EVERY, floor_to(EVERY), queue, prefix="db-outage")
    url = service_env["DATABASE_URL"].replace(f":{settings_dict['PORT'] or 5432}/", f":{proxy.port}/")
    assert str(proxy.port) in url
    beat = start_beat({**service_env, "DATABASE_URL": url}, logs_dir, "db-outage")
    try:
        beat.wait_for_log("beat engine loaded", timeout=60)
        time.sleep(EVERY * 2)
        cut_at = timezone.now()
        proxy.cut()
        time.sleep(OUTAGE_SECONDS)
        assert beat.process.poll() is None, "beat crashed while the database was down"
        proxy.restore()
        restored_at = timezone.now()
        time.sleep(EVERY * 3)
    finally:
        beat.stop()
        proxy.close()

    log = beat.log()
    assert log.count("cannot reach the database or broker") == 1, "log once per outage"
    assert "recovered" in log
    found = slots_by_schedule(ids)
    first = min(min(s) for s in found.values())
    last = max(max(s) for s in found.values())
    assert last > restored_at
    assert_no_holes(ids, EVERY, first, last)
    during = JobRun.objects.filter(
        schedule_id__in=ids,
        scheduled_for__gt=cut_at + timedelta(seconds=EVERY),
        scheduled_for__lt=restored_at - timedelta(seconds=EVERY),
    )
    # Catch-up "latest" (the default): of the slots that passed during the
    # outage each schedule ran only the newest; the others are recorded missed.
    assert during.filter(status=RunStatus.MISSED).count() >= 50 * 3
    assert not OutboxBatch.objects.exists()
