"""The schedule page's buttons in a real browser: run now (executed by a real worker) and pause with a note.

The run-now test needs the session's worker subprocess; the pause test drives
beat's engine in-process (``beat_engine``) for the schedule's next slot, so
the skipped slot appears without waiting a minute for a beat subprocess.
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Page, expect

from jobs.models import FINISHED_STATUSES, JobRun, RunOrigin, RunStatus
from scheduler.models import SchedulePolicy
from scheduler.seeding import HEARTBEAT
from tests.conftest import wait_for_run


def open_schedule(page: Page, task: PeriodicTask) -> None:
    page.goto(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]))


def history_rows(page: Page):
    return page.locator("#schedule-history tr.run-row")


def test_run_now_from_the_schedule_page_is_executed_by_a_real_worker_and_shows_in_its_history(
    page: Page, seeded_schedules, admin_login, worker
) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    open_schedule(page, heartbeat)

    page.get_by_role("button", name="Run now").click()

    expect(page.locator(".messagelist .success")).to_contain_text(
        f"Started 1 run by hand: “{HEARTBEAT}” on queue heartbeat."
    )
    run = JobRun.objects.get(schedule=heartbeat)
    assert (run.origin, run.requested_by) == (RunOrigin.MANUAL, admin_login.username)
    run = wait_for_run(run.pk, FINISHED_STATUSES, timeout=60)
    assert run.worker  # a real worker took it

    open_schedule(page, heartbeat)
    row = history_rows(page).first
    expect(row).to_contain_text(run.get_status_display())
    expect(row).to_contain_text("manual")
    expect(row).to_contain_text(run.worker)
    row.get_by_role("link", name=run.get_status_display()).click()
    expect(page).to_have_url(re.compile(re.escape(reverse("admin:jobs_jobrun_change", args=[run.pk])) + "$"))


def test_pause_with_a_note_shows_the_skipped_slot_then_resume(
    page: Page, seeded_schedules, admin_login, beat_engine
) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    beat_engine.load()
    slot = beat_engine.entries[heartbeat.pk].pending
    open_schedule(page, heartbeat)

    page.get_by_role("button", name="Pause…").click()
    expect(page.locator("#content h1")).to_have_text("Pause schedules")
    page.get_by_role("button", name="Pause", exact=True).click()  # no note yet
    expect(page.locator(".field-note .errorlist")).to_contain_text("A pause needs a note")
    assert SchedulePolicy.objects.get(task=heartbeat).paused_at is None
    page.fill("#id_note", "deploy freeze")
    page.get_by_role("button", name="Pause", exact=True).click()

    expect(page.locator(".messagelist .success")).to_contain_text(
        f"Paused 1 schedule: “{HEARTBEAT}” until resumed"
    )
    expect(page.get_by_role("button", name="Resume")).to_be_visible()

    beat_engine.tick(now=slot + timedelta(seconds=1))  # beat reaches the schedule's next slot

    skipped = JobRun.objects.get(schedule=heartbeat, scheduled_for=slot)
    assert skipped.status == RunStatus.SKIPPED
    open_schedule(page, heartbeat)
    row = history_rows(page).first
    expect(row).to_contain_text(skipped.get_status_display())
    expect(row).to_contain_text(f"paused by {admin_login.username}: deploy freeze")

    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".messagelist .success")).to_contain_text(f"Resumed 1 schedule: “{HEARTBEAT}”")
    expect(page.get_by_role("button", name="Pause…")).to_be_visible()
    assert SchedulePolicy.objects.get(task=heartbeat).paused_at is None
