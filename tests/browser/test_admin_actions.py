"""The periodic-task list's bulk actions, in a real browser: tick a row, pick the action, press Go."""

from __future__ import annotations

import re

from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Page, expect

from jobs.models import JobRun, RunOrigin
from scheduler.models import ScheduleChange
from scheduler.seeding import HEARTBEAT


def apply_action(page: Page, task: PeriodicTask, label: str) -> None:
    page.goto(reverse("admin:django_celery_beat_periodictask_changelist"))
    page.check(f"#result_list input[name=_selected_action][value='{task.pk}']")
    page.select_option("select[name=action]", label=label)
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.click("button[name=index]")
    page.wait_for_load_state()


def test_it_disables_a_schedule_and_records_the_change_for_beat(page: Page, seeded_schedules) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    changes = ScheduleChange.objects.filter(task_id=heartbeat.pk).count()

    apply_action(page, heartbeat, "Disable selected tasks")

    expect(page.locator(".messagelist .success")).to_have_text(
        f"Disabled 1 schedule: “{HEARTBEAT}”; beat stops firing them within a second."
    )
    assert not PeriodicTask.objects.get(pk=heartbeat.pk).enabled
    assert ScheduleChange.objects.filter(task_id=heartbeat.pk).count() == changes + 1


def test_it_runs_a_schedule_now_and_links_to_the_run(page: Page, seeded_schedules, admin_login) -> None:
    heartbeat = seeded_schedules["heartbeat"]

    apply_action(page, heartbeat, "Run selected tasks")

    message = page.locator(".messagelist .success")
    expect(message).to_contain_text(f"Started 1 run by hand: “{HEARTBEAT}” on queue heartbeat.")
    run = JobRun.objects.get(schedule=heartbeat)
    assert (run.origin, run.requested_by) == (RunOrigin.MANUAL, admin_login.username)

    message.get_by_role("link", name=f"“{HEARTBEAT}”").click()

    expect(page).to_have_url(re.compile(re.escape(reverse("admin:jobs_jobrun_change", args=[run.pk])) + "$"))
    expect(page.locator(".fieldBox.field-origin .readonly")).to_have_text("manual: run now in the admin")
    expect(page.locator(".fieldBox.field-requested_by .readonly")).to_have_text(admin_login.username)
