"""Soft and hard time limits end runs, on a real prefork worker."""

from __future__ import annotations

import pytest

from jobs.dispatch import dispatch
from jobs.models import RunStatus
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def test_it_records_a_soft_timeout_and_lets_the_job_clean_up(worker, catalog, clean_queues):
    run = dispatch("diagnostics.sleep", kwargs={"seconds": 20}, soft_time_limit=1, hard_time_limit=10)

    run = wait_for_run(run.pk, timeout=30)

    assert run.status == RunStatus.SOFT_TIMEOUT
    assert run.error_type.endswith("SoftTimeLimitExceeded")
    # Ended by the soft limit (1 s), long before the hard one (10 s).
    assert run.duration_ms < 8000
    assert run.finished_at is not None


def test_it_records_a_hard_timeout_from_the_main_process_and_keeps_serving(worker, catalog, clean_queues):
    hung = dispatch(
        "diagnostics.sleep",
        kwargs={"seconds": 60, "ignore_soft_limit": True},
        soft_time_limit=1,
        hard_time_limit=3,
    )

    hung = wait_for_run(hung.pk, timeout=45)

    assert hung.status == RunStatus.HARD_TIMEOUT
    assert hung.error_type.endswith("TimeLimitExceeded")
    assert 2500 <= hung.duration_ms < 30000
    assert worker.process.poll() is None, "the worker itself must survive a hard timeout"
    after = wait_for_run(dispatch("heartbeat").pk, timeout=45)
    assert after.status == RunStatus.SUCCEEDED


def test_it_records_a_failure_with_its_traceback(worker, catalog, clean_queues):
    run = dispatch("diagnostics.fail", kwargs={"message": "drill: disk full"})

    run = wait_for_run(run.pk, timeout=30)

    assert run.status == RunStatus.FAILED
    assert run.error_type == "jobs.builtin.diagnostics.DrillFailure"
    assert run.error_message == "drill: disk full"
    assert "raise DrillFailure(message)" in run.traceback
