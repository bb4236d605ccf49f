"""The periodic-task list's bulk actions, through the admin, against a real beat engine and broker.

Each action is posted to the changelist with Django's test client, as the
admin's action form does; the beat engine runs in-process with ``now=``
controlled, on the real test database and the real broker. Beat applies an
edit on its first tick after the edit commits (it reads the change log on
every tick here, every 0.25 s on SQLite and on each NOTIFY on PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.db import connection
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.dispatch import dispatch
from jobs.models import JobDefinition, JobRun, OutboxBatch, RunOrigin, RunStatus
from scheduler.models import ScheduleChange, SchedulePolicy
from tests.support.broker import app_broker, closed_port_url
from tests.support.queues import empty_queues, waiting_messages

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CHANGELIST = "/admin/django_celery_beat/periodictask/"
# No test worker consumes this queue, so it holds exactly what was published.
QUEUE = "admin-action-tests"


@pytest.fixture
def engine(beat_engine):
    empty_queues([QUEUE])
    return beat_engine


@pytest.fixture
def admin_user(alice):
    return alice


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


def published(queue: str = QUEUE) -> list[dict]:
    """The headers of the messages waiting in ``queue`` (Redis or RabbitMQ), none taken."""
    return waiting_messages(queue)


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


def test_it_runs_a_schedule_now_with_its_policy_recorded_as_manual_by_whoever_pressed(client, engine):
    task = every_10_seconds("report now", soft_time_limit=2, hard_time_limit=3, starting_deadline=90)

    _, messages = post_action(client, "run_tasks", task)

    run = JobRun.objects.get(schedule=task)
    assert (run.origin, run.requested_by, run.schedule_name) == (RunOrigin.MANUAL, "alice", "report now")
    assert (run.queue, run.soft_time_limit, run.hard_time_limit) == (QUEUE, 2, 3)
    assert run.deadline - run.enqueued_at == timedelta(seconds=90)
    assert run.status == RunStatus.QUEUED
    [headers] = published()
    assert (headers["id"], headers["task"], headers["timelimit"]) == (str(run.pk), "heartbeat", [3, 2])
    assert not OutboxBatch.objects.exists()
    assert messages[0].startswith("Started 1 run by hand: ")
    assert f"/admin/jobs/jobrun/{run.pk}/change/" in messages[0]
    assert "on queue admin-action-tests" in messages[0]
    page = client.get(f"/admin/jobs/jobrun/{run.pk}/change/").content.decode()
    assert '<div class="readonly">manual: run now in the admin</div>' in page
    assert '<div class="readonly">alice</div>' in page


def test_a_schedule_without_a_policy_queue_runs_on_its_jobs_queue_with_its_limits(client, engine):
    task = every_10_seconds("heartbeat now", queue="")
    # As if the workers had published heartbeat on a queue no test worker consumes,
    # so the message stays where run-now put it.
    JobDefinition.objects.filter(name="heartbeat").update(queue="admin-action-tests-heartbeat")
    empty_queues(["admin-action-tests-heartbeat"])

    post_action(client, "run_tasks", task)

    run = JobRun.objects.get(schedule=task)
    job = JobDefinition.objects.get(name="heartbeat")
    assert (run.queue, run.soft_time_limit, run.hard_time_limit) == (
        job.queue,
        job.soft_time_limit,
        job.hard_time_limit,
    )
    assert [h["id"] for h in published(job.queue)] == [str(run.pk)]


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


def test_beat_sends_a_run_now_left_in_the_outbox_once_the_broker_is_back(client, engine):
    with app_broker(closed_port_url()):
        post_action(client, "run_tasks", every_10_seconds("report now"))
    assert OutboxBatch.objects.exists()

    assert engine.flush_outbox() == 1

    run = JobRun.objects.get(schedule__name="report now")
    assert [h["id"] for h in published()] == [str(run.pk)]
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


# --- pause, resume, duplicate, and the schedule page's buttons ----------------------------


def page_url(task: PeriodicTask, button: str = "change") -> str:
    return reverse(f"admin:django_celery_beat_periodictask_{button}", args=[task.pk])


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_periodictask", *codenames]))
    return user


def test_pause_asks_for_a_note_on_a_page_carrying_the_selected_ids(client, engine):
    a, b = every_10_seconds("a"), every_10_seconds("b")

    response = client.post(
        CHANGELIST, {"action": "pause_tasks", "_selected_action": [a.pk, b.pk], "index": 0}
    )

    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "admin/scheduler/pause_schedules.html"
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert (
        f'name="_selected_action" value="{a.pk}"' in html
        and f'name="_selected_action" value="{b.pk}"' in html
    )
    assert not SchedulePolicy.objects.filter(paused_at__isnull=False).exists()


@pytest.mark.parametrize(
    ("note", "until", "error"),
    [
        ("", "", "A pause needs a note"),
        ("deploy freeze", "2020-01-01T10:00", "is in the past"),
        ("deploy freeze", "tomorrow", "Enter a valid date/time."),
    ],
)
def test_an_invalid_pause_shows_the_page_again_with_the_error_and_pauses_nothing(
    client, engine, note, until, error
):
    task = every_10_seconds("a")
    changes = ScheduleChange.objects.count()

    response = client.post(
        CHANGELIST,
        {
            "action": "pause_tasks",
            "_selected_action": [task.pk],
            "note": note,
            "until": until,
            "apply": "Pause",
        },
    )

    assert response.status_code == 200
    assert error in response.content.decode()
    assert f'name="_selected_action" value="{task.pk}"' in response.content.decode()
    assert SchedulePolicy.objects.get(task=task).paused_at is None
    assert ScheduleChange.objects.count() == changes


def test_a_paused_schedule_is_skipped_with_the_note_then_resumed_from_the_list(client, engine):
    task = every_10_seconds("every 10 s")
    engine.load(now=T0)
    until = T0 + timedelta(days=1)

    with time_machine.travel(T0 + timedelta(seconds=5), tick=False):  # beat's clock, not the wall's
        response = client.post(
            CHANGELIST,
            {
                "action": "pause_tasks",
                "_selected_action": [task.pk],
                "note": "deploy freeze",
                "until": until.strftime("%Y-%m-%dT%H:%M"),
                "apply": "Pause",
            },
            follow=True,
        )
    engine.tick(now=T0 + timedelta(seconds=10))

    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert messages_of(response)[0].startswith("Paused 1 schedule: “every 10 s” until ")
    run = JobRun.objects.get(schedule=task)
    assert run.status == RunStatus.SKIPPED
    assert run.error_message == f"paused by alice until {until:%Y-%m-%d %H:%M:%S} UTC: deploy freeze"
    assert published() == []

    _, messages = post_action(client, "resume_tasks", task)
    engine.tick(now=T0 + timedelta(seconds=20))

    assert messages[0].startswith("Resumed 1 schedule: “every 10 s”")
    assert sorted(claimed(task)) == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    assert (
        JobRun.objects.get(schedule=task, scheduled_for=T0 + timedelta(seconds=20)).status == RunStatus.QUEUED
    )


def test_duplicate_makes_a_disabled_copy_and_links_to_it(client, engine):
    task = every_10_seconds("nightly", overlap="skip")
    PeriodicTask.objects.create(name="nightly (copy)", task="heartbeat", interval=task.interval)

    response, messages = post_action(client, "duplicate_tasks", task)

    copy = PeriodicTask.objects.get(name="nightly (copy 2)")
    assert not copy.enabled and (copy.task, copy.interval_id, copy.args) == (
        task.task,
        task.interval_id,
        task.args,
    )
    assert SchedulePolicy.objects.get(task=copy).overlap == "skip"
    assert ScheduleChange.objects.filter(task_id=copy.pk).exists()
    assert messages == [
        "Created a copy (disabled, so it does not fire twice): "
        f'<a href="{page_url(copy)}">“nightly (copy 2)”</a>. Enable it when ready.'
    ]


def test_the_schedule_page_offers_its_buttons_and_they_act(client, engine):
    task = every_10_seconds("every 10 s")

    page = client.get(page_url(task)).content.decode()
    for button in ("run", "pause", "duplicate"):
        assert f'action="{page_url(task, button)}"' in page
    assert page_url(task, "resume") not in page

    response = client.post(page_url(task, "run"), follow=True)
    assert response.redirect_chain == [(page_url(task), 302)]
    run = JobRun.objects.get(schedule=task)
    assert (run.origin, run.requested_by) == (RunOrigin.MANUAL, "alice")

    form = client.post(page_url(task, "pause"))  # the button: the pause page for this one schedule
    assert form.status_code == 200 and f'action="{page_url(task, "pause")}"' in form.content.decode()
    response = client.post(page_url(task, "pause"), {"note": "db migration", "until": "", "apply": "Pause"})
    assert response.status_code == 302
    assert SchedulePolicy.objects.get(task=task).pause_note == "db migration"
    page = client.get(page_url(task)).content.decode()
    assert page_url(task, "resume") in page
    assert 'title="Paused by alice: db migration. Its next slot runs;' in page

    client.post(page_url(task, "resume"))
    assert SchedulePolicy.objects.get(task=task).paused_at is None

    response = client.post(page_url(task, "duplicate"))
    copy = PeriodicTask.objects.get(name="every 10 s (copy)")
    assert response["Location"] == page_url(copy)


def test_buttons_answer_only_post(client, engine):
    task = every_10_seconds("a")
    for button in ("run", "pause", "resume", "duplicate"):
        assert client.get(page_url(task, button)).status_code == 405
    assert not JobRun.objects.exists()


def test_staff_without_the_permission_see_no_action_or_button_and_a_post_is_refused(
    client, engine, django_user_model
):
    task = every_10_seconds("a")
    client.force_login(staff(django_user_model, "bob", "change_periodictask"))

    page = client.get(page_url(task)).content.decode()
    listing = client.get(CHANGELIST).content.decode()
    for button in ("run", "pause", "resume"):
        assert page_url(task, button) not in page
        assert client.post(page_url(task, button), {"note": "x", "apply": "Pause"}).status_code == 403
    assert page_url(task, "duplicate") in page  # change permission: duplicate stays
    for action in ("run_tasks", "pause_tasks", "resume_tasks"):
        assert f'value="{action}"' not in listing
        client.post(CHANGELIST, {"action": action, "_selected_action": [task.pk], "index": 0})
    assert 'value="duplicate_tasks"' in listing
    assert not JobRun.objects.exists()
    assert SchedulePolicy.objects.get(task=task).paused_at is None

    client.force_login(staff(django_user_model, "carol"))  # view only
    assert client.post(page_url(task, "duplicate")).status_code == 403
    assert PeriodicTask.objects.count() == 1


def test_the_run_and_pause_permissions_each_allow_only_their_own_buttons(client, engine, django_user_model):
    task = every_10_seconds("a")
    client.force_login(staff(django_user_model, "runner", "run_schedule"))
    page = client.get(page_url(task)).content.decode()
    assert page_url(task, "run") in page and page_url(task, "pause") not in page
    assert page_url(task, "duplicate") not in page
    assert client.post(page_url(task, "run")).status_code == 302
    assert JobRun.objects.get(schedule=task).requested_by == "runner"

    client.force_login(staff(django_user_model, "pauser", "pause_schedule"))
    page = client.get(page_url(task)).content.decode()
    assert page_url(task, "pause") in page and page_url(task, "run") not in page
    assert client.post(page_url(task, "run")).status_code == 403
    client.post(page_url(task, "pause"), {"note": "freeze", "apply": "Pause"})
    assert SchedulePolicy.objects.get(task=task).paused_by == "pauser"


def test_pausing_all_schedules_across_pages_carries_the_flag_not_every_id(client, engine):
    tasks = [every_10_seconds(f"s{i}") for i in range(3)]
    every_10_seconds("other", enabled=False)
    filtered = f"{CHANGELIST}?enabled__exact=1"
    first = {"action": "pause_tasks", "_selected_action": [tasks[0].pk], "select_across": "1", "index": 0}

    page = client.post(filtered, first).content.decode()

    assert page.count('name="_selected_action"') == 1 and 'name="select_across" value="1"' in page
    assert "these 3 schedules" in page
    client.post(
        filtered,
        {
            "action": "pause_tasks",
            "_selected_action": [tasks[0].pk],
            "select_across": "1",
            "note": "n",
            "apply": "Pause",
        },
    )
    assert set(
        SchedulePolicy.objects.filter(paused_at__isnull=False).values_list("task__name", flat=True)
    ) == {
        "s0",
        "s1",
        "s2",
    }
