"""Sentry Crons: a monitor per schedule, its config from our rows, check-ins from a real worker.

The slow tests run a schedule's slot through beat's engine (in-process) onto
a real prefork worker whose real sentry-sdk posts to the local fake Sentry,
and read the check-ins it received: their order, their one check-in id per
run, and the ``monitor_config`` Sentry would upsert.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from alerts import crons
from jobs.catalog import publish_catalog
from jobs.models import JobDefinition, JobRun, RunOrigin, RunStatus
from lib.sentry import init_sentry
from scheduler.models import SchedulePolicy
from scheduler.services import run_schedules_now
from tests.conftest import wait_for_run
from tests.support.processes import children_of

# -- monitor_config_for: our rows as Sentry's monitor_config ------------------------------


def every(n: int, period: str) -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=n, period=period)[0]


def schedule(name: str = "nightly export", job: str = "heartbeat", **policy) -> PeriodicTask:
    publish_catalog(worker="tests")
    kind = {k: policy.pop(k) for k in ("crontab", "interval", "clocked", "kwargs") if k in policy}
    one_off = {"one_off": True} if "clocked" in kind else {}
    task = PeriodicTask.objects.create(name=name, task=job, **kind, **one_off)
    if policy:
        SchedulePolicy.objects.filter(task=task).update(**policy)
    return PeriodicTask.objects.select_related("policy", "crontab", "interval", "clocked").get(pk=task.pk)


@pytest.mark.django_db
def test_a_crontab_schedule_is_a_crontab_monitor_in_its_time_zone_with_our_thresholds():
    cron = CrontabSchedule.objects.create(
        minute="30", hour="3", day_of_week="1-5", day_of_month="*", month_of_year="*", timezone="Europe/Paris"
    )
    task = schedule(
        crontab=cron,
        grace=150,  # 2.5 minutes: rounded up
        hard_time_limit=130,
        soft_time_limit=100,
        failures_before_alert=3,
        successes_before_recovery=2,
    )

    assert crons.monitor_config_for(task) == {
        "schedule": {"type": "crontab", "value": "30 3 * * 1-5"},
        "timezone": "Europe/Paris",
        "checkin_margin": 3,
        "max_runtime": 3,
        "failure_issue_threshold": 3,
        "recovery_threshold": 2,
    }


@pytest.mark.parametrize(
    ("n", "period", "expected"),
    [
        (5, "minutes", (5, "minute")),
        (120, "seconds", (2, "minute")),
        (90, "minutes", (90, "minute")),
        (2, "hours", (2, "hour")),
        (48, "hours", (2, "day")),
        (1, "days", (1, "day")),
    ],
)
@pytest.mark.django_db
def test_an_interval_in_whole_minutes_is_an_interval_monitor_in_its_largest_unit(n, period, expected):
    task = schedule(interval=every(n, period), grace=30, hard_time_limit=60, soft_time_limit=30)

    config = crons.monitor_config_for(task)

    assert not isinstance(config, str)
    assert config["schedule"] == {"type": "interval", "value": expected[0], "unit": expected[1]}
    assert config["timezone"] == "UTC"
    assert (config["checkin_margin"], config["max_runtime"]) == (1, 1)  # at least a minute each


@pytest.mark.parametrize(
    ("n", "period", "why"),
    [
        (90, "seconds", "90 s interval (Sentry Crons takes whole minutes only)"),
        (30, "seconds", "30 s interval (Sentry Crons' shortest interval is 1 minute)"),
    ],
)
@pytest.mark.django_db
def test_an_interval_sentry_cannot_represent_gets_a_reason_not_a_config(n, period, why):
    task = schedule(interval=every(n, period))

    reason = crons.monitor_config_for(task)

    assert reason == f"not a Crons monitor: {why} — covered by the platform's own detector"


@pytest.mark.django_db
def test_a_one_off_clocked_schedule_is_not_a_monitor():
    when = ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(days=1))
    task = schedule(clocked=when)

    reason = crons.monitor_config_for(task)

    assert isinstance(reason, str)
    assert reason.startswith("not a Crons monitor: a one-off (clocked) schedule")


@pytest.mark.django_db
def test_max_runtime_is_the_jobs_default_hard_limit_when_the_policy_sets_none():
    # diagnostics.sleep: a hard limit of 90 s by default.
    task = schedule(job="diagnostics.sleep", interval=every(10, "minutes"), kwargs='{"seconds": 1}')

    config = crons.monitor_config_for(task)

    assert not isinstance(config, str)
    assert config["max_runtime"] == 2
    assert (config["checkin_margin"], config["failure_issue_threshold"], config["recovery_threshold"]) == (
        1,
        1,
        1,
    )


def test_a_slug_longer_than_relay_keeps_is_cut_to_50_and_stays_distinct():
    first, second = "a" * 60 + "1", "a" * 60 + "2"

    assert crons.monitor_slug("Nightly-Export") == "nightly-export"
    assert len(crons.monitor_slug(first)) == 50
    assert crons.monitor_slug(first) != crons.monitor_slug(second)


@pytest.mark.django_db
def test_renaming_a_schedule_keeps_its_monitor_slug():
    task = schedule(interval=every(5, "minutes"))
    before = crons.load_monitor(task.pk)

    task.name = "nightly export (renamed)"
    task.save()

    after = crons.load_monitor(task.pk)
    assert before is not None and after is not None
    assert after.slug == before.slug == task.policy.slug


@pytest.mark.django_db
def test_a_steady_check_in_reads_one_row_and_an_edit_is_seen_at_the_next_one(django_assert_num_queries):
    task = schedule(interval=every(5, "minutes"), grace=60)
    cache = crons.MonitorCache()
    first = cache.get(task.pk, 90)

    with django_assert_num_queries(1):  # the change log's head; the monitor is the one read before
        assert cache.get(task.pk, 90) is first

    policy = SchedulePolicy.objects.get(task=task)
    policy.grace = 300
    policy.save()  # the admin's way: the change log moves
    edited = cache.get(task.pk, 90)

    assert first is not None and edited is not None
    assert (first.config["checkin_margin"], edited.config["checkin_margin"]) == (1, 5)
    assert edited.config["max_runtime"] == 2  # the run's hard limit: 90 s


def test_the_platform_does_not_enable_the_celery_integrations_own_beat_monitors(fake_sentry):
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    init_sentry(fake_sentry.dsn, environment="test")

    integration = sentry_sdk.get_client().get_integration(CeleryIntegration)
    assert integration is not None
    assert integration.monitor_beat_tasks is False


@pytest.mark.parametrize(
    ("status", "will_retry", "started", "expected"),
    [
        (RunStatus.SUCCEEDED, False, True, ["ok"]),
        (RunStatus.FAILED, False, True, ["error"]),
        (RunStatus.SOFT_TIMEOUT, False, True, ["error"]),
        (RunStatus.HARD_TIMEOUT, False, True, ["error"]),
        (RunStatus.LOST, False, True, ["error"]),
        (RunStatus.RETRYING, True, True, []),  # the next attempt continues the check-in
        (RunStatus.SKIPPED, False, False, []),  # never started: no check-in is open
        (RunStatus.MISSED, False, False, []),  # Sentry marks the slot missed itself
        (RunStatus.SKIPPED, False, True, ["error"]),  # revoked while waiting to retry: close it
    ],
)
@pytest.mark.django_db
def test_which_endings_end_the_check_in(fake_sentry, status, will_retry, started, expected):
    import sentry_sdk

    init_sentry(fake_sentry.dsn, environment="test")
    task = schedule(f"endings {status} {will_retry} {started}", interval=every(5, "minutes"))
    now = timezone.now()
    run = JobRun.objects.create(
        schedule=task,
        job=task.task,
        scheduled_for=now,
        status=status,
        attempt=1 if started else 0,
        started_at=now if started else None,
    )

    crons.on_run_ended(run=run, status=status, will_retry=will_retry, error=None)
    sentry_sdk.flush(timeout=5)

    check_ins = fake_sentry.check_ins(slug_of(task))
    assert [c["status"] for c in check_ins] == expected
    assert all(c["check_in_id"] == run.pk.hex for c in check_ins)


def test_without_a_dsn_nobody_listens_to_the_jobs_signals(settings):
    from django.apps import apps

    from jobs import signals as run_signals

    if settings.SENTRY_DSN:
        pytest.skip("this test process has SENTRY_DSN set: the receivers were connected at start")
    assert not run_signals.has_receivers(run_signals.run_started)
    assert not run_signals.has_receivers(run_signals.run_ended)

    settings.SENTRY_DSN = "http://publickey@127.0.0.1:9/1"
    apps.get_app_config("alerts").ready()
    try:
        assert run_signals.has_receivers(run_signals.run_started)
        assert run_signals.has_receivers(run_signals.run_ended)
    finally:
        crons.disconnect()
    assert not run_signals.has_receivers(run_signals.run_ended)


def test_a_burst_of_check_ins_is_not_dropped_by_the_sdks_queue(fake_sentry):
    import uuid

    import sentry_sdk
    from sentry_sdk.crons import capture_checkin

    init_sentry(fake_sentry.dsn, environment="test")
    for _ in range(1000):  # the SDK's default queue (100) kept 182 of these
        capture_checkin(monitor_slug="crons-burst", check_in_id=uuid.uuid4().hex, status="in_progress")
    sentry_sdk.flush(timeout=30)

    assert len(fake_sentry.check_ins("crons-burst")) == 1000


# -- The admin's "Sentry Crons monitors" page ------------------------------------------------


@pytest.mark.django_db
def test_the_admin_lists_each_schedules_monitor_or_why_it_is_not_one(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("alice", "alice@example.com", "unused"))
    monitored = schedule("every five minutes", interval=every(5, "minutes"))
    schedule("every ninety seconds", interval=every(90, "seconds"))

    response = client.get("/admin/alerts/sentrymonitor/")

    assert response.status_code == 200
    page = response.content.decode()
    assert monitored.policy.slug in page
    assert "&quot;unit&quot;: &quot;minute&quot;, &quot;value&quot;: 5" in page
    assert (
        "not a Crons monitor: 90 s interval (Sentry Crons takes whole minutes only) — "
        "covered by the platform&#x27;s own detector" in page
    )
    assert client.get("/admin/alerts/sentrymonitor/add/").status_code == 403
    detail = client.get(f"/admin/alerts/sentrymonitor/{monitored.pk}/change/")
    assert detail.status_code == 200
    assert "&quot;checkin_margin&quot;: 1" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()  # read-only: edited on the schedule's page


@pytest.mark.django_db
def test_the_admin_page_costs_the_same_queries_for_3_and_30_schedules(client, django_user_model):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(django_user_model.objects.create_superuser("bob", "bob@example.com", "unused"))
    counts = []
    for total in (3, 30):
        while PeriodicTask.objects.count() < total:
            n = PeriodicTask.objects.count()
            schedule(f"s{n}", interval=every(n + 1, "minutes"), hard_time_limit=None)
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/admin/alerts/sentrymonitor/").status_code == 200
        counts.append(len(queries))

    assert counts[0] == counts[1]


# -- Check-ins from a real prefork worker ------------------------------------------------------


@pytest.fixture
def engine(beat_engine):
    return beat_engine


def run_one_slot(engine, task: PeriodicTask) -> JobRun:
    """Claim the schedule's next slot with beat's engine and publish it to the real worker."""
    now = timezone.now().replace(microsecond=0)
    SchedulePolicy.objects.filter(task=task).update(anchor=now, created_at=now)
    engine.load(now=now)
    engine.tick(now=now + timedelta(seconds=60))
    return JobRun.objects.get(schedule=task)


def slug_of(task: PeriodicTask) -> str:
    return crons.monitor_slug(SchedulePolicy.objects.get(task=task).slug)


def assert_one_check_in_per_run(check_ins, run: JobRun, statuses: list[str]) -> None:
    assert [c["status"] for c in check_ins] == statuses
    assert {c["check_in_id"] for c in check_ins} == {run.pk.hex}


@pytest.mark.parametrize(
    ("job", "kwargs", "limits", "status", "outcome"),
    [
        ("heartbeat", {}, {}, RunStatus.SUCCEEDED, "ok"),
        ("diagnostics.fail", {"message": "crons drill"}, {}, RunStatus.FAILED, "error"),
        (
            "diagnostics.sleep",
            {"seconds": 20},
            {"soft_time_limit": 1, "hard_time_limit": 10},
            RunStatus.SOFT_TIMEOUT,
            "error",
        ),
        (
            "diagnostics.sleep",
            {"seconds": 60, "ignore_soft_limit": True},
            {"soft_time_limit": 1, "hard_time_limit": 3},
            RunStatus.HARD_TIMEOUT,
            "error",
        ),
    ],
    ids=["succeeds", "fails", "soft timeout", "hard timeout (main process)"],
)
@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_slot_checks_in_at_its_start_and_at_its_end(
    worker, catalog, engine, fake_sentry, job, kwargs, limits, status, outcome
):
    cron = CrontabSchedule.objects.create(
        minute="*", hour="*", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Asia/Tokyo"
    )
    task = PeriodicTask.objects.create(
        name=f"crons {job} {status}", task=job, crontab=cron, kwargs=json.dumps(kwargs)
    )
    SchedulePolicy.objects.filter(task=task).update(
        grace=120, failures_before_alert=2, successes_before_recovery=3, **limits
    )

    run = wait_for_run(run_one_slot(engine, task).pk, timeout=45)

    assert run.status == status
    check_ins = fake_sentry.wait_for_check_ins(slug_of(task), 2, timeout=30)
    assert_one_check_in_per_run(check_ins, run, ["in_progress", outcome])
    hard = limits.get("hard_time_limit") or catalog_hard_limit(job)
    for check_in in check_ins:
        assert check_in["monitor_config"] == {
            "schedule": {"type": "crontab", "value": "* * * * *"},
            "timezone": "Asia/Tokyo",
            "checkin_margin": 2,
            "max_runtime": -(-hard // 60),
            "failure_issue_threshold": 2,
            "recovery_threshold": 3,
        }
        assert check_in["environment"] == "test"
    duration = check_ins[-1]["duration"]
    assert duration == pytest.approx(run.duration_ms / 1000, abs=1.0)


def catalog_hard_limit(job: str) -> int:
    return JobDefinition.objects.get(name=job).hard_time_limit


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_run_by_hand_with_retries_sends_one_check_in_id_and_error_only_after_its_last_attempt(
    worker, catalog, clean_queues, fake_sentry
):
    task = PeriodicTask.objects.create(
        name="crons retries", task="diagnostics.fail_with_retries", interval=every(10, "minutes")
    )

    (run,) = run_schedules_now(PeriodicTask.objects.filter(pk=task.pk), requested_by="alice").sent
    run = wait_for_run(run.pk, timeout=60)

    assert (run.status, run.attempt, run.origin) == (RunStatus.FAILED, 3, RunOrigin.MANUAL)
    check_ins = fake_sentry.wait_for_check_ins(slug_of(task), 2, timeout=30)
    assert_one_check_in_per_run(check_ins, run, ["in_progress", "error"])
    # Three attempts, one check-in: its duration is Sentry's to measure (backoff included).
    assert check_ins[-1]["duration"] is None
    assert check_ins[0]["monitor_config"]["schedule"] == {"type": "interval", "value": 10, "unit": "minute"}


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_renamed_schedule_checks_in_to_the_same_monitor(worker, catalog, engine, fake_sentry):
    task = PeriodicTask.objects.create(
        name="crons before rename", task="heartbeat", interval=every(1, "minutes")
    )
    first = wait_for_run(run_one_slot(engine, task).pk, timeout=45)
    slug = slug_of(task)
    fake_sentry.wait_for_check_ins(slug, 2, timeout=30)

    task.name = "crons after rename"
    task.save()
    second = wait_for_run(dispatch_by_hand(task).pk, timeout=45)

    check_ins = fake_sentry.wait_for_check_ins(slug, 4, timeout=30)
    assert [(c["check_in_id"], c["status"]) for c in check_ins] == [
        (first.pk.hex, "in_progress"),
        (first.pk.hex, "ok"),
        (second.pk.hex, "in_progress"),
        (second.pk.hex, "ok"),
    ]


def dispatch_by_hand(task: PeriodicTask) -> JobRun:
    (run,) = run_schedules_now(PeriodicTask.objects.filter(pk=task.pk), requested_by="alice").sent
    return run


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_90_second_interval_schedule_runs_but_sends_no_check_in(worker, catalog, engine, fake_sentry):
    task = PeriodicTask.objects.create(
        name="crons ninety seconds", task="heartbeat", interval=every(90, "seconds")
    )
    sentinel = PeriodicTask.objects.create(
        name="crons sentinel", task="heartbeat", interval=every(1, "minutes")
    )

    run = wait_for_run(dispatch_by_hand(task).pk, timeout=45)
    # A later run on the same worker that does check in: by then the first would have arrived.
    wait_for_run(dispatch_by_hand(sentinel).pk, timeout=45)
    fake_sentry.wait_for_check_ins(slug_of(sentinel), 2, timeout=30)
    time.sleep(1)  # the other pool process's SDK thread sends within milliseconds

    assert run.status == RunStatus.SUCCEEDED
    assert fake_sentry.check_ins(slug_of(task)) == []


# -- Runs whose pool process dies (recorded by the worker's main process) ----------------------


def kill_pool_processes(worker) -> None:
    """SIGKILL every pool process of the worker (it replaces them); its main process records the loss."""
    for child in children_of(worker.process.pid):
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_run_lost_with_its_pool_process_ends_its_check_in_in_error(
    worker, catalog, clean_queues, fake_sentry
):
    task = PeriodicTask.objects.create(
        name="crons lost", task="diagnostics.sleep", interval=every(10, "minutes"), kwargs='{"seconds": 30}'
    )
    run = dispatch_by_hand(task)
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    fake_sentry.wait_for_check_ins(slug_of(task), 1, timeout=30)

    kill_pool_processes(worker)

    run = wait_for_run(run.pk, timeout=60)
    assert (run.status, run.error_type) == (RunStatus.LOST, "WorkerLostError")
    check_ins = fake_sentry.wait_for_check_ins(slug_of(task), 2, timeout=30)
    assert_one_check_in_per_run(check_ins, run, ["in_progress", "error"])


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_lost_attempt_with_retries_left_continues_the_same_check_in(
    worker, catalog, clean_queues, fake_sentry
):
    task = PeriodicTask.objects.create(
        name="crons lost then retried",
        task="diagnostics.fail_with_retries",
        interval=every(10, "minutes"),
        kwargs='{"seconds": 3}',
    )
    run = dispatch_by_hand(task)
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    fake_sentry.wait_for_check_ins(slug_of(task), 1, timeout=30)

    kill_pool_processes(worker)  # attempt 1 lost: retrying, its message requeued

    run = wait_for_run(run.pk, timeout=90)
    assert (run.status, run.attempt) == (RunStatus.FAILED, 3)
    fake_sentry.wait_for_check_ins(slug_of(task), 2, timeout=30)
    time.sleep(1)  # nothing else may follow
    assert_one_check_in_per_run(fake_sentry.check_ins(slug_of(task)), run, ["in_progress", "error"])


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_run_terminated_by_a_revoke_ends_its_check_in_in_error(worker, catalog, clean_queues, fake_sentry):
    from scheduler.celery import app

    task = PeriodicTask.objects.create(
        name="crons terminated",
        task="diagnostics.sleep",
        interval=every(10, "minutes"),
        kwargs='{"seconds": 30}',
    )
    run = dispatch_by_hand(task)
    running = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)

    app.control.revoke(str(run.pk), terminate=True, signal="SIGTERM", destination=[running.worker])

    run = wait_for_run(run.pk, timeout=30)
    assert (run.status, run.error_type) == (RunStatus.FAILED, "Terminated")
    check_ins = fake_sentry.wait_for_check_ins(slug_of(task), 2, timeout=30)
    assert_one_check_in_per_run(check_ins, run, ["in_progress", "error"])
