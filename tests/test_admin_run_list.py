"""The run-history and schedule lists cost the same queries however many schedules and runs there are.

Before, the run list's "By schedule" filter rendered every schedule (each
loading its crontab or interval row), its "By job" filter read every run's
job name and its date hierarchy every run's date; the schedule list read
each schedule's policy in a query of its own. Now the filters read the
catalog and the one schedule filtered on, and the count reads a bounded
number of rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs import admin_lists
from jobs.models import JobRun, RunStatus

pytestmark = pytest.mark.django_db

LIST = "/admin/jobs/jobrun/"
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


@pytest.fixture
def client(alices_client):
    return alices_client


def add_schedules_and_runs(count: int) -> list[PeriodicTask]:
    """``count`` schedules (half crontab, half interval) with two runs each."""
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    start = PeriodicTask.objects.count()
    schedules = []
    for n in range(start, start + count):
        crontab = CrontabSchedule.objects.create(minute=str(n % 60), hour="*", timezone="Europe/Berlin")
        kind = {"crontab": crontab} if n % 2 else {"interval": every}
        schedule = PeriodicTask.objects.create(name=f"schedule {n}", task="heartbeat", **kind)
        schedules.append(schedule)
        for k in range(2):
            JobRun.objects.create(
                schedule=schedule,
                schedule_name=schedule.name,
                job="heartbeat",
                scheduled_for=T0 + timedelta(minutes=n, seconds=k),
                status=RunStatus.SUCCEEDED if k else RunStatus.FAILED,
            )
    return schedules


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_list_and_its_filters_cost_the_same_queries_at_3_and_at_60_schedules(client):
    first = add_schedules_and_runs(3)[0]
    pages = [
        LIST,
        f"{LIST}?status__exact=failed",
        f"{LIST}?job=heartbeat",
        f"{LIST}?schedule={first.pk}",
    ]
    small = {url: queries_for(client, url) for url in pages}
    add_schedules_and_runs(57)
    assert JobRun.objects.count() == 120
    large = {url: queries_for(client, url) for url in pages}
    assert large == small


def test_the_schedule_list_and_its_job_filter_cost_the_same_queries_at_3_and_at_60_schedules(client):
    schedules = "/admin/django_celery_beat/periodictask/"
    pages = [schedules, f"{schedules}?job=heartbeat", f"{schedules}?enabled__exact=1"]
    add_schedules_and_runs(3)
    small = {url: queries_for(client, url) for url in pages}
    add_schedules_and_runs(57)
    large = {url: queries_for(client, url) for url in pages}
    assert large == small
    assert client.get(f"{schedules}?job=heartbeat").context["cl"].result_count == 60
    assert client.get(f"{schedules}?job=diagnostics.fail").context["cl"].result_count == 0


def test_it_filters_by_schedule_and_shows_only_that_schedule_in_the_sidebar(client):
    first, second = add_schedules_and_runs(2)

    page = client.get(f"{LIST}?schedule={first.pk}").content.decode()

    assert page.count("schedule 0") >= 2 and "schedule 1" not in page  # its two runs and the filter

    assert client.get(f"{LIST}?schedule=not-a-number").context["cl"].result_count == 0
    assert client.get(f"{LIST}?schedule=999999").context["cl"].result_count == 0
    assert client.get(LIST).context["cl"].result_count == 4


def test_the_job_filter_lists_the_catalog_not_the_runs(client):
    add_schedules_and_runs(1)
    page = client.get(LIST).content.decode()
    assert "?job=diagnostics.sleep" in page  # in the catalog, never run
    assert client.get(f"{LIST}?job=diagnostics.sleep").context["cl"].result_count == 0


def test_the_count_reads_at_most_the_limit_plus_one_rows(client, monkeypatch):
    add_schedules_and_runs(3)  # 6 runs
    monkeypatch.setattr(admin_lists, "COUNT_LIMIT", 4)

    changelist = client.get(f"{LIST}?status__exact=failed").context["cl"]
    assert changelist.result_count == 3  # below the limit: exact
    assert client.get(LIST).context["cl"].result_count == 5  # above it: the limit + 1 ("more")
