"""`/metrics`: the token, each series' value for seeded schedules and runs, the switch, the alert rules.

The body is parsed with prometheus_client's own parser, as Prometheus reads
it. Each alert rule of the README is evaluated here in Python over the parsed
series (same comparison, same margin): it must fire for the broken case and
stay quiet for the healthy one. Queue lengths come from the real broker
(Redis or RabbitMQ).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from jobs import tally
from jobs.catalog import publish_catalog
from jobs.dispatch import dispatch
from jobs.models import JobDefinition, JobRun, RunStatus, WorkerPresence
from scheduler import metrics
from scheduler.beat.entries import job_defaults
from scheduler.describe import next_slots
from scheduler.metrics import (
    DURATION_BUCKETS,
    PlatformCollector,
    exposition,
    forget_cached_schedules,
    wait_for_schedule_refresh,
)
from scheduler.models import BeatLease, SchedulePolicy
from tests.support.queues import empty_queues, queue_length

pytestmark = [pytest.mark.broker, pytest.mark.django_db]

URL = "/metrics"
TOKEN = "s3cret-metrics-token"
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
# The README's rules, their thresholds as there.
SCHEDULE_MARGIN_SECONDS = 300
BEAT_STALE_SECONDS = 60


@pytest.fixture
def metrics_on(settings):
    publish_catalog(worker="tests")
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_PER_SCHEDULE = True
    forget_cached_schedules()  # each test reads its own schedules
    yield settings
    forget_cached_schedules()


def samples(body: bytes | str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)], parsed as Prometheus parses the exposition."""
    text = body.decode() if isinstance(body, bytes) else body
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def by_label(series: dict, name: str, label: str) -> dict[str, float]:
    return {labels[label]: value for labels, value in series.get(name, [])}


def scrape(client) -> dict:
    response = client.get(URL, **AUTH)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content)


