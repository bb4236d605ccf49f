"""Who may do what on the schedule pages: the real admin, the test client, staff with real permissions.

The matrix (issue 10, "Permissions and audit"):

| permission on schedules            | list, page | Save | enable/disable/duplicate | run now | pause/resume |
|------------------------------------|-----------:|-----:|-------------------------:|--------:|-------------:|
| view                               |  read-only |   no |                       no |      no |           no |
| view + change                      |        yes |  yes |                      yes |      no |           no |
| + ``scheduler.run_schedule``       |        yes |  yes |                      yes |     yes |           no |
| + ``scheduler.pause_schedule``     |        yes |  yes |                      yes |      no |          yes |

"No" means three things: not offered (no action in the dropdown, no button
on the page), and refused when posted anyway (a direct POST of the action
does nothing; a POST to a button's or the form's URL answers 403).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from jobs.models import JobRun, RunOrigin
from scheduler.models import SchedulePolicy
from tests.support.queues import empty_queues

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/django_celery_beat/periodictask/"
ADD = f"{CHANGELIST}add/"
QUEUE = "permission-tests"  # no test worker consumes it

# The schedule list's actions (scheduler/admin_actions.py), by name and by the label the dropdown shows.
RUN = ("run_tasks", "Run selected tasks")
EDITS = [
    ("enable_tasks", "Enable selected tasks"),
    ("disable_tasks", "Disable selected tasks"),
    ("toggle_tasks", "Toggle activity of selected tasks"),
    ("duplicate_tasks", "Duplicate selected schedule"),
]
PAUSES = [("pause_tasks", "Pause selected schedules"), ("resume_tasks", "Resume selected schedules")]
# The schedule page's buttons (their CSS class names the button).
BUTTONS = (
    "schedule-action-run",
    "schedule-action-pause",
    "schedule-action-resume",
    "schedule-action-duplicate",
)

VIEW = ["django_celery_beat.view_periodictask", "scheduler.view_schedulepolicy"]
CHANGE = [*VIEW, "django_celery_beat.change_periodictask", "scheduler.change_schedulepolicy"]


def permissions(*names: str) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


@pytest.fixture
def staff(django_user_model, client):
    """``staff(*permissions)``: the test client logged in as a staff user (not superuser) with just those."""

    def login(*names: str):
        user = django_user_model.objects.create_user(
            f"staff{django_user_model.objects.count()}", is_staff=True
        )
        user.user_permissions.set(permissions(*names))
        client.force_login(user)
        return user

    return login


@pytest.fixture
def schedule() -> PeriodicTask:
    empty_queues([QUEUE])
    publish_catalog(worker="tests")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    task = PeriodicTask.objects.create(name="nightly", task="heartbeat", interval=every_minute)
    SchedulePolicy.objects.filter(task=task).update(queue=QUEUE)
    yield task
    empty_queues([QUEUE])


def page(task: PeriodicTask) -> str:
    return f"{CHANGELIST}{task.pk}/change/"


def button_url(task: PeriodicTask, name: str) -> str:
    return f"{CHANGELIST}{task.pk}/{name}/"


def offered_actions(response) -> set[str]:
    """The action names in the list's dropdown (none at all when it is not rendered)."""
    form = response.context.get("action_form")
    if form is None:
        return set()
    return {name for name, _ in form.fields["action"].choices if name}


def post_action(client, action: str, *tasks: PeriodicTask, **extra):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [t.pk for t in tasks], "index": 0, **extra},
        follow=True,
    )


def manual_runs(task: PeriodicTask):
    return JobRun.objects.filter(schedule=task, origin=RunOrigin.MANUAL)


# --- view only -------------------------------------------------------------------------------------


def test_view_only_staff_see_the_list_without_actions_or_add(client, staff, schedule):
    staff(*VIEW)
    response = client.get(CHANGELIST)

    assert response.status_code == 200
    assert schedule.name in response.content.decode()
    assert offered_actions(response) == set()
    html = response.content.decode()
    assert 'name="action"' not in html
    assert ADD not in html  # no "Add periodic task" link


def test_view_only_staff_see_the_schedule_page_read_only_without_buttons(client, staff, schedule):
    staff(*VIEW)
    response = client.get(page(schedule))

    assert response.status_code == 200
    html = response.content.decode()
    for submit in ('name="_save"', 'name="_continue"', 'name="_addanother"'):
        assert submit not in html
    assert 'name="name"' not in html  # fields are shown as text, not inputs
    assert schedule.name in html
    assert not response.context.get("schedule_actions")
    for button in BUTTONS:
        assert button not in html
    # The change history is for reading too; auditlog's own list needs its permission, so no link.
    assert "Change history" in html
    assert "/admin/auditlog/logentry/" not in html


