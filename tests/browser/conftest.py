"""Fixtures for driving the Django admin in real headless Chromium.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``), driven by
Playwright's sync API; ``playwright install`` is never used. Without Chromium
the tests skip, except in CI (``CI=true``), where they fail loudly: install it
with ``.ci/install-chromium.sh``.

The admin runs in pytest-django's ``live_server`` thread, so every test uses
``transactional_db``: the server thread only sees committed data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING_CHROMIUM = "install chromium: .ci/install-chromium.sh"

# Bounded waits, in milliseconds: a broken page fails in seconds, not minutes.
LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 10_000
NAVIGATION_TIMEOUT_MS = 15_000

BROWSER_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``browser`` (``-m "not browser"`` leaves them out)."""
    for item in items:
        if BROWSER_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """Headless Debian Chromium for the whole session."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING_CHROMIUM, pytrace=False)
        pytest.skip(MISSING_CHROMIUM)

    from playwright.sync_api import expect, sync_playwright

    # Playwright's sync API keeps an asyncio loop running on this thread, and
    # Django refuses ORM calls from a thread with a running loop
    # (SynchronousOnlyOperation). The tests only call the ORM synchronously,
    # between browser steps, so allow it for exactly as long as Playwright runs.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass(frozen=True)
class AdminLogin:
    username: str
    password: str


@pytest.fixture
def admin_login(transactional_db) -> AdminLogin:
    """A superuser with a known password, committed for the server thread."""
    from django.contrib.auth import get_user_model

    login = AdminLogin(username="browser-admin", password="correct-horse-battery-staple")
    get_user_model().objects.create_superuser(login.username, "browser-admin@example.com", login.password)
    return login


@pytest.fixture
def job_catalog(transactional_db) -> int:
    """The job catalog as a worker publishes it; returns how many jobs."""
    from jobs.catalog import publish_catalog

    return publish_catalog(worker="browser-tests")


@pytest.fixture
def seeded_schedules(transactional_db, job_catalog) -> dict:
    """The default schedules of a fresh installation, by name."""
    from django_celery_beat.models import PeriodicTask

    from scheduler.seeding import DAILY_SUMMARY, HEARTBEAT, seed_default_schedules

    seed_default_schedules()
    return {
        "heartbeat": PeriodicTask.objects.get(name=HEARTBEAT),
        "daily_summary": PeriodicTask.objects.get(name=DAILY_SUMMARY),
    }


@pytest.fixture
def page(browser, live_server, transactional_db, admin_login: AdminLogin, seeded_schedules) -> Iterator:
    """A page in a fresh browser context, logged in to the admin."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=live_server.url, accept_downloads=True)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    tab = context.new_page()
    try:
        tab.goto("/admin/login/")
        tab.fill("#id_username", admin_login.username)
        tab.fill("#id_password", admin_login.password)
        tab.click("#login-form [type=submit]")
        expect(tab).to_have_url(f"{live_server.url}/admin/")
        expect(tab.locator("#content h1")).to_have_text("Site administration")
        yield tab
    finally:
        context.close()
