"""Chunked reports over a real worker: a Celery chord over Redis, progress while it runs, retries, failure.

The report is ``reports.diagnostics.runs_of_job`` (chunks of 1,000 rows,
a 5 s soft limit per chunk, 2 retries), reading ``JobRun`` rows the test
inserts under a job name of its own. The worker is the session's (queues
default, heartbeat, reports); its files are in its own ``VAR_DIR``.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from django.core.files.storage import FileSystemStorage

import reports.tasks  # noqa: F401  # the reports, so the catalog the test publishes has them
from jobs.catalog import publish_catalog
from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus
from reports.chunking import chunk_task_id
from reports.models import ReportFile
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

REPORT = "reports.diagnostics.runs_of_job"
CHUNK_SIZE = 1000  # the diagnostics report's
WINDOW_START = datetime(2021, 3, 1, tzinfo=UTC)
WINDOW = {
    "window_start": WINDOW_START.isoformat(),
    "window_end": (WINDOW_START + timedelta(days=5)).isoformat(),
}


@pytest.fixture
def report_storage(service_env) -> FileSystemStorage:
    """The worker's reports storage (its VAR_DIR is not this process's)."""
    return FileSystemStorage(location=Path(service_env["VAR_DIR"]) / "reports")


@pytest.fixture
def reports_ready(worker, clean_queues) -> None:
    publish_catalog(worker="tests")


def input_runs(count: int) -> tuple[str, list[JobRun]]:
    """``count`` runs of a fresh job name in the window, ``attempt`` numbered 0…count-1; in pk order."""
    job_name = f"input-{uuid4()}"
    rows = [
        JobRun(
            job=job_name,
            status=RunStatus.SUCCEEDED,
            scheduled_for=WINDOW_START + timedelta(seconds=i),
            attempt=i,
        )
        for i in range(count)
    ]
    JobRun.objects.bulk_create(rows, batch_size=1000)
    return job_name, sorted(rows, key=lambda r: r.pk)


def csv_rows(storage: FileSystemStorage, run: JobRun) -> list[list[str]]:
    file = ReportFile.objects.get(run=run, format="csv")
    with storage.open(file.storage_name, "rb") as fh:
        return list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


def expected_csv(job_name: str, inputs: list[JobRun]) -> list[list[str]]:
    header = ["run", "job", "attempt", "scheduled_for"]
    return [header, *[[str(r.pk), job_name, str(r.attempt), r.scheduled_for.isoformat()] for r in inputs]]


def assert_cleaned_up(storage: FileSystemStorage, redis_client, run: JobRun, chunks: int) -> None:
    assert not Path(storage.path(f"parts/{run.pk}")).exists()
    for index in range(chunks):
        assert not redis_client.exists(f"celery-task-meta-{chunk_task_id(run.pk, index)}")


def lasting_keys(redis_client) -> set[bytes]:
    """The result backend's keys that never expire (Celery's results and chord bookkeeping)."""
    return {k for k in redis_client.keys("celery-task*") if redis_client.ttl(k) == -1}


def test_a_chunked_report_runs_as_a_chord_with_progress_moving_while_it_runs(
    reports_ready, report_storage, redis_client
):
    job_name, inputs = input_runs(3 * CHUNK_SIZE)
    lasting_before = lasting_keys(redis_client)

    run = dispatch(REPORT, kwargs={"job_name": job_name, "pause_per_row": 0.002, **WINDOW})

    seen_while_running: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        current = JobRun.objects.get(pk=run.pk)
        if current.status in (RunStatus.QUEUED, RunStatus.RUNNING):
            if current.status == RunStatus.RUNNING and current.progress_done is not None:
                seen_while_running.append(current.progress_done)
                assert current.progress_total == 3 * CHUNK_SIZE
            time.sleep(0.1)
            continue
        break
    done = wait_for_run(run.pk, timeout=5)

    assert done.status == RunStatus.SUCCEEDED, done.error_message
    moving = sorted(set(v for v in seen_while_running if 0 < v < 3 * CHUNK_SIZE))
    assert len(moving) >= 2, f"progress seen while running: {sorted(set(seen_while_running))}"
    assert seen_while_running == sorted(seen_while_running)  # it only grows
    assert (done.progress_done, done.progress_total) == (3000, 3000)
    assert done.result is not None and done.result["rows"] == 3000 and done.result["chunks"] == 3
    assert csv_rows(report_storage, done) == expected_csv(job_name, inputs)
    assert sorted(ReportFile.objects.filter(run=done).values_list("format", flat=True)) == ["csv", "json"]
    assert_cleaned_up(report_storage, redis_client, done, 3)
    assert lasting_keys(redis_client) - lasting_before == set()  # the chord left nothing for good


def test_a_chunk_past_its_soft_limit_is_retried_and_the_report_is_still_whole(
    reports_ready, worker, report_storage, redis_client
):
    job_name, inputs = input_runs(3 * CHUNK_SIZE)
    once = f"tests:report-stall:{uuid4()}"

    run = dispatch(
        REPORT, kwargs={"job_name": job_name, "stall_at_attempt": 1500, "stall_once_key": once, **WINDOW}
    )
    done = wait_for_run(run.pk, timeout=90)

    assert redis_client.exists(once)  # the first attempt stalled (60 s asleep, stopped by its 5 s soft limit)
    retried = [
        line for line in worker.log().splitlines() if f"run {run.pk}: chunk" in line and "retrying" in line
    ]
    assert len(retried) == 1 and "SoftTimeLimitExceeded" in retried[0], retried
    assert done.status == RunStatus.SUCCEEDED, done.error_message
    assert csv_rows(report_storage, done) == expected_csv(job_name, inputs)
    # The retry added only what its first attempt had not: no row counted twice.
    assert (done.progress_done, done.progress_total) == (3000, 3000)
    assert_cleaned_up(report_storage, redis_client, done, 3)


def test_a_chunk_that_keeps_failing_fails_the_report_cleanly(reports_ready, report_storage, redis_client):
    job_name, inputs = input_runs(3 * CHUNK_SIZE)
    failing = next(i for i, r in enumerate(inputs) if r.attempt == 1500)
    chunk = failing // CHUNK_SIZE + 1
    low = inputs[(chunk - 1) * CHUNK_SIZE - 1].pk if chunk > 1 else None
    high = inputs[chunk * CHUNK_SIZE - 1].pk if chunk < 3 else None
    where = {None: f"pk ≤ {high}", 1: f"pk > {low} and ≤ {high}", 2: f"pk > {low}"}[
        None if low is None else (1 if high else 2)
    ]

    lasting_before = lasting_keys(redis_client)

    run = dispatch(REPORT, kwargs={"job_name": job_name, "fail_at_attempt": 1500, **WINDOW})
    done = wait_for_run(run.pk, timeout=90)

    assert done.status == RunStatus.FAILED
    assert done.error_message == (
        f"chunk {chunk} of 3 ({where}) failed after 3 attempts: "
        "DrillFailure: the run with attempt 1500 was asked to fail"
    )
    assert not ReportFile.objects.filter(run=done).exists()  # never a partial file
    assert_cleaned_up(report_storage, redis_client, done, 3)
    deadline = time.monotonic() + 30  # what Celery keeps of the failed chord goes a few seconds later
    while lasting_keys(redis_client) - lasting_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lasting_keys(redis_client) - lasting_before == set()


def test_a_chunk_killed_at_its_hard_limit_fails_the_report_cleanly(
    reports_ready, report_storage, redis_client
):
    job_name, inputs = input_runs(3 * CHUNK_SIZE)
    failing = next(i for i, r in enumerate(inputs) if r.attempt == 1500)
    chunk = failing // CHUNK_SIZE + 1
    once = f"tests:report-stall:{uuid4()}"
    lasting_before = lasting_keys(redis_client)

    run = dispatch(
        REPORT,
        kwargs={
            "job_name": job_name,
            "stall_at_attempt": 1500,
            "stall_once_key": once,
            "stall_past_soft_limit": True,
            **WINDOW,
        },
    )
    done = wait_for_run(run.pk, timeout=90)

    # Killed by its 10 s hard limit: Celery records the failure from the worker's main process,
    # which calls the chord's error callback there.
    assert done.status == RunStatus.FAILED
    assert done.error_message.startswith(f"chunk {chunk} of 3 (pk "), done.error_message
    assert "failed: TimeLimitExceeded" in done.error_message
    assert not ReportFile.objects.filter(run=done).exists()
    deadline = time.monotonic() + 30
    while lasting_keys(redis_client) - lasting_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lasting_keys(redis_client) - lasting_before == set()
    assert_cleaned_up(report_storage, redis_client, done, 3)


def test_a_small_input_runs_inline_on_the_worker(reports_ready, report_storage):
    job_name, inputs = input_runs(50)

    run = dispatch(REPORT, kwargs={"job_name": job_name, **WINDOW})
    done = wait_for_run(run.pk, timeout=60)

    assert done.status == RunStatus.SUCCEEDED, done.error_message
    assert done.result is not None and "chunks" not in done.result
    assert csv_rows(report_storage, done) == expected_csv(job_name, inputs)
    assert (done.progress_done, done.progress_total) == (50, 50)


def test_a_window_ending_before_it_starts_fails_the_run_at_once(reports_ready):
    run = dispatch(
        REPORT,
        kwargs={
            "job_name": "x",
            "window_start": "2021-03-02T00:00:00+00:00",
            "window_end": "2021-03-01T00:00:00Z",
        },
    )
    done = wait_for_run(run.pk, timeout=60)

    assert done.status == RunStatus.FAILED
    assert done.error_type == "reports.definitions.ReportInputError"
    assert done.error_message == (
        f"report {REPORT}: the window ends (2021-03-01T00:00:00+00:00) "
        "before it starts (2021-03-02T00:00:00+00:00)"
    )
    assert not ReportFile.objects.filter(run=done).exists()


def test_a_report_s_max_concurrency_lets_that_many_of_its_chunks_read_at_once(reports_ready, report_storage):
    from jobs.models import ConcurrencyLease
    from reports.chunking import chunk_places_key

    report = "reports.diagnostics.runs_of_job_one_chunk_at_a_time"  # max_concurrency=1, chunks of 1,000
    job_name, inputs = input_runs(3 * CHUNK_SIZE)

    run = dispatch(report, kwargs={"job_name": job_name, "pause_per_row": 0.0005, **WINDOW})
    held: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        held.append(ConcurrencyLease.objects.filter(key=chunk_places_key(report)).count())
        if JobRun.objects.filter(pk=run.pk, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
            time.sleep(0.05)
            continue
        break
    done = wait_for_run(run.pk, timeout=5)

    assert done.status == RunStatus.SUCCEEDED, done.error_message
    assert max(held) == 1  # chunks read one at a time, on a worker with two processes
    assert csv_rows(report_storage, done)[1:] == expected_csv(job_name, inputs)[1:]
    assert not ConcurrencyLease.objects.filter(key=chunk_places_key(report)).exists()  # all given back


def test_chunks_of_a_run_that_ended_meanwhile_compute_nothing_and_leave_nothing(
    reports_ready, report_storage, redis_client, worker
):
    from django.utils import timezone

    from jobs.runs import end_replaced_runs

    job_name, _ = input_runs(6 * CHUNK_SIZE)  # six chunks of ~2 s on a worker with two processes
    run = dispatch(REPORT, kwargs={"job_name": job_name, "pause_per_row": 0.002, **WINDOW})
    deadline = time.monotonic() + 60
    while not JobRun.objects.filter(pk=run.pk, progress_done__gt=0).exists():
        assert time.monotonic() < deadline, "the first chunks never moved the progress"
        time.sleep(0.1)

    # A newer slot replaces it (overlap "replace"), while its first chunks run and four wait.
    assert end_replaced_runs([run.pk], timezone.now()) == 1
    worker.wait_for_log("not computed: its run is failed", timeout=60)

    deadline = time.monotonic() + 30  # the chord's error callback cleans up once a chunk failed
    while Path(report_storage.path(f"parts/{run.pk}")).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = JobRun.objects.get(pk=run.pk)
    assert (ended.status, ended.error_type) == (RunStatus.FAILED, "Replaced")  # its record is kept
    assert not ReportFile.objects.filter(run=run.pk).exists()
    assert_cleaned_up(report_storage, redis_client, ended, 6)
