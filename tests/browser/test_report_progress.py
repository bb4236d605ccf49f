"""What a person sees of a report run in a real browser: its progress bar, its files, its destinations.

The run page of a running job draws a ``<progress>`` bar with the percent,
the counts and the job's message; a report run's page lists its files (the
download gives the stored bytes) and its deliveries; the schedule page edits
report destinations, refusing a bad one beside its field.
"""

from __future__ import annotations

import re
from datetime import timedelta
from importlib import import_module

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from jobs.models import JobRun, RunStatus
from reports.models import ReportDelivery, ReportDestination, ReportFile

# The seeded "daily summary" schedule runs this job; reports/tasks.py does not import it (yet), and the
# seeding fixture refuses a schedule of a job the catalog lacks.
import_module("reports.builtin.run_summary")

CSV = b"job,runs\r\nheartbeat,96\r\n"


@pytest.fixture(autouse=True)
def reports_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "reports")},
        },
    }


def running_report_run(schedule) -> JobRun:
    now = timezone.now()
    run = JobRun.objects.create(
        schedule=schedule, schedule_name=schedule.name, job=schedule.task, scheduled_for=now,
        status=RunStatus.RUNNING, attempt=1, worker="worker-a", started_at=now - timedelta(seconds=20),
    )  # fmt: skip
    JobRun.objects.filter(pk=run.pk).update(
        progress_done=4200, progress_total=10000, progress_message="chunk 5 of 12",
        progress_updated_at=now - timedelta(seconds=2),
    )  # fmt: skip
    return run


def test_the_run_page_draws_the_progress_bar_and_lists_the_files_and_deliveries(
    page: Page, seeded_schedules
) -> None:
    schedule = seeded_schedules["heartbeat"]
    run = running_report_run(schedule)
    name = storages["reports"].save(f"run_summary/{run.pk}.csv", ContentFile(CSV))
    ReportFile.objects.create(
        run=run, report=schedule.task, format="csv", storage_name=name, size_bytes=len(CSV), rows=1,
        expires_at=timezone.now() + timedelta(days=7),
    )  # fmt: skip
    ReportDelivery.objects.create(
        run=run, kind="slack", target="https://hooks.example.test/x", status="failed", attempts=3,
        last_error="HTTP 500 from https://hooks.example.test/x: down",
    )  # fmt: skip

    page.goto(reverse("admin:jobs_jobrun_change", args=[run.pk]))

    bar = page.locator("#run-progress-bar")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("value", "4200")
    expect(bar).to_have_attribute("max", "10000")
    assert bar.evaluate("element => element.position") == pytest.approx(0.42)  # the browser's own reading
    expect(page.locator("#run-progress")).to_contain_text("42 %")
    expect(page.locator("#run-progress")).to_contain_text("4,200 / 10,000")
    expect(page.locator("#run-progress")).to_contain_text("chunk 5 of 12")
    expect(page.locator("#run-progress .progress-updated")).to_contain_text(
        re.compile(r"Updated \d+\.\d s ago")
    )

    delivery = page.locator("#run-report-deliveries tr.report-delivery")
    expect(delivery).to_have_count(1)
    expect(delivery).to_contain_text("Failed")
    expect(delivery).to_contain_text("HTTP 500 from https://hooks.example.test/x: down")
    with page.expect_download() as downloading:
        page.locator("#run-report-files tr.report-file").get_by_role("link", name="download").click()
    saved = downloading.value.path()
    assert saved is not None
    with open(saved, "rb") as downloaded:
        assert downloaded.read() == CSV


def test_the_schedule_page_adds_a_destination_and_refuses_a_bad_one_beside_its_field(
    page: Page, seeded_schedules
) -> None:
    schedule = seeded_schedules["heartbeat"]
    page.goto(reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk]))

    group = page.locator(".inline-group", has_text="Report destinations")
    group.locator("a.addlink", has_text="Add another Report destination").click()
    group.locator("select[name='report_destinations-0-kind']").select_option("webhook")
    group.locator("input[name='report_destinations-0-target']").fill("hooks.example.test/report")
    group.locator("input[name='report_destinations-0-secret']").fill("short")
    group.locator("#id_report_destinations-0-formats_0").check()  # CSV
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.click("input[name=_save]")

    errors = page.locator(".inline-group", has_text="Report destinations").locator(".errorlist")
    expect(errors.filter(has_text="Not an http(s) URL")).to_have_count(1)
    expect(errors.filter(has_text="at least 16 characters")).to_have_count(1)
    assert not ReportDestination.objects.exists()

    group = page.locator(".inline-group", has_text="Report destinations")
    group.locator("input[name='report_destinations-0-target']").fill("https://hooks.example.test/report")
    group.locator("input[name='report_destinations-0-secret']").fill("a-signing-secret-of-32-characters")
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.click("input[name=_save]")

    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    destination = ReportDestination.objects.get(schedule=schedule)
    assert (destination.kind, destination.target, destination.formats) == (
        "webhook", "https://hooks.example.test/report", ["csv"]
    )  # fmt: skip
    assert destination.secret == "a-signing-secret-of-32-characters"
