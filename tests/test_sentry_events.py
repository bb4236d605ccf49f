"""Failures and time limits reach Sentry with the run's tags (real sentry-sdk, local endpoint)."""

from __future__ import annotations

import time

import pytest

from jobs.dispatch import dispatch
from jobs.models import JobRun
from tests.conftest import wait_for_run
from tests.support.sentry_server import tags_of

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def event_for_run(fake_sentry, run_id):
    return fake_sentry.wait_for_event(lambda e: tags_of(e).get("run") == str(run_id), timeout=30)


def assert_run_tags(event, run):
    tags = tags_of(event)
    assert tags["job"] == run.job
    assert tags["run"] == str(run.pk)
    assert tags["schedule"] == "manual"
    assert tags["scheduled_for"] == run.scheduled_for.isoformat()


def wait_for_sentry_event_id(run_id, timeout: float = 10.0) -> str:
    """The event id noted on the run (written just after the event was sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if noted := JobRun.objects.get(pk=run_id).sentry_event_id:
            return noted
        time.sleep(0.1)
    return ""


def exception_type(event) -> str:
    return event["exception"]["values"][-1]["type"]


def test_a_failing_job_arrives_as_an_event_with_run_tags(worker, catalog, clean_queues, fake_sentry):
    run = wait_for_run(dispatch("diagnostics.fail", kwargs={"message": "sentry drill"}).pk)

    event = event_for_run(fake_sentry, run.pk)

    assert_run_tags(event, run)
    assert exception_type(event) == "DrillFailure"
    assert "timeout" not in tags_of(event)
    # The run keeps its event's id, for the run page's link.
    assert wait_for_sentry_event_id(run.pk) == event["event_id"]


def test_a_soft_timeout_arrives_tagged_soft(worker, catalog, clean_queues, fake_sentry):
    run = dispatch("diagnostics.sleep", kwargs={"seconds": 20}, soft_time_limit=1, hard_time_limit=10)
    run = wait_for_run(run.pk, timeout=30)

    event = event_for_run(fake_sentry, run.pk)

    assert_run_tags(event, run)
    assert tags_of(event)["timeout"] == "soft"
    assert exception_type(event) == "SoftTimeLimitExceeded"


def test_a_hard_timeout_arrives_tagged_hard_from_the_main_process(worker, catalog, clean_queues, fake_sentry):
    run = dispatch(
        "diagnostics.sleep",
        kwargs={"seconds": 60, "ignore_soft_limit": True},
        soft_time_limit=1,
        hard_time_limit=3,
    )
    run = wait_for_run(run.pk, timeout=45)

    event = event_for_run(fake_sentry, run.pk)

    assert_run_tags(event, run)
    assert tags_of(event)["timeout"] == "hard"
    assert exception_type(event) == "TimeLimitExceeded"
    # Soft and hard limits of one job are separate issues in Sentry.
    assert event["fingerprint"] == ["time-limit", "hard", "diagnostics.sleep"]