def hourly(name: str, slot_ago: timedelta, job: str = "heartbeat", **fields) -> PeriodicTask:
    """An hourly interval schedule whose slots fall ``slot_ago`` before now, and every hour around it."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(name=name, task=job, interval=every, **fields)
    last_slot = (timezone.now() - slot_ago).replace(microsecond=0)
    SchedulePolicy.objects.filter(task=task).update(anchor=last_slot, last_slot_at=last_slot)
    return task


def add_run(task: PeriodicTask | None, slot_ago: timedelta, status: str, **fields) -> JobRun:
    return JobRun.objects.create(
        schedule=task,
        schedule_name=task.name if task else "",
        job=fields.pop("job", task.task if task else "heartbeat"),
        scheduled_for=timezone.now() - slot_ago,
        status=status,
        **fields,
    )


def slug(task: PeriodicTask) -> str:
    return SchedulePolicy.objects.get(task=task).slug


# --- The token ---------------------------------------------------------------------------


def test_without_a_token_configured_metrics_are_off_a_404_even_with_a_header(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get(URL).status_code == 404
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer anything").status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        "Bearer \u00e9\u00e8",
    ],
)
def test_a_missing_or_wrong_token_gets_a_401_naming_the_scheme(client, metrics_on, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = client.get(URL, **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"beatplatform_" not in response.content


def test_the_right_token_gets_the_exposition_case_insensitive_scheme_and_get_only(client, metrics_on):
    assert client.get(URL, HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200
    assert client.post(URL, **AUTH).status_code == 405
    assert client.get(URL, {"junk": "%ff\u00e9"}, **AUTH).status_code == 200  # query strings are ignored
    assert client.get(URL, {"junk": "\x00"}, **AUTH).status_code == 400  # the NUL-byte guard, never a 500


# --- Per schedule ------------------------------------------------------------------------


def test_per_schedule_gauges_for_seeded_schedules(client, metrics_on):
    now = timezone.now()
    cron, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="9", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Europe/Berlin"
    )
    berlin = PeriodicTask.objects.create(name="Berlin morning", task="heartbeat", crontab=cron)
    ok = hourly("healthy hourly", timedelta(minutes=20))
    add_run(ok, timedelta(minutes=20), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=19))
    add_run(ok, timedelta(minutes=80), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=79))
    add_run(ok, timedelta(seconds=5), RunStatus.QUEUED)
    add_run(ok, timedelta(seconds=3), RunStatus.RUNNING, started_at=now)
    add_run(ok, timedelta(seconds=1), RunStatus.RETRYING)
    off = hourly("disabled one", timedelta(minutes=5), enabled=False)
    paused = hourly("paused one", timedelta(minutes=5))
    SchedulePolicy.objects.filter(task=paused).update(
        paused_at=now, pause_note="freeze", paused_until=now + timedelta(days=1)
    )
    was_paused = hourly("pause over", timedelta(minutes=5))
    SchedulePolicy.objects.filter(task=was_paused).update(
        paused_at=now - timedelta(days=2), pause_note="old", paused_until=now - timedelta(days=1)
    )

    series = scrape(client)

    info = {labels["schedule"]: labels for labels, value in series["beatplatform_schedule_info"]}
    assert info[slug(berlin)] == {
        "schedule": slug(berlin),
        "name": "Berlin morning",
        "job": "heartbeat",
        "timezone": "Europe/Berlin",
    }
    assert info[slug(ok)]["timezone"] == "UTC"
    assert {value for _, value in series["beatplatform_schedule_info"]} == {1.0}

    next_time = by_label(series, "beatplatform_schedule_next_schedule_time_seconds", "schedule")
    defaults = job_defaults()
    for task in (berlin, ok, paused):
        task.refresh_from_db()
        expected = next_slots(task, timezone.now() - timedelta(seconds=30), 3, defaults)
        # The slot beat computes after the scrape's "now" (one of these: the scrape came between).
        assert next_time[slug(task)] in [slot.timestamp() for slot in expected]
    assert slug(off) not in next_time  # a disabled schedule has no next slot
    assert next_time[slug(ok)] == pytest.approx((now + timedelta(minutes=40)).timestamp(), abs=2)

    last = by_label(series, "beatplatform_schedule_last_schedule_time_seconds", "schedule")
    assert last[slug(ok)] == SchedulePolicy.objects.get(task=ok).last_slot_at.timestamp()
    assert slug(berlin) not in last  # never claimed

    success = by_label(series, "beatplatform_schedule_last_successful_time_seconds", "schedule")
    assert success[slug(ok)] == pytest.approx((now - timedelta(minutes=19)).timestamp())
    assert slug(berlin) not in success

    active = by_label(series, "beatplatform_schedule_active_runs", "schedule")
    assert active[slug(ok)] == 3
    assert active[slug(berlin)] == 0

    suspended = by_label(series, "beatplatform_schedule_suspended", "schedule")
    assert suspended[slug(off)] == 1
    assert suspended[slug(paused)] == 1
    assert suspended[slug(was_paused)] == 0
    assert suspended[slug(ok)] == 0


def test_odd_schedule_names_are_escaped_and_read_back_unchanged(client, metrics_on):
    odd = 'quote " backslash \\ newline \n tab \t brace } ünï 日本 #'
    task = hourly(odd, timedelta(minutes=5))

    series = scrape(client)

    info = {labels["schedule"]: labels["name"] for labels, _ in series["beatplatform_schedule_info"]}
    assert info[slug(task)] == odd


def test_per_schedule_series_can_be_switched_off(client, metrics_on):
    hourly("one", timedelta(minutes=5))
    add_run(None, timedelta(minutes=1), RunStatus.SUCCEEDED, duration_ms=5)
    metrics_on.METRICS_PER_SCHEDULE = False

    series = scrape(client)

    assert not [name for name in series if name.startswith("beatplatform_schedule")]
    assert "beatplatform_runs_total" in series
    assert "beatplatform_workers" in series


def test_queries_do_not_grow_with_the_number_of_schedules(metrics_on):
    def count() -> int:
        tally.advance()  # the run tally's own writes come once a minute, not with every scrape
        with CaptureQueriesContext(connection) as queries:
            exposition(PlatformCollector(per_schedule=True))
        return len(queries)

    for i in range(3):
        task = hourly(f"few {i}", timedelta(minutes=5))
        add_run(task, timedelta(minutes=5), RunStatus.SUCCEEDED, finished_at=timezone.now())
    few = count()
    for i in range(40):
        task = hourly(f"many {i}", timedelta(minutes=5))
        add_run(task, timedelta(minutes=5), RunStatus.SUCCEEDED, finished_at=timezone.now())
        add_run(task, timedelta(minutes=1), RunStatus.QUEUED)
    assert count() == few


# --- Runs --------------------------------------------------------------------------------


def test_run_counter_and_histograms_per_job(client, metrics_on):
    task = hourly("counted", timedelta(minutes=5))
    for ms, late in ((50, 20), (700, 300), (4000, 1500)):
        add_run(task, timedelta(seconds=ms), RunStatus.SUCCEEDED, duration_ms=ms, lateness_ms=late)
    add_run(task, timedelta(hours=1), RunStatus.FAILED, duration_ms=90_000, lateness_ms=40)
    add_run(task, timedelta(hours=2), RunStatus.MISSED)  # neither duration nor lateness
    add_run(None, timedelta(hours=2), RunStatus.SUCCEEDED, job="diagnostics", duration_ms=2)

    series = scrape(client)

    totals = {(labels["job"], labels["status"]): value for labels, value in series["beatplatform_runs_total"]}
    assert totals[("heartbeat", "succeeded")] == 3
    assert totals[("heartbeat", "failed")] == 1
    assert totals[("heartbeat", "missed")] == 1
    assert totals[("diagnostics", "succeeded")] == 1
    # Every catalog job has a series from the start.
    for job in JobDefinition.objects.values_list("name", flat=True):
        assert any(key[0] == job for key in totals)

    duration = {
        labels["le"]: value
        for labels, value in series["beatplatform_run_duration_seconds_bucket"]
        if labels["job"] == "heartbeat"
    }
    assert duration["0.1"] == 1  # 50 ms
    assert duration["0.5"] == 1
    assert duration["1.0"] == 2  # + 700 ms
    assert duration["5.0"] == 3  # + 4 s
    assert duration["60.0"] == 3
    assert duration["300.0"] == 4  # + 90 s
    assert duration["+Inf"] == 4
    assert len(duration) == len(DURATION_BUCKETS) + 1
    count = by_label(series, "beatplatform_run_duration_seconds_count", "job")
    total = by_label(series, "beatplatform_run_duration_seconds_sum", "job")
    assert count["heartbeat"] == 4
    assert total["heartbeat"] == pytest.approx(94.75)
    lateness = {
        labels["le"]: value
        for labels, value in series["beatplatform_run_lateness_seconds_bucket"]
        if labels["job"] == "heartbeat"
    }
    assert lateness["0.05"] == 2  # 20 ms, 40 ms
    assert lateness["0.5"] == 3
    assert lateness["2.0"] == 4
    assert by_label(series, "beatplatform_run_lateness_seconds_sum", "job")["heartbeat"] == pytest.approx(
        1.86
    )


# --- Beat and the broker -----------------------------------------------------------------


def test_beat_leader_and_its_last_tick(client, metrics_on):
    assert scrape(client).get("beatplatform_beat_leader") is None  # no beat ever ran
    renewed = timezone.now() - timedelta(seconds=3)
    BeatLease.objects.create(
        name="beat",
        holder="beat@host:42",
        token=7,
        expires_at=renewed + timedelta(seconds=10),
        renewed_at=renewed,
    )

    series = scrape(client)

    assert by_label(series, "beatplatform_beat_leader", "holder") == {"beat@host:42": 1}
    assert series["beatplatform_beat_last_tick_timestamp_seconds"][0][1] == renewed.timestamp()

    BeatLease.objects.filter(name="beat").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert by_label(scrape(client), "beatplatform_beat_leader", "holder") == {"beat@host:42": 0}


QUEUE_A, QUEUE_B = "metrics_unserved_q", "metrics_served_q"


@pytest.fixture
def two_queues(metrics_on, django_capture_on_commit_callbacks):
    """QUEUE_A: 3 messages, no live worker; QUEUE_B: 2 messages and a live worker (a dead one on A)."""
    JobDefinition.objects.filter(name="heartbeat").update(queue=QUEUE_A)
    empty_queues([QUEUE_A, QUEUE_B])
    # Real messages, published as the platform publishes them (after commit); no worker takes them.
    with django_capture_on_commit_callbacks(execute=True):
        for queue, count in ((QUEUE_A, 3), (QUEUE_B, 2)):
            for _ in range(count):
                dispatch("heartbeat", queue=queue)
    assert (queue_length(QUEUE_A), queue_length(QUEUE_B)) == (3, 2)
    now = timezone.now()
    WorkerPresence.objects.create(hostname="live@h", queues=[QUEUE_B], jobs=["heartbeat"], last_seen_at=now)
    WorkerPresence.objects.create(
        hostname="dead@h", queues=[QUEUE_A], jobs=["heartbeat"], last_seen_at=now - timedelta(hours=1)
    )
    yield
    empty_queues([QUEUE_A, QUEUE_B])


def test_queue_lengths_from_the_broker_and_live_workers_per_queue(client, two_queues):
    series = scrape(client)

    lengths = by_label(series, "beatplatform_queue_length", "queue")
    assert lengths[QUEUE_A] == 3
    assert lengths[QUEUE_B] == 2
    assert lengths["default"] == 0
    workers = by_label(series, "beatplatform_workers", "queue")
    assert workers[QUEUE_A] == 0
    assert workers[QUEUE_B] == 1
    assert series["beatplatform_broker_up"][0][1] == 1


def test_a_broker_that_does_not_answer_drops_the_lengths_not_the_scrape(client, metrics_on):
    from settings.celery_app import app

    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        series = scrape(client)
    finally:
        app.conf.broker_url = previous
    assert "beatplatform_queue_length" not in series
    assert series["beatplatform_broker_up"][0][1] == 0
    assert "beatplatform_workers" in series


# --- The README's alert rules, evaluated over the exposition ------------------------------


def schedule_not_succeeding(series: dict, now: float) -> set[str]:
    """BeatplatformScheduleNotSucceeding:

    time() - beatplatform_schedule_last_successful_time_seconds
      > on(schedule) (beatplatform_schedule_next_schedule_time_seconds
                      - beatplatform_schedule_last_schedule_time_seconds) + 300
    and on(schedule) beatplatform_schedule_suspended == 0
    """
    success = by_label(series, "beatplatform_schedule_last_successful_time_seconds", "schedule")
    nxt = by_label(series, "beatplatform_schedule_next_schedule_time_seconds", "schedule")
    last = by_label(series, "beatplatform_schedule_last_schedule_time_seconds", "schedule")
    suspended = by_label(series, "beatplatform_schedule_suspended", "schedule")
    return {
        s
        for s in success.keys() & nxt.keys() & last.keys()
        if now - success[s] > (nxt[s] - last[s]) + SCHEDULE_MARGIN_SECONDS and suspended.get(s) == 0
    }


def beat_not_ticking(series: dict, now: float) -> bool:
    """BeatplatformBeatNotTicking: time() - beatplatform_beat_last_tick_timestamp_seconds > 60."""
    return any(
        now - value > BEAT_STALE_SECONDS
        for _, value in series["beatplatform_beat_last_tick_timestamp_seconds"]
    )


def queues_without_workers(series: dict) -> set[str]:
    """BeatplatformQueueWithoutWorkers:

    beatplatform_queue_length > 0 and on(queue) beatplatform_workers == 0
    """
    lengths = by_label(series, "beatplatform_queue_length", "queue")
    workers = by_label(series, "beatplatform_workers", "queue")
    return {q for q, n in lengths.items() if n > 0 and workers.get(q) == 0}


def test_rule_schedule_not_succeeding_fires_for_a_schedule_failing_since_its_slot(client, metrics_on):
    now = timezone.now()
    healthy = hourly("healthy", timedelta(minutes=20))
    add_run(healthy, timedelta(minutes=80), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=79))
    add_run(healthy, timedelta(minutes=20), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=19))
    failing = hourly("failing", timedelta(minutes=20))
    add_run(failing, timedelta(minutes=80), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=79))
    add_run(failing, timedelta(minutes=20), RunStatus.FAILED, finished_at=now - timedelta(minutes=19))
    paused = hourly("failing but paused", timedelta(minutes=20))
    add_run(paused, timedelta(minutes=80), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=79))
    SchedulePolicy.objects.filter(task=paused).update(paused_at=now, pause_note="known")
    # Failed at its slot 2 minutes ago: within the margin, not yet an alert.
    recent = hourly("failed within the margin", timedelta(minutes=2))
    add_run(recent, timedelta(minutes=62), RunStatus.SUCCEEDED, finished_at=now - timedelta(minutes=61))
    add_run(recent, timedelta(minutes=2), RunStatus.FAILED, finished_at=now - timedelta(minutes=1))

    fired = schedule_not_succeeding(scrape(client), timezone.now().timestamp())

    assert fired == {slug(failing)}


def test_rule_beat_not_ticking(client, metrics_on):
    now = timezone.now()
    BeatLease.objects.create(
        name="beat", holder="b:1", token=1, expires_at=now + timedelta(seconds=10), renewed_at=now
    )
    assert not beat_not_ticking(scrape(client), timezone.now().timestamp())
    BeatLease.objects.filter(name="beat").update(renewed_at=now - timedelta(minutes=2))
    assert beat_not_ticking(scrape(client), timezone.now().timestamp())


def test_rule_queue_without_workers(client, two_queues):
    assert queues_without_workers(scrape(client)) == {QUEUE_A}


def schedule_never_succeeded(series: dict, now: float) -> set[str]:
    """BeatplatformScheduleNeverSucceeded:

    (time() - beatplatform_schedule_last_schedule_time_seconds > 3600)
      unless on(schedule) beatplatform_schedule_last_successful_time_seconds
      unless on(schedule) beatplatform_schedule_suspended == 1
    """
    last = by_label(series, "beatplatform_schedule_last_schedule_time_seconds", "schedule")
    success = by_label(series, "beatplatform_schedule_last_successful_time_seconds", "schedule")
    suspended = by_label(series, "beatplatform_schedule_suspended", "schedule")
    return {s for s, t in last.items() if now - t > 3600 and s not in success and suspended.get(s) != 1}


def test_rule_schedule_never_succeeded(client, metrics_on):
    broken = hourly("never worked", timedelta(minutes=61))
    add_run(broken, timedelta(minutes=61), RunStatus.FAILED, finished_at=timezone.now())
    worked = hourly("worked once", timedelta(minutes=61))
    add_run(worked, timedelta(minutes=61), RunStatus.SUCCEEDED, finished_at=timezone.now())
    hourly("claimed recently", timedelta(minutes=10))

    assert schedule_never_succeeded(scrape(client), timezone.now().timestamp()) == {slug(broken)}


def test_the_per_schedule_block_is_cached_briefly_and_the_rest_read_every_scrape(client, metrics_on):
    hourly("first", timedelta(minutes=5))
    assert len(scrape(client)["beatplatform_schedule_info"]) == 1
    hourly("second", timedelta(minutes=5))
    add_run(None, timedelta(minutes=1), RunStatus.FAILED)

    series = scrape(client)

    assert len(series["beatplatform_schedule_info"]) == 1  # within SCHEDULE_CACHE_SECONDS
    assert ("heartbeat", "failed") in {(x["job"], x["status"]) for x, _ in series["beatplatform_runs_total"]}
    forget_cached_schedules()
    assert len(scrape(client)["beatplatform_schedule_info"]) == 2


@pytest.mark.django_db(transaction=True)  # the background render reads on its own connection
def test_a_stale_per_schedule_block_is_served_at_once_and_rendered_again_in_the_background(
    client, metrics_on, monkeypatch
):
    hourly("first", timedelta(minutes=5))
    assert len(scrape(client)["beatplatform_schedule_info"]) == 1  # the process's first scrape renders
    monkeypatch.setattr(metrics, "SCHEDULE_CACHE_SECONDS", 0.0)  # from now on the kept block is stale
    hourly("second", timedelta(minutes=5))

    served_stale = scrape(client)
    assert wait_for_schedule_refresh(timeout=30)
    served_fresh = scrape(client)
    assert wait_for_schedule_refresh(timeout=30)

    assert len(served_stale["beatplatform_schedule_info"]) == 1  # did not wait for the new render
    assert len(served_fresh["beatplatform_schedule_info"]) == 2
