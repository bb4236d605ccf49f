"""The run summary / SLA report: every figure per job and per schedule, computed by the database.

Runs are written with known statuses, slots, durations and lateness; each
figure is asserted exactly (PostgreSQL's ``percentile_cont`` and the SQLite
fallback give the same interpolated values).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.models import JobRun, RunStatus
from reports.builtin.run_summary import COLUMNS, run_summary_rows

pytestmark = pytest.mark.django_db

# Far from the wall clock: runs other tests leave behind never fall in the window.
END = datetime(2020, 6, 1, 12, 0, tzinfo=UTC)
START = END - timedelta(hours=24)
OK, FAIL, MISS, SKIP = RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.MISSED, RunStatus.SKIPPED


def schedule(name: str, job: str = "heartbeat") -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    # Bulk-created: no signals, so no catalog or validation is needed for a report on runs.
    (task,) = PeriodicTask.objects.bulk_create([PeriodicTask(name=name, task=job, interval=every)])
    return task


def run(job: str, status: str, minutes: float, *, task=None, duration_ms=None, lateness_ms=None) -> JobRun:
    """A run of ``job`` whose slot is ``minutes`` after the window's start (negative: before it)."""
    return JobRun.objects.create(
        job=job,
        schedule=task,
        schedule_name=task.name if task else "",
        status=status,
        scheduled_for=START + timedelta(minutes=minutes),
        duration_ms=duration_ms,
        lateness_ms=lateness_ms,
    )


def summary(start: datetime = START, end: datetime = END) -> list[dict]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in run_summary_rows(start, end)]


def job_row(rows: list[dict], job: str) -> dict:
    (row,) = [r for r in rows if r["scope"] == "job" and r["job"] == job]
    return row


def schedule_row(rows: list[dict], task: PeriodicTask) -> dict:
    (row,) = [r for r in rows if r["scope"] == "schedule" and r["schedule_id"] == task.pk]
    return row


def test_it_counts_runs_by_status_and_works_out_the_success_rate():
    for minute, status in enumerate([OK, OK, OK, FAIL, RunStatus.SOFT_TIMEOUT, MISS, SKIP, RunStatus.QUEUED]):
        run("heartbeat", status, minute * 10, duration_ms=100 if status in (OK, FAIL) else None)
    run("heartbeat", OK, -10)  # before the window
    run("heartbeat", FAIL, 24 * 60)  # at the window's end: outside it (the end is excluded)

    row = job_row(summary(), "heartbeat")

    assert row["runs"] == 8
    assert (row["succeeded"], row["failed"], row["soft_timeout"]) == (3, 1, 1)
    assert (row["missed"], row["skipped"], row["queued"], row["lost"]) == (1, 1, 1, 0)
    assert row["success_rate"] == 0.6  # 3 of the 5 that ended with an outcome; missed/skipped/queued aside


def test_it_gives_interpolated_percentiles_and_maxima_of_duration_and_lateness():
    for i in range(1, 101):  # durations 10..1000 ms, lateness 100..10000 ms
        run("reports.run_summary", OK, i, duration_ms=i * 10, lateness_ms=i * 100)
    run("reports.run_summary", MISS, 200)  # no duration, no lateness: not in the percentiles

    row = job_row(summary(), "reports.run_summary")

    assert row["p50_duration_ms"] == 505.0  # percentile_cont: halfway between the 50th and 51st values
    assert row["p95_duration_ms"] == 950.5  # the 95th value and 5 % of the way to the 96th
    assert row["max_duration_ms"] == 1000
    assert row["p95_lateness_ms"] == 9505.0
    assert row["max_lateness_ms"] == 10000


def test_a_job_with_no_outcome_yet_has_no_rate_and_no_percentiles():
    run("diagnostics.sleep", RunStatus.RUNNING, 5)

    row = job_row(summary(), "diagnostics.sleep")

    assert row["runs"] == 1 and row["running"] == 1
    assert row["success_rate"] is None
    assert row["p50_duration_ms"] is None and row["max_lateness_ms"] is None
    assert row["longest_failure_streak"] == 0


def test_each_schedule_has_its_own_row_after_its_jobs_row():
    nightly, hourly = schedule("nightly"), schedule("hourly")
    run("heartbeat", OK, 1, task=nightly, duration_ms=10)
    run("heartbeat", FAIL, 2, task=nightly, duration_ms=30)
    for minute in range(3):
        run("heartbeat", OK, 10 + minute, task=hourly, duration_ms=1000)
    run("heartbeat", OK, 20, duration_ms=7)  # dispatched by job name: in the job's row only

    rows = [r for r in summary() if r["job"] == "heartbeat"]

    assert [(r["scope"], r["schedule"]) for r in rows] == [
        ("job", ""),
        ("schedule", "hourly"),
        ("schedule", "nightly"),
    ]
    assert rows[0]["runs"] == 6 and rows[0]["success_rate"] == round(5 / 6, 4)
    nightly_row = schedule_row(rows, nightly)
    assert (nightly_row["runs"], nightly_row["succeeded"], nightly_row["failed"]) == (2, 1, 1)
    assert nightly_row["success_rate"] == 0.5
    assert nightly_row["p50_duration_ms"] == 20.0  # 10 and 30
    assert schedule_row(rows, hourly)["max_duration_ms"] == 1000


def test_the_longest_failure_streak_counts_bad_runs_in_a_row_until_a_success():
    task = schedule("flaky")
    # F F ok F F F(timeout) missed F lost ok F  → 5 in a row: a missed slot neither breaks nor extends it
    statuses = [FAIL, FAIL, OK, FAIL, FAIL, RunStatus.HARD_TIMEOUT, MISS, FAIL, RunStatus.LOST, OK, FAIL]
    for minute, status in enumerate(statuses):
        run("heartbeat", status, minute, task=task)

    rows = summary()

    assert schedule_row(rows, task)["longest_failure_streak"] == 5
    assert job_row(rows, "heartbeat")["longest_failure_streak"] == 5


def test_a_streak_across_the_windows_start_counts_only_its_runs_inside():
    task = schedule("broken")
    for minute in (-30, -20, -10):  # three failures before the window
        run("heartbeat", FAIL, minute, task=task)
    for minute in (0, 10):  # two inside it, then a success
        run("heartbeat", FAIL, minute, task=task)
    run("heartbeat", OK, 20, task=task)

    assert schedule_row(summary(), task)["longest_failure_streak"] == 2
    # A window that starts earlier sees all five.
    assert schedule_row(summary(START - timedelta(hours=1)), task)["longest_failure_streak"] == 5


def test_a_jobs_streak_follows_its_runs_across_schedules_in_slot_order():
    a, b = schedule("a"), schedule("b")
    # By slot: a F, b F, a F, b ok, a F → the job's streak is 3; a's own is 3 (nothing between), b's is 1.
    run("heartbeat", FAIL, 1, task=a)
    run("heartbeat", FAIL, 2, task=b)
    run("heartbeat", FAIL, 3, task=a)
    run("heartbeat", OK, 4, task=b)
    run("heartbeat", FAIL, 5, task=a)

    rows = summary()

    assert job_row(rows, "heartbeat")["longest_failure_streak"] == 3
    assert schedule_row(rows, a)["longest_failure_streak"] == 3
    assert schedule_row(rows, b)["longest_failure_streak"] == 1


def test_an_empty_window_has_no_rows():
    run("heartbeat", OK, -60)

    assert summary() == []
    assert summary(START, START) == []


def test_it_refuses_a_window_that_ends_before_it_starts():
    with pytest.raises(ValueError, match="ends .* before it starts"):
        summary(END, START)
