"""The on-call dashboard: its figures for seeded runs, its charts, the broker's backlog, who may see it.

Runs are seeded relative to the real clock (the page reads ``timezone.now()``);
queue lengths come from the real broker (Redis or RabbitMQ).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from jobs.dispatch import Delivery, dispatch
from jobs.models import JobDefinition, JobRun, RunStatus, WorkerPresence
from scheduler import charts, dashboard
from scheduler.models import BeatLease, SchedulePolicy
from tests.support.queues import empty_queues, waiting_priorities

pytestmark = [pytest.mark.broker, pytest.mark.django_db]

URL = "/admin/dashboard/"
QUEUE = "dashboard_test_q"


@pytest.fixture
def staff(client, django_user_model):
    publish_catalog(worker="tests")
    client.force_login(django_user_model.objects.create_superuser("oncall", "oncall@example.com", "unused"))
    return client


def new_schedule(name: str) -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task="heartbeat", interval=every)


def add_run(schedule: PeriodicTask | None, ago: timedelta, status: str, **fields) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        schedule=schedule,
        schedule_name=schedule.name if schedule else "",
        job=fields.pop("job", "heartbeat"),
        scheduled_for=now - ago,
        status=status,
        **fields,
    )


def bars(svg: str) -> list[tuple[str, str, float]]:
    """(series, category, value) of every bar drawn in an SVG chart."""
    return [
        (series, category, float(value))
        for series, category, value in re.findall(
            r'class="bar"[^>]*data-series="([^"]*)" data-category="([^"]*)" data-value="([^"]*)"', svg
        )
    ]


def test_runs_by_status_over_24_hours_with_links_and_the_chart_drawing_the_same_totals(staff):
    s = new_schedule("nightly export")
    for _ in range(3):
        add_run(s, timedelta(hours=1, seconds=_), RunStatus.SUCCEEDED)
    add_run(s, timedelta(hours=2), RunStatus.FAILED)
    add_run(s, timedelta(hours=5), RunStatus.SOFT_TIMEOUT)
    add_run(s, timedelta(hours=30), RunStatus.FAILED)  # before the window: not counted
    add_run(None, timedelta(minutes=3), RunStatus.RUNNING, started_at=timezone.now())

    response = staff.get(URL)

    assert response.status_code == 200
    counts = {row["status"]: row["count"] for row in response.context["by_status"]}
    assert counts["succeeded"] == 3
    assert counts["failed"] == 1
    assert counts["soft_timeout"] == 1
    assert counts["running"] == 1
    assert counts["lost"] == 0
    assert response.context["total_runs"] == 6
    drawn: dict[str, float] = {}
    for series, _, value in bars(str(response.context["hourly_chart"])):
        drawn[series] = drawn.get(series, 0) + value
    assert drawn == {"succeeded": 3, "failed": 1, "soft_timeout": 1, "running": 1}
    # Each count links to the run list filtered the same way, and that list agrees.
    failed_link = next(row["url"] for row in response.context["by_status"] if row["status"] == "failed")
    listed = staff.get(failed_link)
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 1
    assert failed_link.replace("&", "&amp;") in response.content.decode()


def test_running_now_counts_and_lists_the_oldest_first_with_how_long(staff):
    now = timezone.now()
    add_run(None, timedelta(minutes=50), RunStatus.RUNNING, started_at=now - timedelta(minutes=45), job="a")
    add_run(None, timedelta(minutes=5), RunStatus.RUNNING, started_at=now - timedelta(minutes=4), job="b")
    add_run(None, timedelta(minutes=1), RunStatus.QUEUED)
    add_run(None, timedelta(minutes=2), RunStatus.RETRYING)

    response = staff.get(URL)

    assert response.context["running_count"] == 2
    assert response.context["waiting_count"] == 2
    oldest = response.context["oldest_running"]
    assert [run["job"] for run in oldest] == ["a", "b"]
    assert timedelta(minutes=44) < oldest[0]["running_for"] < timedelta(minutes=46)
    assert "45\xa0minutes" in response.content.decode()


def test_failing_schedules_are_those_whose_newest_executed_run_ended_badly(staff):
    recovered, failing, timed_out, lost, old = (
        new_schedule(name) for name in ("recovered", "failing", "timed out", "lost", "failed long ago")
    )
    add_run(recovered, timedelta(hours=3), RunStatus.FAILED)
    add_run(recovered, timedelta(hours=2), RunStatus.SUCCEEDED)
    add_run(failing, timedelta(hours=3), RunStatus.SUCCEEDED)
    bad = add_run(
        failing, timedelta(hours=2), RunStatus.FAILED, error_type="ValueError", error_message="bad row"
    )
    add_run(failing, timedelta(minutes=1), RunStatus.QUEUED)  # not executed yet: still failing
    add_run(timed_out, timedelta(hours=4), RunStatus.HARD_TIMEOUT)
    add_run(timed_out, timedelta(hours=1), RunStatus.MISSED)  # a missed slot says nothing of the job
    add_run(lost, timedelta(hours=6), RunStatus.LOST)
    add_run(old, timedelta(hours=30), RunStatus.FAILED)

    response = staff.get(URL)

    assert response.context["failing_count"] == 3
    listed = {run["schedule_name"]: run["status"] for run in response.context["failing"]}
    assert listed == {"failing": "failed", "timed out": "hard_timeout", "lost": "lost"}
    page = response.content.decode()
    assert f"/admin/jobs/jobrun/{bad.pk}/change/" in page
    assert "ValueError: bad row" in page
    # Both ways to find the candidates (collected by the window's scan on PostgreSQL, or
    # read from the window again) give the same schedules.
    since = response.context["since"]
    window = dashboard.scan_window(since)
    if connection.vendor == "postgresql":
        assert window.bad_run_ids is not None and bad.pk in window.bad_run_ids
    assert dashboard.failing_schedules(since, None) == dashboard.failing_schedules(since, window.bad_run_ids)


def test_paused_schedules_are_those_paused_now(staff):
    now = timezone.now()
    names = ("paused by hand", "paused until tomorrow", "pause ended", "running normally")
    by_hand, until_tomorrow, ended, _ = (new_schedule(name) for name in names)
    SchedulePolicy.objects.filter(task=by_hand).update(
        paused_at=now, pause_note="deploy freeze", paused_by="bob"
    )
    SchedulePolicy.objects.filter(task=until_tomorrow).update(
        paused_at=now - timedelta(hours=1), paused_until=now + timedelta(days=1), pause_note="db migration"
    )
    SchedulePolicy.objects.filter(task=ended).update(
        paused_at=now - timedelta(days=2), paused_until=now - timedelta(days=1), pause_note="over"
    )

    response = staff.get(URL)

    assert response.context["paused_count"] == 2
    assert [p["name"] for p in response.context["paused"]] == ["paused by hand", "paused until tomorrow"]
    page = response.content.decode()
    assert "deploy freeze" in page and "db migration" in page and "over" not in page


def test_per_queue_backlog_is_read_from_the_broker_every_priority_included(
    staff, django_capture_on_commit_callbacks
):
    JobDefinition.objects.filter(name="heartbeat").update(queue=QUEUE)
    empty_queues([QUEUE, "dashboard_worker_q"])
    try:
        # Real messages, published as the platform publishes them (after commit), at two priorities:
        # Redis keeps a list per priority step, RabbitMQ one priority queue; both count them all.
        with django_capture_on_commit_callbacks(execute=True):
            runs = [dispatch("heartbeat", queue=QUEUE, priority=p) for p in (None, None, None, 3, 3)]
        assert {run.delivery for run in runs} == {Delivery.SENT}
        assert sorted(waiting_priorities(QUEUE).values()) == [0, 0, 0, 3, 3]
        WorkerPresence.objects.create(
            hostname="w1@test", queues=["dashboard_worker_q"], jobs=["heartbeat"], last_seen_at=timezone.now()
        )

        response = staff.get(URL)

        backlog = {row.queue: row.messages for row in response.context["backlog"]}
        assert backlog[QUEUE] == 5
        assert backlog["dashboard_worker_q"] == 0  # a live worker's queue with nothing waiting
        assert response.context["broker_error"] == ""
        assert re.search(rf'data-queue="{QUEUE}"><td>{QUEUE}</td><td>5</td>', response.content.decode())
    finally:
        empty_queues([QUEUE])


def test_the_backlog_says_so_when_the_broker_does_not_answer(settings):
    from settings.celery_app import app

    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        backlog, error = dashboard.queue_backlog(["default"])
    finally:
        app.conf.broker_url = previous
    assert [(row.queue, row.messages) for row in backlog] == [("default", None)]
    assert "Error" in error or "refused" in error.lower()


def test_the_beat_leader_its_last_tick_and_its_next_due_slots(staff):
    now = timezone.now()
    schedule = new_schedule("hourly report")
    BeatLease.objects.create(
        name="beat",
        holder="beat-host:4242:abc",
        token=7,
        expires_at=now + timedelta(seconds=10),
        renewed_at=now - timedelta(seconds=3),
        status={
            "schedules": 1,
            "next_due": [
                {
                    "slot": (now + timedelta(minutes=5)).isoformat(),
                    "schedule": "hourly report",
                    "job": "heartbeat",
                },
                {"slot": "not a time", "schedule": "x", "job": "y"},
            ],
        },
    )

    response = staff.get(URL)

    beat = response.context["beat"]
    assert beat["alive"] and beat["leader"] == "beat-host:4242:abc"
    assert [item["schedule_id"] for item in beat["next_due"]] == [schedule.pk]
    page = response.content.decode()
    assert "beat-host:4242:abc" in page and "fencing token 7" in page
    assert f"/admin/django_celery_beat/periodictask/{schedule.pk}/change/" in page

    BeatLease.objects.filter(name="beat").update(expires_at=now - timedelta(seconds=1))
    page = staff.get(URL).content.decode()
    assert "No beat leads" in page
    assert "hourly report" not in page  # a dead leader's slots are not shown as coming


def test_live_workers_only(staff):
    now = timezone.now()
    WorkerPresence.objects.create(hostname="alive@h", queues=["default"], jobs=[], last_seen_at=now)
    WorkerPresence.objects.create(
        hostname="dead@h", queues=["default"], jobs=[], last_seen_at=now - timedelta(hours=1)
    )

    response = staff.get(URL)

    assert [w["hostname"] for w in response.context["workers"]] == ["alive@h"]


def test_p95_duration_and_lateness_per_job_match_percentile_cont(staff):
    s = new_schedule("timed")
    for i in range(1, 101):
        add_run(s, timedelta(hours=i), RunStatus.SUCCEEDED, duration_ms=i * 10, lateness_ms=i)
    add_run(s, timedelta(days=8), RunStatus.SUCCEEDED, duration_ms=10**6, lateness_ms=10**6)  # too old

    response = staff.get(URL)

    figures = {row["job"]: row for row in response.context["p95"]}
    # percentile_cont(0.95) of 10, 20, … 1000: 950 + 0.05 × 10.
    assert figures["heartbeat"]["duration"] == pytest.approx(950.5)
    assert figures["heartbeat"]["lateness"] == pytest.approx(95.05)
    assert figures["heartbeat"]["runs"] == 100
    drawn = {(series, job): value for series, job, value in bars(str(response.context["p95_chart"]))}
    assert drawn[("duration", "heartbeat")] == pytest.approx(950.5)
    assert drawn[("lateness", "heartbeat")] == pytest.approx(95.05)


def test_the_charts_have_a_title_an_accessible_label_axes_and_a_legend(staff):
    page = staff.get(URL).content.decode()
    svgs = re.findall(r"<svg [^>]*role=\"img\".*?</svg>", page, flags=re.S)
    assert len(svgs) == 2
    for svg in svgs:
        assert 'role="img"' in svg and "aria-label=" in svg and "<title>" in svg
    assert "Runs per hour by status" in svgs[0] and "Succeeded" in svgs[0]  # the legend
    assert "p95 duration" in svgs[1] and "milliseconds" in svgs[1]


def test_chart_text_is_escaped_and_empty_charts_say_so():
    svg = str(
        charts.grouped_bars(
            "<t>", ["<script>alert(1)</script>"], [charts.Series("d", "d&d", "#000")], [{"d": 3.0}], unit="ms"
        )
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "d&amp;d" in svg
    empty = str(charts.stacked_columns("none", ["00:00"], dashboard.STATUS_SERIES, [{}]))
    assert "no data" in empty and 'class="bar"' not in empty
    assert [charts.nice_ceiling(v) for v in (0, 1, 3, 7, 11, 250, 1000)] == [1, 1, 5, 10, 20, 500, 1000]


def test_the_query_count_does_not_grow_with_schedules_and_runs(staff):
    def seed(count: int) -> None:
        for n in range(count):
            s = new_schedule(f"schedule {PeriodicTask.objects.count()}")
            add_run(
                s, timedelta(hours=n % 30, minutes=1), RunStatus.FAILED if n % 3 == 0 else RunStatus.SUCCEEDED
            )
            add_run(s, timedelta(minutes=n % 50), RunStatus.RUNNING, started_at=timezone.now())
            if n % 4 == 0:
                SchedulePolicy.objects.filter(task=s).update(paused_at=timezone.now(), pause_note="n")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff.get(URL).status_code == 200
        return len(captured)

    seed(3)
    small = queries()
    seed(60)
    assert queries() == small


def test_staff_without_the_view_permission_are_refused_and_others_sent_to_log_in(client, django_user_model):
    assert client.get(URL).status_code == 302  # anonymous: to the login page
    user = django_user_model.objects.create_user("intern", password="unused", is_staff=True)
    client.force_login(user)
    assert client.get(URL).status_code == 403
    assert "/admin/dashboard/" not in client.get("/admin/").content.decode()

    user.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client.force_login(django_user_model.objects.get(pk=user.pk))  # a fresh permission cache
    assert client.get(URL).status_code == 200

    outsider = django_user_model.objects.create_user("outsider", password="unused")
    client.force_login(outsider)
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_admin_index_links_to_the_dashboard_at_the_top(staff):
    page = staff.get("/admin/").content.decode()
    assert 'id="dashboard-link"' in page
    assert page.index('id="dashboard-link"') < page.index('id="content-main"')
