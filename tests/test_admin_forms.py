"""The schedule admin pages through Django's test client (the browser tests drive the same pages)."""

from __future__ import annotations

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/django_celery_beat/periodictask/add/"


def add_form(interval: IntervalSchedule, **fields) -> dict:
    data = {
        "name": "drill",
        "task": "diagnostics.fail",
        "schedule_kind": "interval",
        "every": str(interval.every),
        "period": interval.period,
        "args": "[]",
        "kwargs": "{}",
        "enabled": "on",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "0",
        "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-catchup": "latest",
        "policy-0-overlap": "skip",
        "policy-0-jitter": "0",
        "policy-0-grace": "60",
        "policy-0-failures_before_alert": "1",
        "policy-0-successes_before_recovery": "1",
    }
    data.update(fields)
    return data


@pytest.fixture
def interval():
    publish_catalog(worker="tests")
    return IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)


def test_adding_a_schedule_with_its_policy_saves_both(admin_client, interval):
    response = admin_client.post(
        ADD_URL, add_form(interval, **{"policy-0-soft_time_limit": "20", "policy-0-hard_time_limit": "40"})
    )

    assert response.status_code == 302, response.content[:2000]
    policy = SchedulePolicy.objects.get(task__name="drill")
    assert (policy.soft_time_limit, policy.hard_time_limit, policy.overlap) == (20, 40, "skip")
    assert policy.created_at is not None and policy.slug


def test_adding_a_schedule_with_inverted_limits_saves_nothing(admin_client, interval):
    response = admin_client.post(
        ADD_URL, add_form(interval, **{"policy-0-soft_time_limit": "40", "policy-0-hard_time_limit": "20"})
    )

    assert response.status_code == 200
    assert "must be longer than the soft limit" in response.content.decode()
    assert not PeriodicTask.objects.filter(name="drill").exists()