def test_view_only_staff_are_refused_every_write(client, staff, schedule):
    staff(*VIEW)

    assert client.post(page(schedule), {"name": "renamed", "_save": "Save"}).status_code == 403
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {"name": "new", "_save": "Save"}).status_code == 403
    for name in ("run", "pause", "resume", "duplicate"):
        assert client.post(button_url(schedule, name), {"note": "x", "apply": "1"}).status_code == 403, name
    for action, _ in [RUN, *EDITS, *PAUSES]:
        post_action(client, action, schedule, note="x", apply="1")

    schedule.refresh_from_db()
    assert (schedule.name, schedule.enabled) == ("nightly", True)
    assert PeriodicTask.objects.count() == 1  # nothing added, nothing duplicated
    assert not manual_runs(schedule).exists()
    assert SchedulePolicy.objects.get(task=schedule).paused_at is None


# --- change, without run or pause --------------------------------------------------------------------


def test_editors_get_the_edit_actions_but_not_run_or_pause(client, staff, schedule):
    staff(*CHANGE)
    response = client.get(CHANGELIST)

    offered = offered_actions(response)
    assert {name for name, _ in EDITS} <= offered
    assert RUN[0] not in offered
    assert not offered & {name for name, _ in PAUSES}
    html = response.content.decode()
    assert RUN[1] not in html
    assert "Disable selected tasks" in html


def test_editors_see_save_and_duplicate_on_the_page_but_no_run_or_pause_button(client, staff, schedule):
    staff(*CHANGE)
    html = client.get(page(schedule)).content.decode()

    assert 'name="_save"' in html
    assert "schedule-action-duplicate" in html
    assert "schedule-action-run" not in html
    assert "schedule-action-pause" not in html


def test_an_editors_direct_post_of_run_or_pause_does_nothing(client, staff, schedule):
    staff(*CHANGE)

    post_action(client, RUN[0], schedule)
    post_action(client, "pause_tasks", schedule, note="maintenance", apply="1")
    assert client.post(button_url(schedule, "run")).status_code == 403
    assert client.post(button_url(schedule, "pause"), {"note": "x", "apply": "1"}).status_code == 403

    assert not manual_runs(schedule).exists()
    assert SchedulePolicy.objects.get(task=schedule).paused_at is None


def test_editors_can_disable(client, staff, schedule):
    staff(*CHANGE)
    post_action(client, "disable_tasks", schedule)
    schedule.refresh_from_db()
    assert not schedule.enabled


# --- run --------------------------------------------------------------------------------------------


def test_with_the_run_permission_the_action_and_the_button_run_it(client, staff, schedule):
    user = staff(*CHANGE, "scheduler.run_schedule")
    response = client.get(CHANGELIST)
    assert RUN[0] in offered_actions(response)
    assert "schedule-action-run" in client.get(page(schedule)).content.decode()

    post_action(client, RUN[0], schedule)
    assert client.post(button_url(schedule, "run")).status_code == 302

    runs = list(manual_runs(schedule))
    assert len(runs) == 2
    assert {run.requested_by for run in runs} == {user.get_username()}


def test_the_run_permission_alone_runs_from_a_read_only_page(client, staff, schedule):
    """Running is not editing: an on-call engineer may run a schedule they may not change."""
    staff(*VIEW, "scheduler.run_schedule")
    response = client.get(CHANGELIST)
    assert offered_actions(response) == {RUN[0]}
    html = client.get(page(schedule)).content.decode()
    assert 'name="_save"' not in html
    assert "schedule-action-run" in html

    post_action(client, RUN[0], schedule)

    assert manual_runs(schedule).count() == 1


# --- pause ------------------------------------------------------------------------------------------


def test_with_the_pause_permission_the_page_offers_pause_and_it_pauses(client, staff, schedule):
    user = staff(*CHANGE, "scheduler.pause_schedule")
    offered = offered_actions(client.get(CHANGELIST))
    assert {name for name, _ in PAUSES} <= offered
    assert RUN[0] not in offered
    html = client.get(page(schedule)).content.decode()
    assert "schedule-action-pause" in html
    assert "schedule-action-run" not in html

    response = client.post(button_url(schedule, "pause"), {"note": "deploy freeze", "apply": "1"})

    assert response.status_code == 302
    policy = SchedulePolicy.objects.get(task=schedule)
    assert (policy.pause_note, policy.paused_by) == ("deploy freeze", user.get_username())
    assert policy.paused_at is not None
