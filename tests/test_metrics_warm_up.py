"""A web process renders the per-schedule block on its first request, before any scrape.

At 100,000 schedules the block takes seconds (``bench/metrics_scrape.py``):
rendered in the background when the process serves its first request (a
health check, typically), Prometheus' first scrape finds it ready.
"""

from __future__ import annotations

import pytest
from django.core.signals import request_started
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from scheduler import metrics
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db(transaction=True)  # the render reads on its own connection


@pytest.fixture
def first_request(settings, catalog):
    settings.METRICS_TOKEN = "warm-up-token"
    settings.METRICS_PER_SCHEDULE = True
    metrics.forget_cached_schedules()
    request_started.connect(metrics.warm_up_on_first_request)  # as scheduler.wsgi does
    yield
    request_started.disconnect(metrics.warm_up_on_first_request)
    metrics.forget_cached_schedules()


def connected() -> bool:
    # Each entry: (lookup key, weak reference to the receiver, is async).
    return any(entry[1]() is metrics.warm_up_on_first_request for entry in request_started.receivers)


def test_the_first_request_renders_the_block_in_the_background_and_only_the_first(client, first_request):
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name="warm", task="heartbeat", interval=every)
    assert not metrics._schedule_cache

    assert client.get("/healthz").status_code in (200, 503)
    assert metrics.wait_for_schedule_refresh(timeout=30)

    _, body = metrics._schedule_cache["body"]
    assert f'schedule="{SchedulePolicy.objects.get(task=task).slug}"'.encode() in body
    assert not connected()  # a process warms up once


def test_nothing_is_rendered_while_per_schedule_series_are_off(client, first_request, settings):
    settings.METRICS_PER_SCHEDULE = False
    client.get("/healthz")
    assert metrics.wait_for_schedule_refresh(timeout=30)
    assert not metrics._schedule_cache
    assert not connected()
