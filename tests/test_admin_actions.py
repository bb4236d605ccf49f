"""The periodic-task list's bulk actions, through the admin, against a real beat engine and Redis.

Each action is posted to the changelist with Django's test client, as the
admin's action form does; the beat engine runs in-process with ``now=``
controlled, on the real test database and the real broker. Beat applies an
edit on its first tick after the edit commits (it reads the change log on
every tick here, every 0.25 s on SQLite and on each NOTIFY on PostgreSQL).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.dispatch import dispatch
from jobs.models import JobDefinition, JobRun, OutboxBatch, RunOrigin, RunStatus
from scheduler.models import ScheduleChange, SchedulePolicy
from tests.support.broker import app_broker, closed_port_url

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CHANGELIST = "/admin/django_celery_beat/periodictask/"
# No test worker consumes this queue, so it holds exactly what was published.
QUEUE = "admin-action-tests"


@pytest.fixture
def engine(beat_engine, redis_client):
    redis_client.delete(QUEUE)
    return beat_engine


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "unused")


@pytest.fixture
def client(client, admin_user):
    client.force_login(admin_user)
    return client


def every_10_seconds(name: str, *, enabled: bool = True, **policy) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=10, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name=name, task="heartbeat", interval=interval, enabled=enabled)
    SchedulePolicy.objects.filter(task=task).update(anchor=T0, created_at=T0, **{"queue": QUEUE, **policy})
    return task


def post_action(client, action: str, *tasks: PeriodicTask):
    """Submit the changelist's action form; return the page it redirects to and its messages."""
    response = client.post(
        CHANGELIST, {"action": action, "_selected_action": [t.pk for t in tasks], "index": 0}, follow=True
    )
    assert response.redirect_chain == [(CHANGELIST, 302)], response.content[:2000]
    return response, [str(message) for message in response.context["messages"]]


def claimed(task: PeriodicTask) -> list[datetime]:
    return list(
        JobRun.objects.filter(schedule=task, origin=RunOrigin.BEAT).values_list("scheduled_for", flat=True)
    )


def published(redis_client, queue: str = QUEUE) -> list[dict]:
    return [json.loads(message)["headers"] for message in redis_client.lrange(queue, 0, -1)]


