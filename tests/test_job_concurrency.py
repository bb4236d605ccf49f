"""A job's ``max_concurrency``: never more than N runs at once across every worker, on the real parts.

- ``jobs.concurrency`` on the real database: places up to the limit, one per
  holder, given back, lapsing without renewal, renewed by their worker, and
  threads racing for them never exceeding the limit;
- the ``@job`` options checked at decoration;
- real prefork workers (the session worker and a second one): a burst of
  runs of ``diagnostics.two_at_a_time`` (``max_concurrency=2``) never has
  more than two running, every run succeeds on its first attempt, and the
  ones that waited say so on their runs; a send-only client's message that
  waits keeps its headers; a SIGKILLed worker's places come back after the
  lease TTL and the waiting runs then finish; a pool process that died and a
  terminated run give their places back from the worker's main process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs import concurrency, runs
from jobs.catalog import load_job_modules, publish_catalog
from jobs.dispatch import dispatch
from jobs.framework import JOB_SPECS, forwarded_headers, job
from jobs.models import ConcurrencyLease, JobDefinition, JobRun, RunOrigin, RunStatus
from jobs.sendonly import names
from jobs.sendonly.client import Client
from scheduler.celery import app
from tests.conftest import wait_for_run
from tests.support.processes import Service, children_of, start_worker

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

KEY = "tests.limited"
LIMITED = names.DIAGNOSTICS_TWO_AT_A_TIME
LIMIT = 2
SAMPLE_SECONDS = 0.05


# --- jobs.concurrency on the real database ---------------------------------------------


def test_places_up_to_the_limit_then_refused_until_one_is_given_back():
    assert concurrency.acquire(KEY, "run-1", 2, "w1")
    assert concurrency.acquire(KEY, "run-2", 2, "w1")
    refused = concurrency.acquire(KEY, "run-3", 2, "w2")
    assert not refused
    assert (refused.granted, refused.new, refused.held) == (False, False, 2)
    assert concurrency.live_holders(KEY) == 2

    assert concurrency.release("run-1") is True
    assert concurrency.release("run-1") is False  # idempotent
    taken = concurrency.acquire(KEY, "run-3", 2, "w2")
    assert (taken.granted, taken.new, taken.held) == (True, True, 2)
    assert set(ConcurrencyLease.objects.values_list("holder", flat=True)) == {"run-2", "run-3"}


def test_a_holder_asking_again_gets_its_own_place_never_a_second_one():
    first = concurrency.acquire(KEY, "run-1", 2, "w1")
    again = concurrency.acquire(KEY, "run-1", 2, "w2")  # a redelivered copy, or the next attempt
    assert (first.new, again.granted, again.new, again.held) == (True, True, False, 1)
    assert ConcurrencyLease.objects.filter(holder="run-1").count() == 1
    # Full: still its own place, not refused.
    assert concurrency.acquire(KEY, "run-2", 2, "w1")
    assert concurrency.acquire(KEY, "run-1", 2, "w1").granted
    assert concurrency.live_holders(KEY) == 2
    # adopt: the run's attempt now on w2 renews it from there.
    assert concurrency.adopt("run-1", "w2") is True
    assert ConcurrencyLease.objects.get(holder="run-1").worker == "w2"
    assert concurrency.adopt("nobody", "w2") is False


def test_a_place_lapses_without_renewal_and_its_worker_renews_it():
    ttl = concurrency.lease_ttl_seconds()
    assert ttl == max(3, 3 * settings.WORKER_PRESENCE_REFRESH_SECONDS)
    t0 = timezone.now()
    assert concurrency.acquire(KEY, "dead-1", 2, "dead-worker", now=t0)
    assert concurrency.acquire(KEY, "live-1", 2, "live-worker", now=t0)
    assert not concurrency.acquire(KEY, "run-3", 2, "w", now=t0 + timedelta(seconds=ttl - 1))

    # The live worker renews near the end of the TTL; the dead one cannot.
    assert concurrency.renew("live-worker", now=t0 + timedelta(seconds=ttl - 1)) == 1
    later = t0 + timedelta(seconds=ttl + 1)
    taken = concurrency.acquire(KEY, "run-3", 2, "w", now=later)
    assert (taken.granted, taken.new, taken.held) == (True, True, 2)
    assert set(ConcurrencyLease.objects.values_list("holder", flat=True)) == {"live-1", "run-3"}
    assert not concurrency.acquire(KEY, "run-4", 2, "w", now=later)


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="1 or more"):
        concurrency.acquire(KEY, "run-1", 0, "w")


def race_for_places(key: str, racers: int, limit: int) -> tuple[list[str], list[BaseException]]:
    """``racers`` threads (own connections) released at once, each asking for a place; who got one."""
    barrier = threading.Barrier(racers)
    granted: list[str] = []
    errors: list[BaseException] = []

    def race(holder: str) -> None:
        try:
            barrier.wait(timeout=10)
            if concurrency.acquire(key, holder, limit, "racer"):
                granted.append(holder)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(f"{key}-{i}",)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return granted, errors


@pytest.mark.parametrize("round_", range(3))
def test_threads_racing_for_places_never_exceed_the_limit(round_):
    key = f"{KEY}.race{round_}"
    granted, errors = race_for_places(key, racers=8, limit=3)
    assert not errors, errors
    assert len(granted) == 3
    assert set(ConcurrencyLease.objects.filter(key=key).values_list("holder", flat=True)) == set(granted)


# --- the options of @job ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_max_concurrency_must_be_a_whole_number_of_one_or_more(bad):
    with pytest.raises(ValueError, match="max_concurrency"):
        job("tests.bad_concurrency", max_concurrency=bad)


@pytest.mark.parametrize("bad", ["", "fast", "10/d", "0/s", "-1/m", "10 /s", "/s"])
def test_rate_limit_must_be_celerys_format(bad):
    with pytest.raises(ValueError, match="rate_limit"):
        job("tests.bad_rate", rate_limit=bad)


def test_the_limits_are_published_with_the_job():
    load_job_modules()
    spec = JOB_SPECS[LIMITED]
    assert (spec.max_concurrency, spec.rate_limit) == (LIMIT, None)
    assert JOB_SPECS[names.DIAGNOSTICS_SLEEP].max_concurrency is None

    publish_catalog(worker="tests")
    published = JobDefinition.objects.get(name=LIMITED)
    assert (published.max_concurrency, published.rate_limit) == (LIMIT, "")
    assert JobDefinition.objects.get(name=names.DIAGNOSTICS_SLEEP).max_concurrency is None


def test_a_rate_limit_goes_to_celery_as_is():
    def limited() -> None:
        """Does nothing, at most ten times a minute on each worker."""

    task = job("tests.rate_limited", rate_limit="10/m", max_concurrency=3)(limited)
    try:
        assert (task.rate_limit, task.max_concurrency) == ("10/m", 3)
        assert (
            JOB_SPECS["tests.rate_limited"].rate_limit,
            JOB_SPECS["tests.rate_limited"].max_concurrency,
        ) == (
            "10/m",
            3,
        )
    finally:
        JOB_SPECS.pop("tests.rate_limited", None)
        app.tasks.pop("tests.rate_limited", None)


def test_a_waiting_message_keeps_our_headers():
    class Request:
        headers = None
        run_origin = "client"
        requested_by = "billing"
        scheduled_for = "2026-12-01T00:00:00+00:00"
        schedule = None

    assert forwarded_headers(Request()) == {
        "run_origin": "client",
        "requested_by": "billing",
        "scheduled_for": "2026-12-01T00:00:00+00:00",
    }


# --- the waiting note on a run ---------------------------------------------------------


def queued_run(**fields) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job=LIMITED, kwargs={"seconds": 0}, scheduled_for=now, enqueued_at=now, **fields
    )


def test_a_waiting_run_is_noted_once_and_its_start_clears_what_it_waited_for():
    run = queued_run()
    t0 = timezone.now()
    assert runs.note_waiting(run.pk, "a concurrency place (2 running)", now=t0)
    assert runs.note_waiting(run.pk, "a concurrency place (2 running)", now=t0 + timedelta(seconds=5))
    run.refresh_from_db()
    assert (run.status, run.waiting_since, run.waiting_for) == (
        RunStatus.QUEUED,
        t0,
        "a concurrency place (2 running)",
    )

    started = runs.start_run(str(run.pk), job=LIMITED, attempt=1, worker="w")
    assert isinstance(started, JobRun)
    run.refresh_from_db()
    assert (run.status, run.waiting_since, run.waiting_for) == (RunStatus.RUNNING, t0, "")
    assert not runs.note_waiting(run.pk, "too late")  # running: not waiting


def test_a_run_past_its_deadline_or_ended_is_not_noted_waiting():
    late = queued_run(deadline=timezone.now() - timedelta(seconds=1))
    ended = queued_run(status=RunStatus.SKIPPED)
    assert not runs.note_waiting(late.pk, "x")
    assert not runs.note_waiting(ended.pk, "x")
    assert not runs.note_waiting("not-a-uuid", "x")
    assert JobRun.objects.filter(waiting_since__isnull=False).count() == 0


# --- real workers ----------------------------------------------------------------------


@pytest.fixture
def second_worker(service_env, logs_dir) -> Iterable[Service]:
    service = start_worker(service_env, logs_dir, name="worker-conc")
    service.wait_for_log("ready.", timeout=120)
    yield service
    service.stop()


class RunningSampler:
    """Samples how many of ``run_ids`` are ``running`` every 50 ms, in a thread, until stopped."""

    def __init__(self, run_ids: Iterable) -> None:
        self.run_ids = list(run_ids)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                running = JobRun.objects.filter(pk__in=self.run_ids, status=RunStatus.RUNNING).count()
                self.samples.append(running)
                self._stop.wait(SAMPLE_SECONDS)
        finally:
            connection.close()


def wait_for_all(run_ids: Iterable, timeout: float) -> list[JobRun]:
    deadline = time.monotonic() + timeout
    return [wait_for_run(pk, timeout=max(1.0, deadline - time.monotonic())) for pk in run_ids]


@pytest.mark.slow
def test_a_burst_on_two_workers_never_runs_more_than_the_limit(worker, second_worker, catalog, clean_queues):
    burst = [dispatch(LIMITED, kwargs={"seconds": 1.5}) for _ in range(8)]
    ids = [run.pk for run in burst]
    with RunningSampler(ids) as sampler:
        done = wait_for_all(ids, timeout=120)

    assert max(sampler.samples) <= LIMIT, sampler.samples
    assert max(sampler.samples) == LIMIT  # the limit was used, not just respected
    assert [run.status for run in done] == [RunStatus.SUCCEEDED] * len(done)
    assert {run.attempt for run in done} == {1}  # waiting is not a retry
    waited = [run for run in done if run.waiting_since is not None]
    # Four pool processes took eight messages at once: at most two started without waiting.
    assert len(waited) >= len(done) - LIMIT
    assert all(run.waiting_for == "" for run in done)  # cleared at start
    assert all(
        run.started_at is not None and run.waiting_since is not None and run.started_at >= run.waiting_since
        for run in waited
    )
    assert {run.worker.split("@")[0].rsplit("-", 1)[0] for run in done} <= {"worker", "worker-conc"}
    # Every place given back (each just after its run's end was recorded).
    wait_for_no_places_of(LIMITED)
    assert "waits for a concurrency place" in worker.log() + second_worker.log()


def hold_places(holders: list[str]) -> None:
    for holder in holders:
        assert concurrency.acquire(LIMITED, holder, LIMIT, "tests-holder")


@pytest.mark.slow
def test_a_waiting_run_starts_when_a_place_is_given_back(worker, catalog, clean_queues):
    holders = ["tests-a", "tests-b"]
    hold_places(holders)
    run = dispatch(LIMITED, kwargs={"seconds": 0})
    deadline = time.monotonic() + 30
    while not JobRun.objects.filter(pk=run.pk).exclude(waiting_for="").exists():
        assert time.monotonic() < deadline, "the run was never noted waiting"
        concurrency.renew("tests-holder")
        time.sleep(0.2)
    waiting = JobRun.objects.get(pk=run.pk)
    assert waiting.status == RunStatus.QUEUED
    assert waiting.waiting_for == (f"a concurrency place: {LIMITED} runs at most 2 at once (2 running)")

    concurrency.release(holders[0])
    ended = wait_for_run(run.pk, timeout=60)
    assert (ended.status, ended.attempt, ended.waiting_for) == (RunStatus.SUCCEEDED, 1, "")
    assert ended.waiting_since == waiting.waiting_since
    assert ConcurrencyLease.objects.filter(key=LIMITED).values_list("holder", flat=True).get() == "tests-b"


@pytest.mark.slow
def test_a_send_only_clients_waiting_message_keeps_its_origin(worker, catalog, clean_queues):
    holders = ["tests-a", "tests-b"]
    hold_places(holders)
    with Client(
        settings.CELERY_BROKER_URL, service="billing", catalog_ttl=0, catalog_url=settings.REDIS_URL
    ) as client:
        call = client.dispatch(LIMITED, kwargs={"seconds": 0})
    worker.wait_for_log(f"{LIMITED}[{call.run_id}]: waits for", timeout=30)
    waiting = JobRun.objects.get(pk=call.run_id)  # recorded from its message when it first waited
    assert (waiting.status, waiting.origin, waiting.requested_by) == (
        RunStatus.QUEUED,
        RunOrigin.CLIENT,
        "billing",
    )
    assert waiting.waiting_since is not None and waiting.waiting_for.startswith("a concurrency place")
    concurrency.release(holders[0])

    run = wait_for_run(call.run_id, timeout=60)
    assert (run.status, run.origin, run.requested_by, run.attempt) == (
        RunStatus.SUCCEEDED,
        RunOrigin.CLIENT,
        "billing",
        1,
    )


@pytest.mark.slow
def test_a_killed_workers_places_come_back_after_the_lease_ttl(
    worker, service_env, logs_dir, catalog, clean_queues
):
    queue = "concurrency_kill"
    doomed = start_worker(service_env, logs_dir, name="worker-doomed", queues=queue)
    try:
        doomed.wait_for_log("ready.", timeout=120)
        holding = [dispatch(LIMITED, kwargs={"seconds": 60}, queue=queue) for _ in range(LIMIT)]
        for run in holding:
            wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=60)
        assert ConcurrencyLease.objects.filter(key=LIMITED).count() == LIMIT

        waiting = [dispatch(LIMITED, kwargs={"seconds": 0}) for _ in range(2)]
        deadline = time.monotonic() + 30
        while JobRun.objects.filter(pk__in=[r.pk for r in waiting], waiting_since__isnull=True).exists():
            assert time.monotonic() < deadline, "the runs never waited"
            time.sleep(0.2)

        killed_at = timezone.now()
        for pid in [*children_of(doomed.process.pid), doomed.process.pid]:
            os.kill(pid, signal.SIGKILL)  # the whole worker: nobody gives the places back
        doomed.process.wait(timeout=30)

        done = wait_for_all([r.pk for r in waiting], timeout=90)
    finally:
        doomed.stop()
    assert [run.status for run in done] == [RunStatus.SUCCEEDED] * len(done)
    assert all(run.started_at is not None and run.started_at > killed_at for run in done)
    assert {run.attempt for run in done} == {1}
    # The dead worker's runs are still recorded running (no copy of their
    # messages came back yet); their places are gone.
    assert JobRun.objects.filter(pk__in=[r.pk for r in holding], status=RunStatus.RUNNING).count() == LIMIT
    assert not ConcurrencyLease.objects.filter(holder__in=[str(r.pk) for r in holding]).exists()


def wait_for_no_places_of(key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while ConcurrencyLease.objects.filter(key=key).exists():
        assert time.monotonic() < deadline, list(ConcurrencyLease.objects.filter(key=key).values())
        time.sleep(0.1)


def wait_for_no_places(holder: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while ConcurrencyLease.objects.filter(holder=holder).exists():
        assert time.monotonic() < deadline, f"{holder} still holds its place"
        time.sleep(0.1)


@pytest.mark.slow
def test_the_main_process_gives_back_the_place_of_a_pool_process_that_died(worker, catalog, clean_queues):
    run = dispatch(LIMITED, kwargs={"seconds": 60})
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    assert ConcurrencyLease.objects.filter(holder=str(run.pk)).exists()

    for child in children_of(worker.process.pid):  # the pool replaces killed children
        os.kill(child, signal.SIGKILL)

    ended = wait_for_run(run.pk, timeout=60)
    assert (ended.status, ended.error_type) == (RunStatus.LOST, "WorkerLostError")
    # The worker lives on and renews its places: only a release ends this one.
    wait_for_no_places(str(run.pk))
    assert worker.process.poll() is None
    # Its place is free: the next run starts without waiting.
    after = wait_for_run(dispatch(LIMITED, kwargs={"seconds": 0}).pk, timeout=60)
    assert (after.status, after.waiting_since) == (RunStatus.SUCCEEDED, None)


@pytest.mark.slow
def test_a_terminated_run_gives_back_its_place(worker, catalog, clean_queues):
    run = dispatch(LIMITED, kwargs={"seconds": 60})
    wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    app.control.revoke(str(run.pk), terminate=True, signal="SIGKILL")

    ended = wait_for_run(run.pk, timeout=60)
    assert (ended.status, ended.error_type) == (RunStatus.FAILED, "Terminated")
    wait_for_no_places(str(run.pk))


@pytest.mark.slow
def test_a_run_that_waits_past_its_deadline_is_recorded_missed(worker, catalog, clean_queues):
    holders = ["tests-a", "tests-b"]
    hold_places(holders)
    run = dispatch(LIMITED, kwargs={"seconds": 0}, starting_deadline=3)

    ended = wait_for_run(run.pk, timeout=60)
    assert ended.status == RunStatus.MISSED
    assert ended.started_at is None
    assert ended.waiting_since is not None  # it waited, then its deadline passed
    assert set(ConcurrencyLease.objects.filter(key=LIMITED).values_list("holder", flat=True)) == set(holders)


@pytest.mark.slow
def test_a_long_run_keeps_its_place_renewed_by_its_worker(worker, catalog, clean_queues):
    run = dispatch(LIMITED, kwargs={"seconds": 12})  # twice the workers' lease TTL (3 x 2 s)
    started = wait_for_run(run.pk, statuses={RunStatus.RUNNING}, timeout=30)
    lease = ConcurrencyLease.objects.get(holder=str(run.pk))
    assert (lease.key, lease.worker) == (LIMITED, started.worker)

    deadline = time.monotonic() + 20
    while ConcurrencyLease.objects.get(holder=str(run.pk)).expires_at <= lease.expires_at:
        assert time.monotonic() < deadline, "the lease was never renewed"
        time.sleep(0.2)
    assert wait_for_run(run.pk, timeout=60).status == RunStatus.SUCCEEDED
    wait_for_no_places(str(run.pk))


@pytest.mark.slow
def test_a_failed_run_gives_back_its_place(worker, catalog, clean_queues):
    run = dispatch(LIMITED, kwargs={"seconds": -1})  # the job refuses it: ValueError

    ended = wait_for_run(run.pk, timeout=60)
    assert (ended.status, ended.error_type) == (RunStatus.FAILED, "builtins.ValueError")
    wait_for_no_places(str(run.pk))
    assert worker.log().count(f"{LIMITED}[{run.pk}]: waits for") == 0
