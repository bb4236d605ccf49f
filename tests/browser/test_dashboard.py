"""The on-call dashboard in a real browser: from the admin's index to the charts and every section."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from django.utils import timezone
from playwright.sync_api import Page, expect

from jobs.models import JobRun, RunStatus, WorkerPresence
from scheduler.models import BeatLease

# Outside the repository: a failed run leaves it for a look, never in a commit.
SCREENSHOT = Path(tempfile.gettempdir()) / "dashboard-failure.png"


def test_an_engineer_opens_the_dashboard_from_the_index_and_sees_charts_and_sections(
    page: Page, seeded_schedules
) -> None:
    heartbeat = seeded_schedules["heartbeat"]
    now = timezone.now()
    for hours, status in [(3, RunStatus.SUCCEEDED), (2, RunStatus.SUCCEEDED), (1, RunStatus.FAILED)]:
        JobRun.objects.create(
            job="heartbeat",
            schedule=heartbeat,
            schedule_name=heartbeat.name,
            status=status,
            scheduled_for=now - timedelta(hours=hours),
            started_at=now - timedelta(hours=hours),
            finished_at=now - timedelta(hours=hours) + timedelta(seconds=2),
            lateness_ms=120,
            duration_ms=2000,
            error_type="TargetCheckFailed" if status == RunStatus.FAILED else "",
        )
    BeatLease.objects.create(
        name="beat",
        holder="beat-browser:1:abc",
        token=3,
        expires_at=now + timedelta(minutes=5),
        renewed_at=now,
        status={
            "next_due": [
                {
                    "slot": (now + timedelta(minutes=1)).isoformat(),
                    "schedule": heartbeat.name,
                    "job": "heartbeat",
                }
            ]
        },
    )
    WorkerPresence.objects.create(
        hostname="worker-browser@h", queues=["default"], jobs=["heartbeat"], last_seen_at=now
    )

    try:
        page.locator("#dashboard-link a").click()

        expect(page.locator("#content h1")).to_have_text("Dashboard")
        charts = page.locator("svg[role=img]")
        expect(charts).to_have_count(2)
        expect(charts.nth(0)).to_have_attribute(
            "aria-label", "Runs per hour by status, last 24 hours (UTC, by slot)"
        )
        expect(charts.nth(0).locator("rect.bar")).to_have_count(3)
        expect(charts.nth(1).locator("rect.bar[data-series=duration]")).to_have_attribute(
            "data-value", "2000"
        )
        expect(page.locator("#runs-by-status li[data-status=failed] .count")).to_have_text("1")
        expect(page.locator("#failing-schedules")).to_contain_text(heartbeat.name)
        expect(page.locator("#beat")).to_contain_text("beat-browser:1:abc")
        expect(page.locator("#next-due")).to_contain_text(heartbeat.name)
        expect(page.locator("#queues tr[data-queue=default]")).to_be_visible()
        expect(page.locator("#workers")).to_contain_text("worker-browser@h")
        for section in ("#running-now", "#paused-schedules"):
            expect(page.locator(section)).to_be_visible()

        # A count leads to the runs it counts.
        page.locator("#runs-by-status li[data-status=failed] a").click()
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        expect(page.locator("#result_list")).to_contain_text("Failed")
    except Exception:
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        raise
