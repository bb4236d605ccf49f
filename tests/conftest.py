"""Fixtures shared by the suite: the real broker, a Sentry stand-in, real workers.

Integration tests talk to real servers: the test database (PostgreSQL in CI,
a SQLite file otherwise), Redis at ``REDIS_URL`` (``run.py test`` starts an
embedded one when it is unset), and worker/beat subprocesses started with
that database, that broker and a DSN pointing at :class:`FakeSentry`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from jobs.catalog import publish_catalog
from jobs.models import FINISHED_STATUSES, JobRun
from scheduler.embedded_redis import wait_for_redis
from tests.support.processes import QUEUES, Service, start_beat, start_worker
from tests.support.sentry_server import FakeSentry


def database_url_for_subprocesses() -> str:
    """A URL for the test database (not the development one) for child processes."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture(scope="session")
def fake_sentry() -> Iterable[FakeSentry]:
    server = FakeSentry().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    wait_for_redis(settings.REDIS_URL, timeout=30)
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture(scope="session")
def service_env(django_db_setup, django_db_blocker, fake_sentry, redis_client, tmp_path_factory):
    with django_db_blocker.unblock():
        database_url = database_url_for_subprocesses()
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "SENTRY_DSN": fake_sentry.dsn,
        "SENTRY_ENVIRONMENT": "test",
        "DJANGO_SETTINGS_MODULE": "settings",
        "VAR_DIR": str(tmp_path_factory.mktemp("var")),
        "PYTHONUNBUFFERED": "1",
        "BEAT_MAX_LOOP_INTERVAL": "1",
        # Transactional tests empty every table after each test, presence too:
        # workers write theirs again within seconds, not half a minute.
        "WORKER_PRESENCE_REFRESH_SECONDS": "2",
    }


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(service_env, logs_dir) -> Iterable[Service]:
    """One real prefork worker (2 children) for the whole session."""
    service = start_worker(service_env, logs_dir)
    service.wait_for_log("ready.", timeout=120)
    yield service
    service.stop()


@pytest.fixture
def beat(service_env, logs_dir) -> Iterable[Service]:
    service = start_beat(service_env, logs_dir)
    service.wait_for_log("beat engine loaded", timeout=60)
    yield service
    service.stop()


@pytest.fixture
def beat_engine(clean_queues):
    """Beat's engine in-process on the real database and broker, reading the change log every tick.

    Time is the caller's: pass ``now=`` to ``load`` and ``tick``.
    """
    from scheduler.beat.engine import BeatEngine
    from scheduler.celery import app

    publish_catalog(worker="tests")
    engine = BeatEngine(app, poll_interval=0, fallback_poll_interval=0)
    yield engine
    engine.close()  # its LISTEN connection would keep the test database from being dropped


@pytest.fixture
def clean_queues(redis_client) -> None:
    """Empty the job queues (on Redis: not the routing keys the worker declared)."""
    if settings.CELERY_BROKER_URL.startswith("redis"):
        for queue in QUEUES.split(","):
            redis_client.delete(queue)
    else:
        purge_amqp_queues(QUEUES.split(","))


def purge_amqp_queues(names: Iterable[str]) -> None:
    """Purge RabbitMQ queues; one not declared yet has nothing to purge."""
    from scheduler.celery import app

    with app.connection_for_write() as conn:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except conn.channel_errors:
                pass  # 404: the queue does not exist yet (the error closed the channel)
            finally:
                channel.close()


@pytest.fixture
def catalog(transactional_db) -> None:
    publish_catalog(worker="tests")


@pytest.fixture
def alice(django_user_model):
    """A superuser, for the admin's pages."""
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "unused")


@pytest.fixture
def alices_client(client, alice):
    """The test client logged in as ``alice``, with the job catalog published (the admin reads it)."""
    publish_catalog(worker="tests")
    client.force_login(alice)
    return client


def wait_for_run(run_id, statuses: Iterable[str] = FINISHED_STATUSES, timeout: float = 60.0) -> JobRun:
    """Poll the run until its status is one of ``statuses``; fail with the last state."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = JobRun.objects.filter(pk=run_id).first()
        if run is not None and run.status in wanted:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not reach {sorted(wanted)} within {timeout} s: {run!r}")
