"""The schedule list: what each column shows, what each filter keeps, queries constant in its size.

The last run and failure streak of a page's schedules come from two queries
over the page's ids (``jobs.admin_lists.schedule_run_facts``), not a query per
row: the list costs the same statements at 3 and at 60 schedules with runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs import admin_lists
from jobs.models import JobRun, RunStatus
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db

LIST = "/admin/django_celery_beat/periodictask/"
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


@pytest.fixture
def client(alices_client):
    return alices_client


def schedule(name: str, **kind) -> PeriodicTask:
    if not kind:
        kind = {"crontab": CrontabSchedule.objects.create(minute="0", hour="9", timezone="Europe/Berlin")}
    return PeriodicTask.objects.create(name=name, task="heartbeat", **kind)


def add_runs(task: PeriodicTask, statuses: list[str], start: datetime = T0) -> list[JobRun]:
    """Runs of ``task``, oldest first, one minute apart; each with a 1.5 s duration."""
    return [
        JobRun.objects.create(
            schedule=task,
            schedule_name=task.name,
            job="heartbeat",
            scheduled_for=start + timedelta(minutes=k),
            started_at=start + timedelta(minutes=k, seconds=1),
            finished_at=start + timedelta(minutes=k, seconds=2, milliseconds=500),
            duration_ms=1500,
            status=status,
        )
        for k, status in enumerate(statuses)
    ]


def add_schedules_with_runs(count: int) -> None:
    """Schedules in pairs (a crontab and an interval one) alike in runs, pause and problem.

    Pairs, because each page prefetches the crontab and the interval rows of
    its schedules: a page with none of a kind skips that query, so both sizes
    show both kinds on every page.
    """
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    start = PeriodicTask.objects.count()
    for n in range(start, start + count):
        kind = {"interval": every} if n % 2 else {}
        pair = n // 2
        task = schedule(f"bulk {n}", **kind)
        add_runs(task, [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.FAILED][: 1 + pair % 3])
        if pair % 5 == 0:
            SchedulePolicy.objects.filter(task=task).update(
                paused_at=timezone.now(), pause_note="freeze", problem="no worker" if pair % 10 == 0 else ""
            )


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def names(client, url: str) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200
    return sorted(task.name for task in response.context["cl"].result_list)


def row_of(client, name: str) -> str:
    """The list row (its HTML) of the schedule named ``name``."""
    page = client.get(f"{LIST}?q={name}").content.decode()
    rows = [row for row in page.split("<tr") if f">{name}</a>" in row]
    assert len(rows) == 1, page
    return rows[0]


PAGES = [
    LIST,
    f"{LIST}?job=heartbeat",
    f"{LIST}?last_run=failed",
    f"{LIST}?last_run=succeeded",
    f"{LIST}?paused=yes",
    f"{LIST}?problem=yes",
    f"{LIST}?q=bulk",
]


def test_every_page_costs_the_same_queries_at_4_and_at_60_schedules_with_runs(client):
    add_schedules_with_runs(4)
    small = {url: queries_for(client, url) for url in PAGES}
    add_schedules_with_runs(56)
    assert JobRun.objects.count() == 120
    large = {url: queries_for(client, url) for url in PAGES}
    assert large == small
    assert client.get(f"{LIST}?last_run=failed").context["cl"].result_count == 40


def test_the_filter_past_its_bound_matches_by_probing_each_schedule(client, monkeypatch):
    add_schedules_with_runs(6)  # last runs: succeeded × 2, failed × 4
    small = queries_for(client, f"{LIST}?last_run=failed")
    assert len(admin_lists.schedules_whose_last_run_is("failed") or []) == 4
    monkeypatch.setattr(admin_lists, "COUNT_LIMIT", 2)  # 4 failed > the bound: the other path
    assert admin_lists.schedules_whose_last_run_is("failed") is None
    assert names(client, f"{LIST}?last_run=failed") == ["bulk 2", "bulk 3", "bulk 4", "bulk 5"]
    assert queries_for(client, f"{LIST}?last_run=failed") == small


def test_a_failed_last_run_shows_its_status_duration_time_link_and_streak(client):
    task = schedule("nightly export")
    runs = add_runs(task, [RunStatus.FAILED, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SKIPPED,
                           RunStatus.HARD_TIMEOUT, RunStatus.LOST])  # fmt: skip

    row = row_of(client, "nightly export")

    last = runs[-1]
    assert reverse("admin:jobs_jobrun_change", args=[last.pk]) in row
    assert "Lost" in row and "1.5 s" in row and "2026-11-30 02:05:02 UTC" in row
    # failed, (skipped: neither), hard timeout, lost after the success: 3
    assert '<td class="field-failure_streak">3</td>' in row
    assert "heartbeat" in row
    assert "At 09:00" in row and "Europe/Berlin" in row
    assert "enabled" in row


def test_a_streak_longer_than_the_window_says_so(client, monkeypatch):
    monkeypatch.setattr(admin_lists, "STREAK_WINDOW", 3)
    add_runs(schedule("always failing"), [RunStatus.FAILED] * 5)
    assert '<td class="field-failure_streak">3+</td>' in row_of(client, "always failing")


def test_a_schedule_without_runs_and_its_next_run(client):
    every, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.MINUTES)
    schedule("fresh", interval=every)
    row = row_of(client, "fresh")
    assert "never ran" in row and "Every 5 minutes" in row
    assert '<td class="field-failure_streak">0</td>' in row
    next_run = row.split('class="field-next_run">')[1].split("<")[0]
    at = datetime.strptime(next_run, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    assert timezone.now() < at <= timezone.now() + timedelta(minutes=5, seconds=1)


def test_a_paused_schedule_shows_its_end_and_note_and_runs_after_it(client):
    task = schedule("paused job")
    until = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    SchedulePolicy.objects.filter(task=task).update(
        paused_at=timezone.now(), paused_until=until, pause_note="deploy freeze", paused_by="bob"
    )
    row = row_of(client, "paused job")
    assert 'title="deploy freeze (by bob)"' in row
    assert "paused until 2030-01-02 03:04:00 UTC" in row
    assert "2030-01-02 08:00:00 UTC" in row  # the first 09:00 Berlin after the pause ends

    SchedulePolicy.objects.filter(task=task).update(paused_until=None)
    row = row_of(client, "paused job")
    assert "paused until resumed" in row and "– (paused)" in row


def test_a_problem_shows(client):
    task = schedule("broken")
    SchedulePolicy.objects.filter(task=task).update(problem="no live worker serves queue default")
    assert "no live worker serves queue default" in row_of(client, "broken")


def test_each_filter_keeps_the_right_schedules(client):
    ok, failing, running, never = (schedule(name) for name in ("ok", "failing", "running", "never"))
    add_runs(ok, [RunStatus.FAILED, RunStatus.SUCCEEDED])
    add_runs(failing, [RunStatus.SUCCEEDED, RunStatus.FAILED])
    add_runs(running, [RunStatus.FAILED, RunStatus.RUNNING])
    other = PeriodicTask.objects.create(
        name="other job", task="diagnostics.sleep", kwargs='{"seconds": 1}', crontab=ok.crontab
    )
    now = timezone.now()
    SchedulePolicy.objects.filter(task=ok).update(paused_at=now, pause_note="n")
    SchedulePolicy.objects.filter(task=failing).update(  # a pause that ended: not paused
        paused_at=now - timedelta(hours=2), paused_until=now - timedelta(hours=1), pause_note="n"
    )
    SchedulePolicy.objects.filter(task=never).update(problem="quarantined")

    assert names(client, f"{LIST}?last_run=succeeded") == ["ok"]
    assert names(client, f"{LIST}?last_run=failed") == ["failing"]
    assert names(client, f"{LIST}?last_run=running") == ["running"]
    assert names(client, f"{LIST}?last_run=nonsense") == []
    assert names(client, f"{LIST}?paused=yes") == ["ok"]
    assert names(client, f"{LIST}?paused=no") == ["failing", "never", "other job", "running"]
    assert names(client, f"{LIST}?problem=yes") == ["never"]
    assert names(client, f"{LIST}?problem=no") == ["failing", "ok", "other job", "running"]
    assert names(client, f"{LIST}?job=diagnostics.sleep") == ["other job"]
    assert names(client, f"{LIST}?q=sleep") == ["other job"]  # search by job
    assert names(client, f"{LIST}?q=fail") == ["failing"]  # and by name
    assert other.pk


def test_the_date_filters_are_gone(client):
    filters = [spec.title for spec in client.get(LIST).context["cl"].filter_specs]
    assert filters == ["job", "status of last run", "paused", "problem", "Enabled"]
