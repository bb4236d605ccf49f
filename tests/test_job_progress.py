"""A run's progress: the writers on the real database, the throttle's rule, and a real worker's job.

- ``jobs.runs.record_progress`` / ``add_progress``: one guarded UPDATE each,
  running runs only, bad figures refused, deltas from racing threads all
  counted; a new attempt starts from no progress;
- ``jobs.progress``: the throttle's rule with a fake clock (first and last
  written at once, at most one write an interval, the latest pending figure
  flushed), ``report_progress`` outside a worker doing nothing;
- ``diagnostics.count`` on the session worker: progress seen moving while it
  runs, few writes, the final figure on the ended run.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from jobs import progress, runs
from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus
from jobs.sendonly import names
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.django_db(transaction=True)]


def a_run(status: RunStatus = RunStatus.RUNNING, **fields: Any) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job=names.DIAGNOSTICS_COUNT,
        kwargs={"n": 10},
        scheduled_for=now,
        enqueued_at=now,
        status=status,
        attempt=1,
        worker="w@host",
        started_at=now if status == RunStatus.RUNNING else None,
        **fields,
    )


# --- the writers -----------------------------------------------------------------------


def test_record_progress_writes_a_running_runs_figures_and_cuts_the_message():
    run = a_run()
    at = timezone.now()
    assert runs.record_progress(run.pk, done=5, total=10, message="x" * 300, now=at)
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total, run.progress_updated_at) == (5, 10, at)
    assert run.progress_message == "x" * 200
    assert run.status == RunStatus.RUNNING

    assert runs.record_progress(run.pk, done=12)  # total unknown now; done past a short estimate is fine
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total, run.progress_message) == (12, None, "")


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.SUCCEEDED, RunStatus.LOST])
def test_progress_of_a_run_not_running_is_dropped(status):
    run = a_run(status)
    assert not runs.record_progress(run.pk, done=1, total=2)
    assert not runs.add_progress(run.pk, delta=1)
    assert not runs.record_progress(uuid.uuid4(), done=1)
    assert not runs.record_progress("not-a-uuid", done=1)
    run.refresh_from_db()
    assert (run.progress_done, run.progress_updated_at) == (None, None)


@pytest.mark.parametrize(
    ("figures", "match"),
    [
        ({"done": -1}, "done must be 0 or more"),
        ({"done": 1, "total": -5}, "total must be 0 or more"),
        ({"done": 1.5}, "done must be a whole number"),
        ({"done": True}, "done must be a whole number"),
    ],
)
def test_bad_figures_are_refused_with_a_clear_message(figures, match):
    run = a_run()
    with pytest.raises(ValueError, match=match):
        runs.record_progress(run.pk, **figures)
    with pytest.raises(ValueError, match=match):
        progress.report_progress(**figures)  # refused outside a worker too
    with pytest.raises(ValueError, match="delta must be 0 or more"):
        runs.add_progress(run.pk, delta=-1)


def test_add_progress_adds_and_keeps_what_it_is_not_given():
    run = a_run()
    assert runs.add_progress(run.pk, delta=3, total=100, message="chunk 1")
    assert runs.add_progress(run.pk, delta=4)  # total and message kept
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total, run.progress_message) == (7, 100, "chunk 1")


def test_deltas_from_racing_threads_are_all_counted():
    run = a_run()
    threads_count, adds = 6, 25
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def add_many() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(adds):
                runs.add_progress(run.pk, delta=2)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=add_many) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    run.refresh_from_db()
    assert run.progress_done == threads_count * adds * 2


def test_a_retry_starts_from_no_progress():
    run = a_run(RunStatus.RETRYING, progress_done=40, progress_total=100, progress_message="half")
    started = runs.start_run(str(run.pk), job=run.job, attempt=2, worker="w2@host")
    assert isinstance(started, JobRun)
    run.refresh_from_db()
    assert (run.status, run.attempt) == (RunStatus.RUNNING, 2)
    assert (run.progress_done, run.progress_total, run.progress_message, run.progress_updated_at) == (
        None,
        None,
        "",
        None,
    )


# --- the throttle ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def __call__(self, run_id: str, **figures: Any) -> bool:
        self.writes.append(figures)
        return True


def test_a_thousand_reports_over_two_seconds_make_four_writes():
    clock, recorder = FakeClock(), Recorder()
    throttle = progress.ProgressThrottle("run", clock=clock, write=recorder)
    for done in range(1, 1001):
        clock.now = done * 0.002  # 1000 reports in 2 s
        throttle.report(done, 1000, f"{done}")
    throttle.flush()
    # The first (at 2 ms), one a second later, and the final done == total at once.
    assert [w["done"] for w in recorder.writes][::2] == [1, 1000]
    assert 500 <= recorder.writes[1]["done"] <= 502
    assert len(recorder.writes) == 3
    assert recorder.writes[-1] == {"done": 1000, "total": 1000, "message": "1000"}


def test_the_latest_skipped_figure_is_flushed_and_the_end_written_at_once():
    clock, recorder = FakeClock(), Recorder()
    throttle = progress.ProgressThrottle("run", clock=clock, write=recorder)
    assert throttle.report(1, 10) is True  # the first: at once
    clock.now = 0.3
    assert throttle.report(2, 10) is False  # pending
    clock.now = 0.5
    assert throttle.report(3, 10, "three") is False  # replaces the pending 2
    assert throttle.flush() is True
    assert throttle.flush() is False  # nothing pending
    clock.now = 0.6
    assert throttle.report(10, 10) is True  # the end: at once, within the interval
    assert [(w["done"], w["message"]) for w in recorder.writes] == [(1, ""), (3, "three"), (10, "")]


def test_the_adder_sums_what_it_holds_back():
    clock, recorder = FakeClock(), Recorder()
    adder = progress.ProgressAdder("parent", clock=clock, write=recorder)
    assert adder.add(5, total=100) is True
    for step in range(1, 11):
        clock.now = step * 0.05
        adder.add(2, message=f"step {step}")
    assert adder.flush() is True
    assert adder.flush() is False
    assert recorder.writes == [
        {"delta": 5, "total": 100, "message": ""},
        {"delta": 20, "total": None, "message": "step 10"},
    ]


def test_the_adder_writes_to_the_run():
    run = a_run()
    adder = progress.ProgressAdder(str(run.pk))
    adder.add(3, total=9)
    adder.add(3)  # within the second: held
    adder.flush()
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total) == (6, 9)


def test_report_progress_outside_a_worker_does_nothing():
    run = a_run()
    progress.report_progress(5, 10, "called directly")
    run.refresh_from_db()
    assert run.progress_done is None


# --- a real worker ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_running_job_shows_its_progress_moving_with_few_writes(worker, catalog, clean_queues):
    n, seconds = 1000, 3.0
    run = dispatch(names.DIAGNOSTICS_COUNT, kwargs={"n": n, "seconds": seconds})
    seen_done: set[Any] = set()
    seen_writes: set[Any] = set()
    deadline = time.monotonic() + 60
    while True:
        row = JobRun.objects.filter(pk=run.pk).values().get()
        if row["status"] == RunStatus.RUNNING and row["progress_updated_at"] is not None:
            seen_done.add(row["progress_done"])
            seen_writes.add(row["progress_updated_at"])
        if row["status"] not in (RunStatus.QUEUED, RunStatus.RUNNING):
            break
        assert time.monotonic() < deadline, f"run still {row['status']}"
        time.sleep(0.05)

    ended = wait_for_run(run.pk, timeout=5)
    assert ended.status == RunStatus.SUCCEEDED
    assert len(seen_done) >= 2, seen_done  # seen moving while it ran
    assert all(0 < done <= n for done in seen_done)
    # 1000 reports over 3 s: the first, about one a second, the last.
    assert len(seen_writes) <= int(seconds) + 2, sorted(seen_writes)
    assert (ended.progress_done, ended.progress_total, ended.progress_message) == (
        n,
        n,
        f"counted {n} of {n}",
    )
    assert ended.progress_updated_at is not None and ended.finished_at is not None
    assert ended.progress_updated_at <= ended.finished_at
