"""Run history in the admin, in a real browser (report files: tests/browser/test_report_progress.py).

The history list shows every run and filters by status; from the schedule
list, a failed last run leads to the schedule's history and to the run's page
(error, traceback, attempts).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.urls import reverse
from playwright.sync_api import Page, expect

from jobs.models import JobRun, RunStatus


def record_runs(schedule) -> tuple[JobRun, JobRun]:
    """One succeeded and one failed heartbeat run of ``schedule``, in the last hours."""
    slot = datetime.now(UTC).replace(second=0, microsecond=0)
    succeeded = JobRun.objects.create(
        job="heartbeat",
        schedule=schedule,
        schedule_name=schedule.name,
        status=RunStatus.SUCCEEDED,
        scheduled_for=slot - timedelta(hours=2),
        started_at=slot - timedelta(hours=2) + timedelta(milliseconds=150),
        finished_at=slot - timedelta(hours=2) + timedelta(milliseconds=400),
        lateness_ms=150,
        duration_ms=250,
        worker="worker-a",
    )
    failed = JobRun.objects.create(
        job="heartbeat",
        schedule=schedule,
        schedule_name=schedule.name,
        status=RunStatus.FAILED,
        scheduled_for=slot - timedelta(hours=1),
        started_at=slot - timedelta(hours=1) + timedelta(milliseconds=90),
        finished_at=slot - timedelta(hours=1) + timedelta(seconds=5),
        lateness_ms=90,
        duration_ms=4910,
        worker="worker-b",
        error_type="TargetCheckFailed",
        error_message="https://example.invalid/health: connection refused",
    )
    return succeeded, failed


def test_it_shows_runs_in_the_history_list(page: Page, seeded_schedules) -> None:
    record_runs(seeded_schedules["heartbeat"])
    page.goto(reverse("admin:jobs_jobrun_changelist"))

    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    failed, succeeded = RunStatus.FAILED.label, RunStatus.SUCCEEDED.label  # "Failed", "Succeeded"
    expect(rows.locator("td.field-status")).to_have_text([failed, succeeded])  # newest first
    expect(rows.locator("td.field-worker")).to_have_text(["worker-b", "worker-a"])

    page.locator("#changelist-filter").get_by_role("link", name=failed, exact=True).click()

    expect(page).to_have_url(re.compile(r"[?&]status__exact=failed(&|$)"))
    expect(rows).to_have_count(1)
    expect(rows.locator("td.field-status")).to_have_text([failed])
    expect(rows.locator("td.field-worker")).to_have_text(["worker-b"])


def test_from_a_failed_last_run_to_its_history_and_its_run_page(page: Page, seeded_schedules) -> None:
    schedule = seeded_schedules["heartbeat"]
    succeeded, failed = record_runs(schedule)
    JobRun.objects.filter(pk=failed.pk).update(
        traceback='Traceback (most recent call last):\n  File "check.py", line 9\nTargetCheckFailed: refused'
    )
    page.goto(reverse("admin:django_celery_beat_periodictask_changelist") + "?last_run=failed")

    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td.field-failure_streak")).to_have_text("1")
    expect(row.locator("td.field-last_run")).to_contain_text("Failed · 4.9 s")
    row.locator("th.field-name a").click()

    history = page.locator("#schedule-history")
    expect(history.locator("tr.run-row")).to_have_count(2)
    expect(history.locator("tr.run-row").first).to_contain_text("TargetCheckFailed: https://example.invalid")
    expect(history.locator("tr.run-row").nth(1)).to_contain_text("worker-a")
    expect(history.get_by_role("link", name="All runs of this schedule")).to_have_attribute(
        "href", re.compile(rf"\?schedule={schedule.pk}$")
    )
    history.get_by_role("link", name="Failed").click()

    expect(page).to_have_url(re.compile(rf"/jobs/jobrun/{failed.pk}/change/$"))
    expect(page.locator("#run-error")).to_contain_text("TargetCheckFailed: https://example.invalid/health")
    expect(page.locator("#run-traceback pre")).to_contain_text('File "check.py", line 9')
    expect(page.locator("#run-attempts")).to_contain_text("the latest on worker-b")
    expect(page.locator("input[name=_save]")).to_have_count(0)
