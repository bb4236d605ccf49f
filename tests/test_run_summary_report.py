"""The run-summary report: per-job figures computed by the database, and its renderings."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from jobs.models import JobRun, RunStatus
from jobs.reports import build_run_summary, render_csv, render_html

pytestmark = pytest.mark.django_db

# Far from the wall clock: runs other tests leave behind never fall in the window.
NOW = datetime(2020, 6, 1, 12, 0, tzinfo=UTC)


def make_run(job: str, status: RunStatus, *, hours_ago: float = 1, duration_ms=None, lateness_ms=None):
    return JobRun.objects.create(
        job=job,
        status=status,
        scheduled_for=NOW - timedelta(hours=hours_ago),
        duration_ms=duration_ms,
        lateness_ms=lateness_ms,
    )


def row_for(report, job):
    (row,) = [r for r in report.rows if r["job"] == job]
    return row


def test_it_counts_runs_by_status_and_computes_the_failure_rate():
    for ms in (100, 200, 300):
        make_run("heartbeat", RunStatus.SUCCEEDED, duration_ms=ms, lateness_ms=ms // 10)
    make_run("heartbeat", RunStatus.FAILED, duration_ms=50, lateness_ms=900)
    make_run("heartbeat", RunStatus.MISSED)
    make_run("heartbeat", RunStatus.SUCCEEDED, hours_ago=30, duration_ms=9999)  # outside the window

    row = row_for(build_run_summary(24, now=NOW), "heartbeat")

    assert row["total"] == 5
    assert row["succeeded"] == 3 and row["failed"] == 1 and row["missed"] == 1
    assert row["failure_rate"] == 0.25  # 1 bad of 4 finished-with-an-outcome; missed is not a failure
    assert row["worst_lateness_ms"] == 900


def test_it_computes_duration_percentiles():
    for ms in range(1, 101):  # 1..100 ms
        make_run("reports.run_summary", RunStatus.SUCCEEDED, duration_ms=ms)

    row = row_for(build_run_summary(24, now=NOW), "reports.run_summary")

    # percentile_cont (PostgreSQL) interpolates; nearest rank (SQLite) does not.
    assert row["p50_duration_ms"] == pytest.approx(50.5, abs=0.5)
    assert row["p95_duration_ms"] == pytest.approx(95.05, abs=0.5)


def test_a_job_with_no_finished_runs_has_no_rate_or_percentiles():
    make_run("diagnostics.sleep", RunStatus.QUEUED)

    row = row_for(build_run_summary(24, now=NOW), "diagnostics.sleep")

    assert row["failure_rate"] is None
    assert row["p50_duration_ms"] is None


def test_an_empty_window_gives_an_empty_report_that_still_renders():
    report = build_run_summary(24, now=NOW)

    assert report.rows == []
    assert "No runs in this window." in render_html(report)
    assert render_csv(report).splitlines()[0].startswith("job,total,")


def test_the_csv_and_html_renderings_carry_every_row():
    make_run("heartbeat", RunStatus.SUCCEEDED, duration_ms=10)
    make_run("diagnostics.fail", RunStatus.FAILED, duration_ms=5)
    report = build_run_summary(24, now=NOW)

    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    html = render_html(report)

    assert [r["job"] for r in rows] == ["diagnostics.fail", "heartbeat"]
    assert rows[0]["failure_rate"] == "1.0"
    assert html.count("<tr>") == 3  # header + two jobs
    assert "<td>diagnostics.fail</td>" in html


def test_it_refuses_a_window_that_is_not_positive():
    with pytest.raises(ValueError, match="window_hours must be above 0"):
        build_run_summary(0)
