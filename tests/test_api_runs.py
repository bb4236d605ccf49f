"""Run now over the API (a job, a schedule), idempotency keys, a run, the run history by cursor."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.models import JobRun, RunOrigin, RunStatus
from tests.conftest import wait_for_run
from tests.support.api_client import ApiClient, token_for, user_with
from tests.support.queues import empty_queues
from tests.support.threads import at_once

pytestmark = pytest.mark.django_db(transaction=True)

RUNNER = ("scheduler.run_schedule", "jobs.view_jobrun", "jobs.view_jobdefinition")
# Runs that must not run: no worker consumes this queue (the session's worker
# would otherwise take them after this test's tables are emptied).
IDLE_QUEUE = "api-tests"


@pytest.fixture
def runner(catalog):
    empty_queues([IDLE_QUEUE])
    yield ApiClient(token_for(user_with("runner", *RUNNER)))
    empty_queues([IDLE_QUEUE])


def test_the_catalog_lists_the_published_jobs(runner):
    response = runner.get("jobs")
    assert response.status_code == 200
    jobs = {job["name"]: job for job in response.json()}
    sleep = jobs["diagnostics.sleep"]
    assert sleep["queue"] == "default" and sleep["soft_time_limit"] == 60 and sleep["hard_time_limit"] == 90
    assert [p["name"] for p in sleep["parameters"]] == ["seconds", "ignore_soft_limit"]
    assert (sleep["max_concurrency"], sleep["rate_limit"]) == (None, "")
    assert jobs["diagnostics.two_at_a_time"]["max_concurrency"] == 2


@pytest.mark.slow
def test_a_job_run_now_reaches_the_worker_and_is_followed_by_its_url(runner, worker):
    response = runner.post("jobs/diagnostics.sleep/runs", {"kwargs": {"seconds": 0.1}})
    assert response.status_code == 202, response.content
    accepted = response.json()
    assert accepted["status"] == "queued" and accepted["delivery"] == "sent" and not accepted["replayed"]
    assert response["Location"] == accepted["url"] == f"http://testserver/api/v1/runs/{accepted['id']}"
    wait_for_run(accepted["id"])
    run = runner.get(accepted["url"]).json()
    assert run["status"] == "succeeded", run
    assert run["result"] == {"slept": 0.1} and run["error"] is None and run["progress"] is None
    assert run["origin"] == "client" and run["requested_by"] == "runner"
    assert run["started_at"] <= run["finished_at"] and run["duration_ms"] is not None


@pytest.mark.slow
def test_a_failed_run_shows_its_error(runner, worker):
    accepted = runner.post("jobs/diagnostics.fail/runs", {"args": ["on purpose"]}).json()
    wait_for_run(accepted["id"])
    run = runner.get(f"runs/{accepted['id']}").json()
    assert run["status"] == "failed"
    assert run["error"]["type"].endswith("DrillFailure") and run["error"]["message"] == "on purpose"


def test_unknown_jobs_and_bad_arguments_are_422s_naming_the_field_and_record_nothing(runner):
    cases = [
        ("jobs/no.such.job/runs", {}, "name", "Unknown job"),
        ("jobs/diagnostics.sleep/runs", {"kwargs": {"seconds": "long"}}, None, "seconds"),
        ("jobs/diagnostics.sleep/runs", {"args": [1, 2, 3, 4]}, None, "argument"),
        ("jobs/diagnostics.sleep/runs", {"args": "not a list"}, "args", ""),
        (
            "jobs/diagnostics.sleep/runs",
            {"kwargs": {"seconds": 1}, "soft_time_limit": 0},
            "soft_time_limit",
            "",
        ),
        ("jobs/diagnostics.sleep/runs", {"kwargs": {"seconds": 1}, "colour": "red"}, None, ""),
    ]
    for path, body, field, words in cases:
        response = runner.post(path, body)
        assert response.status_code == 422, (body, response.content)
        error = response.json()
        assert words in error["message"], (body, error)
        if field is not None:
            assert error["field"] == field, (body, error)
    assert not JobRun.objects.exists()


def test_bad_json_is_a_400_in_the_error_shape(runner):
    for raw in ("{not json", '{"args": ["\\u0000"]}'):
        response = runner.post("jobs/diagnostics.sleep/runs", raw=raw)
        assert response.status_code == 400, raw
        assert response.json()["message"] and response.json()["field"] is None
    assert not JobRun.objects.exists()


def test_the_same_idempotency_key_twice_starts_one_run(runner):
    body = {"kwargs": {"seconds": 0}, "queue": IDLE_QUEUE}
    first = runner.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "order-42"})
    second = runner.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["replayed"] and not first.json()["replayed"]
    assert JobRun.objects.count() == 1
    other = runner.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "order-43"})
    assert other.json()["id"] != first.json()["id"] and JobRun.objects.count() == 2


def test_another_user_with_the_same_key_gets_their_own_run(runner):
    other = ApiClient(token_for(user_with("other", *RUNNER)))
    body = {"kwargs": {"seconds": 0}, "queue": IDLE_QUEUE}
    mine = runner.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "k"}).json()
    theirs = other.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "k"}).json()
    assert mine["id"] != theirs["id"] and JobRun.objects.count() == 2


def test_a_key_reused_for_another_request_is_refused(runner):
    first = {"kwargs": {"seconds": 0}, "queue": IDLE_QUEUE}
    runner.post("jobs/diagnostics.sleep/runs", first, **{"Idempotency-Key": "k"})
    response = runner.post("jobs/diagnostics.sleep/runs", {**first, "args": [5]}, **{"Idempotency-Key": "k"})
    assert response.status_code == 422 and response.json()["field"] == "Idempotency-Key"
    assert JobRun.objects.count() == 1


def test_a_refused_call_does_not_spend_its_key(runner):
    bad = runner.post("jobs/diagnostics.sleep/runs", {"kwargs": {"seconds": "x"}}, **{"Idempotency-Key": "k"})
    assert bad.status_code == 422
    good = runner.post(
        "jobs/diagnostics.sleep/runs", {"kwargs": {"seconds": "x"}}, **{"Idempotency-Key": "k"}
    )
    assert good.status_code == 422  # judged again, not replayed
    assert not JobRun.objects.exists()


def test_concurrent_calls_with_one_key_start_one_run(runner):
    body = {"kwargs": {"seconds": 0}, "queue": IDLE_QUEUE}

    def call() -> str:
        return runner.post("jobs/diagnostics.sleep/runs", body, **{"Idempotency-Key": "race"}).json()["id"]

    ids = at_once(*[call] * 4)
    assert len(ids) == 4 and len(set(ids)) == 1
    assert JobRun.objects.count() == 1


def every_minute(name: str, job: str = "diagnostics.sleep", kwargs: str = '{"seconds": 0}') -> PeriodicTask:
    crontab, _ = CrontabSchedule.objects.get_or_create(minute="*", hour="*", timezone="UTC")
    return PeriodicTask.objects.create(name=name, task=job, crontab=crontab, kwargs=kwargs)


@pytest.mark.slow
def test_a_schedule_run_now_runs_with_its_policy_and_reaches_succeeded(runner, worker):
    schedule = every_minute("api run now")
    response = runner.post(f"schedules/{schedule.pk}/runs", **{"Idempotency-Key": "s1"})
    assert response.status_code == 202, response.content
    again = runner.post(f"schedules/{schedule.pk}/runs", **{"Idempotency-Key": "s1"})
    assert again.json()["id"] == response.json()["id"]
    wait_for_run(response.json()["id"])
    run = runner.get(response.json()["url"]).json()
    assert run["status"] == "succeeded" and run["origin"] == "manual"
    assert run["schedule_id"] == schedule.pk and run["schedule_name"] == "api run now"
    assert JobRun.objects.filter(schedule=schedule).count() == 1


def test_running_an_unknown_schedule_is_a_404(runner):
    response = runner.post("schedules/999999/runs")
    assert response.status_code == 404 and "999999" in response.json()["message"]


def test_an_unknown_run_is_a_404_and_a_bad_id_a_422(runner):
    assert runner.get(f"runs/{uuid.uuid4()}").status_code == 404
    response = runner.get("runs/not-a-uuid")
    assert response.status_code == 422 and response.json()["field"] == "run_id"


def make_runs(
    count: int, start, job: str = "diagnostics.sleep", status=RunStatus.SUCCEEDED, **fields
) -> list:
    runs = [
        JobRun(
            job=job,
            # Without a schedule, pairs share a time: the id breaks the tie.
            scheduled_for=start + timedelta(seconds=i if "schedule" in fields else i // 2),
            status=status,
            origin=RunOrigin.CLIENT,
            **fields,
        )
        for i in range(count)
    ]
    JobRun.objects.bulk_create(runs)
    return runs


def all_pages(client: ApiClient, path: str) -> tuple[list[str], int]:
    ids, pages, url = [], 0, path
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        page = response.json()
        ids += [run["id"] for run in page["items"]]
        pages += 1
        url = page["next"]
    return ids, pages


def test_run_pages_cover_every_run_once_newest_first(runner):
    start = timezone.now() - timedelta(hours=1)
    make_runs(25, start)
    ids, pages = all_pages(runner, "runs?limit=10")
    assert pages == 3 and len(ids) == len(set(ids)) == 25
    expected = list(JobRun.objects.order_by("-scheduled_for", "-id").values_list("id", flat=True))
    assert ids == [str(i) for i in expected]


def test_run_pages_are_stable_across_inserts(runner):
    start = timezone.now() - timedelta(hours=1)
    before = {str(run.id) for run in make_runs(20, start)}
    first = runner.get("runs?limit=7").json()
    seen = [run["id"] for run in first["items"]]
    make_runs(10, timezone.now())  # newer: they belong before the cursor
    make_runs(4, start + timedelta(seconds=3))  # among those already paged and those to come
    url = first["next"]
    while url:
        page = runner.get(url).json()
        seen += [run["id"] for run in page["items"]]
        url = page["next"]
    assert len(seen) == len(set(seen))
    assert before <= set(seen)  # no run that existed is skipped or repeated


def test_runs_filter_by_job_status_schedule_and_time(runner):
    start = timezone.now() - timedelta(days=1)
    schedule = every_minute("filtered")
    make_runs(3, start)
    make_runs(2, start, job="heartbeat", status=RunStatus.FAILED)
    make_runs(2, start + timedelta(hours=2), schedule=schedule, schedule_name="filtered")

    def count(query: str) -> int:
        response = runner.get(f"runs?{query}")
        assert response.status_code == 200, response.content
        return len(response.json()["items"])

    assert count("job=heartbeat") == 2
    assert count("status=failed") == 2
    assert count("status=failed&status=succeeded") == 7
    assert count(f"schedule={schedule.pk}") == 2
    since = (start + timedelta(hours=1)).isoformat()
    assert count(f"since={since.replace('+', '%2B')}") == 2
    assert count(f"until={since.replace('+', '%2B')}") == 5


def test_bad_filters_and_cursors_are_422s_naming_the_field(runner):
    for query, field in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("status=sleeping", "status.0"),
        ("since=yesterday", "since"),
        ("cursor=%21%21", "cursor"),
        ("cursor=WzFd", "cursor"),  # [1]
        ("cursor=WyJ4IiwgInkiXQ", "cursor"),  # ["x", "y"]
    ]:
        response = runner.get(f"runs?{query}")
        assert response.status_code == 422, (query, response.content)
        assert response.json()["field"] == field, (query, response.json())
