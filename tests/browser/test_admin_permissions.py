"""Staff who may only view schedules, in a real browser: read-only pages, no Save, no actions, no buttons."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from playwright.sync_api import Page, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, NAVIGATION_TIMEOUT_MS

VIEWER = ("viewer", "view-only-but-long-enough-password")


@pytest.fixture
def viewer_page(browser, live_server, transactional_db, seeded_schedules) -> Iterator[Page]:
    """A browser logged in through the login form as staff with only the view permissions on schedules."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(VIEWER[0], password=VIEWER[1], is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_periodictask", "view_schedulepolicy"],
            content_type__app_label__in=["django_celery_beat", "scheduler"],
        )
    )
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    tab = context.new_page()
    try:
        tab.goto("/admin/login/")
        tab.fill("#id_username", VIEWER[0])
        tab.fill("#id_password", VIEWER[1])
        tab.click("#login-form [type=submit]")
        expect(tab).to_have_url(f"{live_server.url}/admin/")
        yield tab
    finally:
        context.close()


def test_a_view_only_user_sees_schedules_read_only_with_no_save_and_no_action_buttons(
    viewer_page: Page, seeded_schedules
) -> None:
    page = viewer_page
    heartbeat = seeded_schedules["heartbeat"]

    page.goto(reverse("admin:django_celery_beat_periodictask_changelist"))
    expect(page.locator("#result_list")).to_contain_text(heartbeat.name)
    expect(page.locator("select[name=action]")).to_have_count(0)
    expect(page.locator("#result_list input[name=_selected_action]")).to_have_count(0)
    expect(page.locator(".object-tools a.addlink")).to_have_count(0)

    page.get_by_role("link", name=heartbeat.name, exact=True).click()

    change_url = reverse("admin:django_celery_beat_periodictask_change", args=[heartbeat.pk])
    expect(page).to_have_url(re.compile(re.escape(change_url) + "$"))
    expect(page.locator("#content h1")).to_contain_text("View")
    expect(page.locator("#content")).to_contain_text(heartbeat.name)
    expect(page.locator("input[type=submit], button[type=submit]").filter(has_text="Save")).to_have_count(0)
    expect(page.locator("[name=_save], [name=_continue], [name=_addanother]")).to_have_count(0)
    expect(page.locator("form.schedule-action, [class*=schedule-action-]")).to_have_count(0)
    for label in ("Run now", "Pause…", "Resume", "Duplicate"):
        expect(page.get_by_role("button", name=label)).to_have_count(0)
    # The change history reads the same for them: the seeding created it, no person.
    history = page.locator("#schedule-audit")
    expect(history.locator("h2")).to_have_text("Change history")
    expect(history.locator(".audit-entry").first).to_contain_text("(no user: a script or a command)")
    expect(history.locator(".audit-entry").first).to_contain_text("created")
    # Nothing on the page is an editable field of the schedule.
    expect(page.locator("#periodictask_form input[name=name], #periodictask_form select")).to_have_count(0)
