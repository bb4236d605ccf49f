"""The schedule page in a real browser: type a cron, watch the live preview, see errors live, save.

Driven in headless Chromium against the live server: the preview's JavaScript
(scheduler/static/scheduler/schedule_preview.js) calls the preview URL as the
user types, and shows the schedule in words, the next runs with the DST day
marked, and each field's error before anything is saved. A failing test leaves
a screenshot in /tmp.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from playwright.sync_api import Page, expect

JOB = "reports.run_summary"


@contextmanager
def screenshot_on_failure(page: Page, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        page.screenshot(path=f"/tmp/{name}-failure.png", full_page=True)
        raise


def save(page: Page) -> None:
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.click("input[name=_save]")
    page.wait_for_load_state()


def test_typing_a_cron_previews_it_with_the_dst_day_and_saves_it(page: Page) -> None:
    crontabs_before = CrontabSchedule.objects.count()
    page.goto(reverse("admin:django_celery_beat_periodictask_add"))
    preview = page.locator("#schedule-preview")
    with screenshot_on_failure(page, "schedule-page"):
        page.fill("input[name=name]", "march sundays")
        page.fill("input[name=task]", JOB)
        # Sundays in March at 02:30 Berlin time: the last one is the spring-forward day.
        page.fill("input[name=cron]", "30 2 * 3 0")
        page.fill("input[name=timezone]", "Europe/Berlin")

        expect(preview.locator("[data-preview=words]")).to_have_text(
            "At 02:30, only on Sunday, only in March"
        )
        rows = preview.locator("tbody[data-preview=runs] tr")
        expect(rows).to_have_count(5)
        moved = rows.filter(has_text="does not exist")
        expect(moved).to_have_count(1)
        expect(moved).to_contain_text("03:00 CEST")
        expect(moved).to_contain_text("01:00 UTC")
        expect(moved).to_contain_text("clocks jump from 02:00 to 03:00")
        # The job's doc, queue and limits, beside the job picker.
        job = page.locator(".field-task [data-preview=job]")
        expect(job.locator("[data-preview=job-name]")).to_have_text(JOB)
        expect(job).to_contain_text("limits soft")

        # An invalid expression: the error shows on the field as it is typed.
        page.fill("input[name=cron]", "61 2 * 3 0")
        cron_error = page.locator(".live-errors[data-field=cron]")
        expect(cron_error).to_contain_text("is not a valid cron expression")
        expect(rows).to_have_count(0)
        page.fill("input[name=cron]", "0 0 31 2 *")
        expect(cron_error).to_contain_text("can never fire")
        page.fill("input[name=timezone]", "Europe/Atlantis")
        expect(page.locator(".live-errors[data-field=timezone]")).to_contain_text("is not an IANA time zone")

        # Saving the invalid page is refused with the same message, and saves nothing.
        save(page)
        expect(page.locator(".errornote")).to_be_visible()
        assert not PeriodicTask.objects.filter(name="march sundays").exists()
        assert CrontabSchedule.objects.count() == crontabs_before

        page.fill("input[name=cron]", "30 2 * 3 0")
        page.fill("input[name=timezone]", "Europe/Berlin")
        expect(rows).to_have_count(5)
        expect(page.locator(".live-errors")).to_have_count(0)
        save(page)

        changelist = reverse("admin:django_celery_beat_periodictask_changelist")
        expect(page).to_have_url(re.compile(re.escape(changelist) + "$"))
        task = PeriodicTask.objects.get(name="march sundays")
        crontab = task.crontab
        assert (crontab.minute, crontab.hour, crontab.month_of_year, crontab.day_of_week) == (
            "30",
            "2",
            "3",
            "0",
        )
        assert str(crontab.timezone) == "Europe/Berlin"

        # The edit page shows it back in the same fields, with its preview.
        page.goto(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]))
        expect(page.locator("input[name=cron]")).to_have_value("30 2 * 3 0")
        expect(page.locator("input[name=timezone]")).to_have_value("Europe/Berlin")
        expect(preview.locator("tbody[data-preview=runs] tr")).to_have_count(5)


def test_switching_to_an_interval_shows_only_its_fields(page: Page) -> None:
    page.goto(reverse("admin:django_celery_beat_periodictask_add"))
    with screenshot_on_failure(page, "schedule-page-interval"):
        expect(page.locator("input[name=cron]")).to_be_visible()
        expect(page.locator("input[name=every]")).to_be_hidden()

        page.check("input[name=schedule_kind][value=interval]")
        expect(page.locator("input[name=cron]")).to_be_hidden()
        page.fill("input[name=every]", "15")
        page.select_option("select[name=period]", value="minutes")
        expect(page.locator("#schedule-preview [data-preview=words]")).to_have_text("Every 15 minutes")
        expect(page.locator("#schedule-preview tbody[data-preview=runs] tr")).to_have_count(5)