def break_job_with_raw_sql(task: PeriodicTask) -> None:
    """What a hand-written UPDATE does: no signal, no validation, no change-log row."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {PeriodicTask._meta.db_table} SET task = %s WHERE id = %s", ["reports.gone", task.pk]
        )


def test_it_stops_a_disabled_schedule_on_beats_next_tick(client, engine):
    task = every_10_seconds("every 10 s")
    engine.load(now=T0)
    engine.tick(now=T0 + timedelta(seconds=10))
    assert claimed(task) == [T0 + timedelta(seconds=10)]
    changes_before = ScheduleChange.objects.filter(task_id=task.pk).count()

    _, messages = post_action(client, "disable_tasks", task)
    engine.tick(now=T0 + timedelta(seconds=20))

    assert not PeriodicTask.objects.get(pk=task.pk).enabled
    assert claimed(task) == [T0 + timedelta(seconds=10)]  # the 20 s slot did not fire
    assert task.pk not in engine.entries
    assert ScheduleChange.objects.filter(task_id=task.pk).count() == changes_before + 1
    assert messages == ["Disabled 1 schedule: “every 10 s”; beat stops firing them within a second."]


def test_it_starts_an_enabled_schedule_on_beats_next_tick(client, engine):
    task = every_10_seconds("every 10 s", enabled=False)
    engine.load(now=T0)
    assert task.pk not in engine.entries

    _, messages = post_action(client, "enable_tasks", task)
    engine.tick(now=T0 + timedelta(seconds=5))
    engine.tick(now=T0 + timedelta(seconds=10))

    assert claimed(task) == [T0 + timedelta(seconds=10)]
    assert JobRun.objects.get(schedule=task).requested_by == ""
    assert messages == ["Enabled 1 schedule: “every 10 s”."]


def test_it_enables_the_valid_schedules_and_says_which_it_refused_and_why(client, engine):
    good = every_10_seconds("good", enabled=False)
    broken = every_10_seconds("broken", enabled=False)
    break_job_with_raw_sql(broken)
    engine.load(now=T0)
    changes_before = ScheduleChange.objects.filter(task_id=broken.pk).count()

    _, messages = post_action(client, "enable_tasks", good, broken)
    engine.tick(now=T0 + timedelta(seconds=5))
    engine.tick(now=T0 + timedelta(seconds=10))

    assert dict(PeriodicTask.objects.values_list("name", "enabled")) == {"good": True, "broken": False}
    assert claimed(good) == [T0 + timedelta(seconds=10)]
    assert not JobRun.objects.filter(schedule=broken).exists()
    assert ScheduleChange.objects.filter(task_id=broken.pk).count() == changes_before
    assert messages[0] == "Enabled 1 schedule: “good”."
    assert messages[1].startswith(
        "“broken” was not enabled, it does not pass validation: Unknown job 'reports.gone'"
    )
    assert messages[1].endswith("Fix it on its page, then enable it.")


def test_it_toggles_each_schedule_and_beat_follows_on_its_next_tick(client, engine):
    on = every_10_seconds("on")
    off = every_10_seconds("off", enabled=False)
    engine.load(now=T0)

    _, messages = post_action(client, "toggle_tasks", on, off)
    engine.tick(now=T0 + timedelta(seconds=5))
    engine.tick(now=T0 + timedelta(seconds=10))

    assert dict(PeriodicTask.objects.values_list("name", "enabled")) == {"on": False, "off": True}
    assert claimed(on) == []
    assert claimed(off) == [T0 + timedelta(seconds=10)]
    assert messages == [
        "Enabled 1 schedule: “off”.",
        "Disabled 1 schedule: “on”; beat stops firing them within a second.",
    ]


def test_toggle_leaves_a_schedule_that_does_not_validate_disabled(client, engine):
    broken = every_10_seconds("broken", enabled=False)
    break_job_with_raw_sql(broken)

    _, messages = post_action(client, "toggle_tasks", broken)

    assert not PeriodicTask.objects.get(pk=broken.pk).enabled
    assert len(messages) == 1 and messages[0].startswith("“broken” was not enabled")


def test_it_runs_a_schedule_now_with_its_policy_recorded_as_manual_by_whoever_pressed(
    client, engine, redis_client
):
    task = every_10_seconds("report now", soft_time_limit=2, hard_time_limit=3, starting_deadline=90)

    _, messages = post_action(client, "run_tasks", task)

    run = JobRun.objects.get(schedule=task)
    assert (run.origin, run.requested_by, run.schedule_name) == (RunOrigin.MANUAL, "alice", "report now")
    assert (run.queue, run.soft_time_limit, run.hard_time_limit) == (QUEUE, 2, 3)
    assert run.deadline - run.enqueued_at == timedelta(seconds=90)
    assert run.status == RunStatus.QUEUED
    [headers] = published(redis_client)
    assert (headers["id"], headers["task"], headers["timelimit"]) == (str(run.pk), "heartbeat", [3, 2])
    assert not OutboxBatch.objects.exists()
    assert messages[0].startswith("Started 1 run by hand: ")
    assert f"/admin/jobs/jobrun/{run.pk}/change/" in messages[0]
    assert "on queue admin-action-tests" in messages[0]
    page = client.get(f"/admin/jobs/jobrun/{run.pk}/change/").content.decode()
    assert '<div class="readonly">manual: run now in the admin</div>' in page
    assert '<div class="readonly">alice</div>' in page


def test_a_schedule_without_a_policy_queue_runs_on_its_jobs_queue_with_its_limits(
    client, engine, redis_client
):
    task = every_10_seconds("heartbeat now", queue="")
    # As if the workers had published heartbeat on a queue no test worker consumes,
    # so the message stays where run-now put it.
    JobDefinition.objects.filter(name="heartbeat").update(queue="admin-action-tests-heartbeat")
    redis_client.delete("admin-action-tests-heartbeat")

    post_action(client, "run_tasks", task)

    run = JobRun.objects.get(schedule=task)
    job = JobDefinition.objects.get(name="heartbeat")
    assert (run.queue, run.soft_time_limit, run.hard_time_limit) == (
        job.queue,
        job.soft_time_limit,
        job.hard_time_limit,
    )
    assert [h["id"] for h in published(redis_client, job.queue)] == [str(run.pk)]


def test_running_many_schedules_names_the_first_ten_in_the_message(client, engine):
    tasks = [every_10_seconds(f"s{i:02}") for i in range(12)]

    _, messages = post_action(client, "run_tasks", *tasks)

    assert JobRun.objects.filter(origin=RunOrigin.MANUAL).count() == 12
    assert messages[0].startswith("Started 12 runs by hand: ")
    assert messages[0].count("<a href=") == 10
    assert messages[0].endswith(" and 2 more.")


def test_a_run_now_at_the_instant_of_a_slot_leaves_the_slot_to_beat(client, engine):
    task = every_10_seconds("every 10 s")
    engine.load(now=T0)
    slot = T0 + timedelta(seconds=10)

    with time_machine.travel(slot, tick=False):
        post_action(client, "run_tasks", task)
    engine.tick(now=slot)

    assert claimed(task) == [slot]
    assert JobRun.objects.get(schedule=task, origin=RunOrigin.MANUAL).scheduled_for > slot
    assert SchedulePolicy.objects.get(task=task).last_slot_at == slot  # the run by hand took no slot


def test_run_now_refuses_a_schedule_that_does_not_validate_and_runs_the_others(client, engine):
    good = every_10_seconds("good")
    broken = every_10_seconds("broken")
    break_job_with_raw_sql(broken)

    _, messages = post_action(client, "run_tasks", good, broken)

    assert JobRun.objects.filter(schedule=good, origin=RunOrigin.MANUAL).count() == 1
    assert not JobRun.objects.filter(schedule=broken).exists()
    assert messages[0].startswith("Started 1 run by hand")
    assert messages[1].startswith("“broken” was not run: ")
    assert "'reports.gone'" in messages[1]


def test_with_the_broker_down_run_now_keeps_the_run_in_the_outbox_and_says_so(client, engine):
    task = every_10_seconds("report now")

    with app_broker(closed_port_url()):
        _, messages = post_action(client, "run_tasks", task)

    run = JobRun.objects.get(schedule=task)
    assert run.status == RunStatus.QUEUED
    assert [batch.run_ids for batch in OutboxBatch.objects.all()] == [[str(run.pk)]]
    assert len(messages) == 1
    assert messages[0].startswith("The broker did not answer (")
    assert "1 run is recorded and kept in the outbox: " in messages[0]
    assert messages[0].endswith(
        "Beat sends it as soon as the broker is back; do not run it again, or it runs twice."
    )


def test_beat_sends_a_run_now_left_in_the_outbox_once_the_broker_is_back(client, engine, redis_client):
    with app_broker(closed_port_url()):
        post_action(client, "run_tasks", every_10_seconds("report now"))
    assert OutboxBatch.objects.exists()

    assert engine.flush_outbox() == 1

    run = JobRun.objects.get(schedule__name="report now")
    assert [h["id"] for h in published(redis_client)] == [str(run.pk)]
    assert not OutboxBatch.objects.exists()


def test_dispatch_by_another_service_is_recorded_as_client(engine):
    run = dispatch("heartbeat", queue=QUEUE)

    run.refresh_from_db()
    assert (run.origin, run.requested_by, run.schedule_id) == (RunOrigin.CLIENT, "", None)


def test_a_user_who_may_only_view_schedules_cannot_run_or_disable_them(client, engine, django_user_model):
    task = every_10_seconds("every 10 s")
    viewer = django_user_model.objects.create_user("bob", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client.force_login(viewer)

    for action in ("disable_tasks", "run_tasks"):
        client.post(CHANGELIST, {"action": action, "_selected_action": [task.pk], "index": 0})

    assert PeriodicTask.objects.get(pk=task.pk).enabled
    assert not JobRun.objects.exists()
