"""The run tally behind ``/metrics``' counters: always the same counts as a scan of every run.

Each test compares ``jobs.tally.run_counts`` (the tally plus the runs after
its watermark) with ``aggregate`` over the whole run table, the reference,
across the moves that could count a run twice or not at all: advancing, a run
ending after the watermark passed its slot, a ``lost`` run taking its real
ending after being left out of the tally, two processes advancing at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs import tally
from jobs.models import JobRun, RunStatus, RunTally
from jobs.runs import RunError, record_from_main_process
from tests.support.threads import at_once

pytestmark = pytest.mark.django_db


def ended(
    job: str, status: RunStatus, ago: timedelta, duration_ms: int = 1500, lateness_ms: int = 80
) -> JobRun:
    finished = timezone.now() - ago
    return JobRun.objects.create(
        job=job,
        status=status,
        scheduled_for=finished - timedelta(seconds=5),
        started_at=finished - timedelta(milliseconds=duration_ms),
        finished_at=finished,
        duration_ms=duration_ms,
        lateness_ms=lateness_ms,
        worker="w1@test",
        attempt=1,
    )


def active(job: str, status: RunStatus) -> JobRun:
    return JobRun.objects.create(job=job, status=status, scheduled_for=timezone.now(), attempt=1)


def keyed(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(row["job"], row["status"]): row for row in rows}


def assert_counts_match_a_full_scan() -> None:
    assert keyed(tally.run_counts()) == keyed(tally.aggregate(JobRun.objects.all()))


def watermark() -> datetime | None:
    return RunTally.objects.get(job="", status="").tallied_before


@pytest.fixture
def history():
    """Runs ended hours and seconds ago in every final status, and runs not ended."""
    statuses = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.HARD_TIMEOUT]
    statuses += [RunStatus.SKIPPED, RunStatus.MISSED]
    for hours, status in enumerate(statuses, 1):
        ended("report", status, timedelta(hours=hours), duration_ms=hours * 40_000)
        ended("heartbeat", RunStatus.SUCCEEDED, timedelta(hours=hours, minutes=3), duration_ms=90)
    ended("heartbeat", RunStatus.SUCCEEDED, timedelta(seconds=20), duration_ms=300)  # after the watermark
    active("report", RunStatus.QUEUED)
    active("heartbeat", RunStatus.RUNNING)


def test_before_any_advance_the_counts_are_a_full_scan(history):
    assert_counts_match_a_full_scan()


def test_the_first_advance_tallies_what_ended_before_the_grace_and_counts_stay_the_same(history):
    assert tally.advance() is True
    assert watermark() is not None
    assert timezone.now() - tally.GRACE - watermark() < timedelta(seconds=5)
    settled = sum(t.runs for t in RunTally.objects.exclude(job=""))
    assert settled == 10  # the ten that ended hours ago, not the recent one nor the two not ended
    assert_counts_match_a_full_scan()


def test_an_advance_is_not_due_until_a_minute_of_endings_passed(history):
    now = timezone.now()
    assert tally.advance(now) is True
    assert tally.advance(now + timedelta(seconds=30)) is False
    assert tally.advance(now + tally.ADVANCE_EVERY) is True
    assert watermark() == now + tally.ADVANCE_EVERY - tally.GRACE


def test_runs_that_end_after_an_advance_are_counted_once_as_they_end_and_after_the_next(history):
    tally.advance()
    running = JobRun.objects.get(job="heartbeat", status=RunStatus.RUNNING)
    queued = JobRun.objects.get(job="report", status=RunStatus.QUEUED)
    JobRun.objects.filter(pk=running.pk).update(
        status=RunStatus.SUCCEEDED, finished_at=timezone.now(), duration_ms=250
    )
    JobRun.objects.filter(pk=queued.pk).update(status=RunStatus.FAILED, finished_at=timezone.now())
    assert_counts_match_a_full_scan()
    # Later, the watermark passes those endings: they move into the tally, counted once.
    assert tally.advance(timezone.now() + tally.GRACE + tally.ADVANCE_EVERY) is True
    assert_counts_match_a_full_scan()
    assert not JobRun.objects.filter(finished_at__gte=watermark()).exists()


def test_a_lost_run_is_never_tallied_so_its_real_ending_later_is_not_counted_twice(history):
    lost = ended("report", RunStatus.LOST, timedelta(hours=2), duration_ms=7_000)
    tally.advance()
    assert not RunTally.objects.filter(status=RunStatus.LOST).exists()
    assert_counts_match_a_full_scan()

    # Its worker's main process reports how it really ended (a hard timeout), now.
    hard = RunError("TimeLimitExceeded", "hard limit", "")
    assert record_from_main_process(str(lost.pk), RunStatus.HARD_TIMEOUT, hard, worker="w1@test")
    assert_counts_match_a_full_scan()
    tally.advance(timezone.now() + tally.GRACE + tally.ADVANCE_EVERY)
    assert_counts_match_a_full_scan()
    counts = keyed(tally.run_counts())
    assert ("report", RunStatus.LOST.value) not in counts
    assert counts[("report", RunStatus.HARD_TIMEOUT.value)]["n"] == 2


def test_the_histograms_buckets_come_back_from_the_tally_cumulative(history):
    tally.advance()
    report = keyed(tally.run_counts())[("report", RunStatus.SUCCEEDED.value)]
    # One run of 40 s: above every bound up to 30 s, within 60 s and above.
    inside = [i for i, bound in enumerate(tally.DURATION_BUCKETS) if report[tally.bucket_key("d", i)] == 1]
    assert [tally.DURATION_BUCKETS[i] for i in inside] == [60.0, 300.0, 900.0, 3600.0]
    assert report["d_n"] == 1 and report["d_sum"] == 40_000


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks across two connections")
def test_two_processes_advancing_at_once_add_each_run_once():
    for minutes in range(1, 40):
        ended("heartbeat", RunStatus.SUCCEEDED, timedelta(hours=1, minutes=minutes))
    RunTally.objects.get_or_create(job="", status="")  # both find the watermark row
    now = timezone.now()

    results = at_once(lambda: tally.advance(now), lambda: tally.advance(now), timeout=30)

    assert sorted(results) == [False, True]
    assert RunTally.objects.get(job="heartbeat", status=RunStatus.SUCCEEDED).runs == 39
    assert_counts_match_a_full_scan()


def test_a_run_ended_without_an_ending_time_is_counted_after_an_advance_too(history):
    tally.advance()
    JobRun.objects.create(job="report", status=RunStatus.FAILED, scheduled_for=timezone.now(), attempt=1)
    tally.advance(timezone.now() + tally.GRACE + tally.ADVANCE_EVERY)
    assert_counts_match_a_full_scan()
