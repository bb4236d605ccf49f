"""A run's page: its error, traceback (preformatted), attempts, Sentry and progress sections; read-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs import runs
from jobs.models import JobDefinition, JobRun, RunStatus

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
TRACEBACK = (
    'Traceback (most recent call last):\n  File "job.py", line 3, in run\n    check(url)\nValueError: <bad>'
)


@pytest.fixture
def client(alices_client):
    return alices_client


@pytest.fixture
def task() -> PeriodicTask:
    crontab = CrontabSchedule.objects.create(minute="0", hour="9", timezone="UTC")
    return PeriodicTask.objects.create(name="nightly", task="heartbeat", crontab=crontab)


def page(client, run: JobRun) -> str:
    response = client.get(reverse("admin:jobs_jobrun_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_failed_run_shows_its_error_and_its_traceback_preformatted_and_escaped(client, task, settings):
    settings.SENTRY_DSN = ""
    run = JobRun.objects.create(
        schedule=task, job="heartbeat", scheduled_for=T0, status=RunStatus.FAILED, attempt=1,
        worker="worker-a", started_at=T0, finished_at=T0 + timedelta(seconds=3), duration_ms=3000,
        error_type="ValueError", error_message="<bad>\nsecond line", traceback=TRACEBACK,
    )  # fmt: skip

    html = page(client, run)

    assert "Failed after 3.0 s" in html
    assert 'class="errornote">ValueError: &lt;bad&gt;\nsecond line</p>' in html
    traceback = html.split('<div id="run-traceback">')[1].split("</pre>")[0]
    assert "<pre" in traceback and "line 3, in run\n    check(url)\nValueError: &lt;bad&gt;" in traceback
    assert "Attempt 1 of at most 1, the latest on worker-a, started 2026-11-30 02:00:00 UTC." in html
    assert "earlier attempt" not in html
    assert "Sentry is off" in html
    assert 'id="run-progress"' not in html  # only while waiting or running
    assert 'name="_save"' not in html  # read-only


def test_a_run_that_retried_says_what_its_attempts_left(client, task):
    JobDefinition.objects.filter(name="heartbeat").update(max_retries=2)
    run = JobRun.objects.create(
        schedule=task, job="heartbeat", scheduled_for=T0, status=RunStatus.RUNNING, attempt=1, worker="w1",
        started_at=T0,
    )  # fmt: skip
    error = runs.RunError(type="OSError", message="disk full", traceback="Traceback ...\nOSError: disk full")
    assert runs.mark_retrying(run, error, retry_at=T0 + timedelta(minutes=1))
    started = runs.start_run(str(run.pk), job="heartbeat", attempt=2, worker="w2", max_attempts=3,
                             now=T0 + timedelta(minutes=1))  # fmt: skip
    assert isinstance(started, JobRun) and started.attempt == 2

    html = page(client, run)

    assert "Attempt 2 of at most 3, the latest on w2, started 2026-11-30 02:01:00 UTC." in html
    assert "1 earlier attempt failed or was lost" in html
    assert "OSError: disk full (retry at 2026-11-30T02:01:00+00:00)" in html
    progress = html.split('<div id="run-progress">')[1].split("</div>")[0]
    assert "Progress is not reported by this job: it is running on w2" in progress


def test_a_queued_run_has_a_progress_place_and_no_error(client, task):
    run = JobRun.objects.create(schedule=task, job="heartbeat", scheduled_for=T0, status=RunStatus.QUEUED)
    html = page(client, run)
    assert "Not started yet (Queued)" in html
    assert "No error recorded." in html and "Never started." in html


def test_a_failed_runs_sentry_event_is_linked_when_sentry_web_url_says_where(client, task, settings):
    settings.SENTRY_DSN = "https://key@sentry.invalid/1"
    failed = JobRun.objects.create(
        schedule=task, job="heartbeat", scheduled_for=T0, status=RunStatus.FAILED,
        error_type="DrillFailure", error_message="boom", sentry_event_id="0123456789abcdef0123456789abcdef",
    )  # fmt: skip
    settings.SENTRY_WEB_URL = ""
    assert "Its event id is <code>0123456789abcdef0123456789abcdef</code>" in page(client, failed)
    settings.SENTRY_WEB_URL = "https://acme.sentry.io"
    assert (
        '<a href="https://acme.sentry.io/issues/?query=0123456789abcdef0123456789abcdef" rel="noopener">'
        in page(client, failed)
    )


def test_a_failure_without_an_event_id_is_found_by_the_run_tag(client, task, settings):
    settings.SENTRY_DSN = "https://key@sentry.invalid/1"
    failed = JobRun.objects.create(
        schedule=task, job="heartbeat", scheduled_for=T0, status=RunStatus.HARD_TIMEOUT,
        error_type="TimeLimitExceeded", error_message="hard limit 60 s",
    )  # fmt: skip
    succeeded = JobRun.objects.create(
        schedule=task, job="heartbeat", scheduled_for=T0 + timedelta(hours=1), status=RunStatus.SUCCEEDED
    )
    assert f"search <code>run:{failed.pk}</code>" in page(client, failed)
    assert "No Sentry event: the run did not fail." in page(client, succeeded)
    assert "<a" not in page(client, failed).split('<div id="run-sentry">')[1].split("</div>")[0]


def test_the_schedule_page_shows_its_last_20_runs_linking_to_each_run_and_to_all(client, task):
    made = [
        JobRun.objects.create(
            schedule=task, job="heartbeat", scheduled_for=T0 + timedelta(days=k), status=RunStatus.SUCCEEDED,
            lateness_ms=120, duration_ms=2500, worker=f"worker-{k}",
        )
        for k in range(22)
    ]  # fmt: skip
    made[-1].status, made[-1].error_type = RunStatus.FAILED, "KeyError"
    made[-1].error_message = "'host'\nmore detail"
    made[-1].save()

    response = client.get(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]))
    html = response.content.decode()
    history = html.split('id="schedule-history"')[1].split("</table>")[0]

    assert history.count('<tr class="run-row') == 20
    assert reverse("admin:jobs_jobrun_change", args=[made[-1].pk]) in history
    assert reverse("admin:jobs_jobrun_change", args=[made[1].pk]) not in history  # the 21st newest
    assert "KeyError: &#x27;host&#x27;</td>" in history  # the error's first line only
    assert "120 ms" in history and "2.5 s" in history and "worker-21" in history
    assert "2026-12-21 02:00:00 UTC" in history
    assert f'href="{reverse("admin:jobs_jobrun_changelist")}?schedule={task.pk}"' in html
