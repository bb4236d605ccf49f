"""The schedule pages of the admin, in a real browser.

The periodic-task pages (our schedule form and its run-policy inline) refuse
what beat could not run (design guarantee 6): an impossible pair of time
limits, an unknown job, arguments that do not bind. A refused page shows the
reason (once per field: the live preview takes over the field's errors) and
saves nothing.
"""

from __future__ import annotations

import json
import re

from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from playwright.sync_api import Page, expect

from scheduler.models import SchedulePolicy
from scheduler.seeding import DAILY_SUMMARY, HEARTBEAT, REPORT_CLEANUP

SCREENSHOT = "/tmp/admin-schedule.png"


def change_url(task: PeriodicTask) -> str:
    return reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])


def save(page: Page) -> None:
    """Press "Save" and wait for the server's answer to the form's POST."""
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.click("input[name=_save]")
    page.wait_for_load_state()


def test_it_lists_the_seeded_schedules(page: Page) -> None:
    page.goto(reverse("admin:django_celery_beat_periodictask_changelist"))

    names = page.locator("#result_list tbody th.field-name")
    expect(names).to_have_count(3)
    expect(names.filter(has_text=HEARTBEAT)).to_have_count(1)
    expect(names.filter(has_text=DAILY_SUMMARY)).to_have_count(1)
    expect(names.filter(has_text=REPORT_CLEANUP)).to_have_count(1)


def test_it_saves_an_edited_schedule_with_its_policy(page: Page, seeded_schedules) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    page.goto(change_url(heartbeat))
    soft = page.locator("input[name='policy-0-soft_time_limit']")
    hard = page.locator("input[name='policy-0-hard_time_limit']")
    expect(soft).to_be_visible()
    page.screenshot(path=SCREENSHOT, full_page=True)

    soft.fill("20")
    hard.fill("40")
    save(page)

    changelist = reverse("admin:django_celery_beat_periodictask_changelist")
    expect(page).to_have_url(re.compile(re.escape(changelist) + "$"))
    expect(page.locator(".messagelist .success")).to_contain_text("was changed successfully")
    policy = SchedulePolicy.objects.get(task=heartbeat)
    assert (policy.soft_time_limit, policy.hard_time_limit) == (20, 40)


def test_it_refuses_a_hard_limit_below_the_soft_limit(page: Page, seeded_schedules) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    SchedulePolicy.objects.filter(task=heartbeat).update(soft_time_limit=25, hard_time_limit=35)
    page.goto(change_url(heartbeat))
    expect(page.locator("input[name='policy-0-soft_time_limit']")).to_have_value("25")

    page.fill("input[name='policy-0-soft_time_limit']", "50")
    page.fill("input[name='policy-0-hard_time_limit']", "10")
    save(page)

    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".inline-group .errorlist")).to_contain_text("must be longer than the soft limit")
    assert "/change/" in page.url
    policy = SchedulePolicy.objects.get(task=heartbeat)
    assert (policy.soft_time_limit, policy.hard_time_limit) == (25, 35)


def test_it_refuses_an_unknown_job_name(page: Page) -> None:
    intervals_before = IntervalSchedule.objects.count()
    page.goto(reverse("admin:django_celery_beat_periodictask_add"))

    page.fill("input[name=name]", "a schedule for a job nobody serves")
    page.fill("input[name=task]", "no.such.job")
    page.check("input[name=schedule_kind][value=interval]")
    page.fill("input[name=every]", "1")
    page.select_option("select[name=period]", value="minutes")
    save(page)

    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".errorlist").filter(has_text="Unknown job")).to_have_count(1)
    expect(page.locator(".errorlist")).to_contain_text("no.such.job")
    assert not PeriodicTask.objects.filter(name="a schedule for a job nobody serves").exists()
    assert not PeriodicTask.objects.filter(task="no.such.job").exists()
    assert IntervalSchedule.objects.count() == intervals_before


def test_it_refuses_arguments_that_do_not_bind(page: Page, seeded_schedules) -> None:
    report = seeded_schedules["daily_summary"]
    kwargs_before = PeriodicTask.objects.get(pk=report.pk).kwargs
    page.goto(change_url(report))

    kwargs = page.locator("textarea[name=kwargs]")
    kwargs.fill(json.dumps({"window_hours": 24, "bogus": 1}))
    save(page)

    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".errorlist").filter(has_text="do not fit")).to_have_count(1)
    assert "/change/" in page.url
    assert PeriodicTask.objects.get(pk=report.pk).kwargs == kwargs_before
    assert json.loads(kwargs_before) == {"window_hours": 24}
