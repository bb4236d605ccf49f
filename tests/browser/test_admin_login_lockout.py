"""The admin login, in a real browser, after too many wrong passwords: a clear lockout page.

Chromium types the wrong password into the real login form until the failure
limit; the page then says the login is locked and for how long (429, in the
admin's look), and the right password does not get in until the lock ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from tests.browser.conftest import ACTION_TIMEOUT_MS, NAVIGATION_TIMEOUT_MS, AdminLogin


@pytest.fixture
def login_page(browser, live_server, transactional_db, admin_login) -> Iterator[Page]:
    """A fresh, logged-out browser context on the admin login page."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    tab = context.new_page()
    try:
        tab.goto("/admin/login/")
        yield tab
    finally:
        context.close()


def submit(page: Page, username: str, password: str) -> int:
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation() as navigation:
        page.click("#login-form [type=submit]")
    return navigation.value.status


def test_it_shows_the_lockout_page_after_the_failure_limit(
    login_page: Page, admin_login: AdminLogin, live_server
):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert submit(login_page, admin_login.username, "wrong-password") == 200
        expect(login_page.locator(".errornote")).to_contain_text("Please enter the correct username")

    assert submit(login_page, admin_login.username, "wrong-password") == 429
    message = login_page.locator("#lockout-message")
    expect(message).to_contain_text("Login locked: too many failed attempts")
    expect(message).to_contain_text(f"Try again in {settings.AXES_COOLOFF_TIME.seconds // 60} minute")
    expect(login_page.locator("#site-name")).to_have_text("Scheduled jobs")

    login_page.goto("/admin/login/")
    assert submit(login_page, admin_login.username, admin_login.password) == 429
    expect(login_page.locator("#lockout-message")).to_be_visible()
    login_page.goto("/admin/")
    expect(login_page).to_have_url(f"{live_server.url}/admin/login/?next=/admin/")  # still logged out
