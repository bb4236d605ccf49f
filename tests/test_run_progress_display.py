"""A run's progress and its wait for a concurrency place, as people and clients see them.

The run page draws a ``<progress>`` bar of done / total with the percent, the
job's message and how long ago it was reported; a run held back by
``max_concurrency`` says what it waits for and since when. The schedule
page's last runs and the run list show the same in one line, for runs
still waiting or running only. The API gives ``progress`` {done, total,
message, updated_at} and ``waiting`` {since, for}, or null. The progress
columns are written here with ``.update()``, as the progress writer does.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.admin_panels import register_run_panel, unregister_run_panel
from jobs.catalog import publish_catalog
from jobs.models import JobRun, RunStatus
from tests.support.api_client import ApiClient, token_for, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(alices_client):
    return alices_client


@pytest.fixture
def schedule() -> PeriodicTask:
    publish_catalog(worker="tests")
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="7", day_of_week="1-5", timezone="Europe/Berlin"
    )
    return PeriodicTask.objects.create(name="weekday export", task="heartbeat", crontab=crontab)


def running_run(schedule: PeriodicTask, **progress) -> JobRun:
    now = timezone.now()
    run = JobRun.objects.create(
        schedule=schedule, schedule_name=schedule.name, job="heartbeat",
        scheduled_for=now - timedelta(minutes=1), status=RunStatus.RUNNING, attempt=1, worker="worker-a",
        started_at=now - timedelta(seconds=50),
    )  # fmt: skip
    if progress:
        JobRun.objects.filter(pk=run.pk).update(**progress)
    return JobRun.objects.get(pk=run.pk)


def waiting_run(schedule: PeriodicTask, waited: timedelta) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        schedule=schedule, schedule_name=schedule.name, job="heartbeat", scheduled_for=now,
        status=RunStatus.QUEUED, waiting_since=now - waited,
        waiting_for="a place of heartbeat (max_concurrency=2): 2 running",
    )  # fmt: skip


def run_page(client, run: JobRun) -> str:
    response = client.get(reverse("admin:jobs_jobrun_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def section(html: str, element_id: str) -> str:
    return html.split(f'<div id="{element_id}">')[1].split("</div>")[0]


def test_the_run_page_draws_the_bar_with_the_percent_the_counts_the_message_and_its_age(client, schedule):
    run = running_run(
        schedule, progress_done=4200, progress_total=10000, progress_message="chunk 5 of 12 <merged>",
        progress_updated_at=timezone.now() - timedelta(seconds=3),
    )  # fmt: skip

    progress = section(run_page(client, run), "run-progress")

    assert '<progress id="run-progress-bar" max="10000" value="4200">42 %</progress>' in progress
    assert '<strong class="progress-percent">42 %</strong>' in progress
    assert "4,200 / 10,000" in progress
    assert "chunk 5 of 12 &lt;merged&gt;" in progress  # the job's text, escaped
    updated = progress.split('class="help progress-updated">')[1]
    assert updated.startswith("Updated 3.") and " s ago (" in updated and "on worker-a" in updated
    assert "not reported" not in progress


def test_a_count_without_a_total_shows_no_bar_and_an_overshoot_is_capped_at_100(client, schedule):
    counting = running_run(
        schedule, progress_done=812, progress_message="rows read", progress_updated_at=timezone.now()
    )
    progress = section(run_page(client, counting), "run-progress")
    assert "<progress" not in progress and "812" in progress and "rows read" in progress

    over = running_run(schedule, progress_done=130, progress_total=100, progress_updated_at=timezone.now())
    JobRun.objects.filter(pk=over.pk).update(scheduled_for=over.scheduled_for - timedelta(minutes=5))
    assert '<strong class="progress-percent">100 %</strong>' in section(
        run_page(client, over), "run-progress"
    )


def test_a_run_that_reports_nothing_still_says_so(client, schedule):
    run = running_run(schedule)
    progress = section(run_page(client, run), "run-progress")
    assert "Progress is not reported by this job: it is running on worker-a" in progress


def test_a_run_waiting_for_a_concurrency_place_says_what_for_and_since_when(client, schedule):
    run = waiting_run(schedule, timedelta(minutes=2, seconds=5))

    progress = section(run_page(client, run), "run-progress")

    assert "Waiting for a place: a place of heartbeat (max_concurrency=2): 2 running, since " in progress
    assert "(2 min 5 s)" in progress or "(2 min 6 s)" in progress
    assert "holds no worker slot" in progress


def test_the_schedule_history_and_the_run_list_show_progress_of_active_runs_only(client, schedule):
    running = running_run(
        schedule,
        progress_done=1,
        progress_total=4,
        progress_message="merging",
        progress_updated_at=timezone.now(),
    )
    waiting = waiting_run(schedule, timedelta(seconds=30))
    finished = JobRun.objects.create(
        schedule=schedule, job="heartbeat", scheduled_for=timezone.now() - timedelta(hours=1),
        status=RunStatus.SUCCEEDED, progress_done=4, progress_total=4, progress_updated_at=timezone.now(),
    )  # fmt: skip

    html = client.get(
        reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk])
    ).content.decode()
    history = html.split('id="schedule-history"')[1].split("</table>")[0]
    rows = {
        run_id: next(row for row in history.split('<tr class="run-row')[1:] if str(run_id) in row)
        for run_id in (running.pk, waiting.pk, finished.pk)
    }
    assert '<td class="run-progress">25 % · 1 / 4 · merging</td>' in rows[running.pk]
    assert "waiting: a place of heartbeat (max_concurrency=2): 2 running" in rows[waiting.pk]
    assert '<td class="run-progress">–</td>' in rows[finished.pk]

    listing = client.get(reverse("admin:jobs_jobrun_changelist")).content.decode()
    cells = listing.split('<td class="field-progress">')[1:]
    assert sorted(cell.split("</td>")[0] for cell in cells) == sorted(
        ["25 % · 1 / 4 · merging", "waiting: a place of heartbeat (max_concurrency=2): 2 running", "–"]
    )


def test_the_api_gives_progress_and_waiting_or_null(schedule):
    reader = ApiClient(token_for(user_with("reader", "jobs.view_jobrun")))
    moment = timezone.now().replace(microsecond=0)
    running = running_run(
        schedule, progress_done=7, progress_total=9, progress_message="chunk 7", progress_updated_at=moment
    )
    waiting = waiting_run(schedule, timedelta(seconds=10))
    finished = JobRun.objects.create(
        schedule=schedule,
        job="heartbeat",
        scheduled_for=moment - timedelta(hours=1),
        status=RunStatus.SUCCEEDED,
    )

    got = reader.get(f"runs/{running.pk}").json()
    assert got["progress"] == {
        "done": 7,
        "total": 9,
        "message": "chunk 7",
        "updated_at": got["progress"]["updated_at"],
    }
    assert got["progress"]["updated_at"].startswith(moment.strftime("%Y-%m-%dT%H:%M:%S"))
    assert got["waiting"] is None

    got = reader.get(f"runs/{waiting.pk}").json()
    assert got["progress"] is None
    assert got["waiting"]["for"] == "a place of heartbeat (max_concurrency=2): 2 running"
    assert waiting.waiting_since is not None
    assert got["waiting"]["since"].startswith(waiting.waiting_since.strftime("%Y-%m-%dT%H:%M:%S"))

    listed = {item["id"]: item for item in reader.get("runs").json()["items"]}
    assert listed[str(finished.pk)]["progress"] is None and listed[str(finished.pk)]["waiting"] is None
    assert listed[str(running.pk)]["progress"]["done"] == 7
    assert listed[str(waiting.pk)]["waiting"]["for"].startswith("a place of heartbeat")


def test_a_panel_added_by_an_app_on_top_shows_below_the_run_and_a_broken_one_does_not_break_the_page(
    client, schedule
):
    run = running_run(schedule)

    def hello(shown: JobRun):
        from django.utils.html import format_html

        return format_html('<div class="module" id="hello-panel">run {}</div>', shown.pk)

    def broken(shown: JobRun):
        raise RuntimeError("panel bug")

    register_run_panel(hello)
    register_run_panel(broken)
    register_run_panel(hello)  # once only
    try:
        html = run_page(client, run)
    finally:
        unregister_run_panel(hello)
        unregister_run_panel(broken)

    assert html.count('id="hello-panel"') == 1 and f"run {run.pk}" in html
    assert html.index('id="run-summary"') < html.index('id="hello-panel"')
    assert "could not be shown" in html and "broken" in html
    assert 'id="hello-panel"' not in run_page(client, run)
