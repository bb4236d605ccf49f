"""Who changed a schedule, when, and what: the audit (django-auditlog) through the real admin.

Edits go through the admin with Django's test client (auditlog's middleware
sets the actor), bulk edits through the changelist's actions, beat's
bookkeeping through the real in-process beat engine on the real database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from scheduler import services
from scheduler.admin_audit import HISTORY_LIMIT
from scheduler.audit import record_bulk_edit
from scheduler.models import ScheduleChange, SchedulePolicy

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/django_celery_beat/periodictask/"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def page_url(task: PeriodicTask) -> str:
    return f"{CHANGELIST}{task.pk}/change/"


class FormValues(HTMLParser):
    """The values a browser would submit from the page's main form (inputs, selects, textareas)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[str]] = {}
        self._select: str | None = None
        self._select_first: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None
        self._in_form = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id", "").endswith("_form"):
            self._in_form = True
        if not self._in_form or "name" not in a and tag != "option":
            return
        if tag == "input":
            kind = a.get("type", "text")
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.values.setdefault(a["name"], []).append(a.get("value", "on" if kind == "checkbox" else ""))
        elif tag == "select":
            self._select, self._select_first, self._select_chosen = a["name"], None, False
        elif tag == "option" and self._select:
            if self._select_first is None:
                self._select_first = a.get("value", "")
            if "selected" in a:
                self.values.setdefault(self._select, []).append(a.get("value", ""))
                self._select_chosen = True
        elif tag == "textarea":
            self._textarea = a["name"]
            self.values[a["name"]] = [""]

    def handle_endtag(self, tag):
        if tag == "select" and self._select:
            self._select = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self._in_form = False

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea][-1] += data


def page_form(client, task: PeriodicTask) -> dict[str, list[str]]:
    response = client.get(page_url(task))
    assert response.status_code == 200
    parser = FormValues()
    parser.feed(response.content.decode())
    return parser.values


def save_page(client, task: PeriodicTask, **changes: str):
    """Open the schedule's page, change some fields as a person would, press Save."""
    data = page_form(client, task)
    for name, value in changes.items():
        data[name] = [value]
    response = client.post(page_url(task), {**data, "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:3000]
    return response


def cron_fields(data: dict[str, list[str]], expression: str, zone: str) -> dict[str, str]:
    """The page's fields that set this cron: the typed expression and zone, or the crontab row's key."""
    if "cron" in data:  # the schedule page's one schedule field
        return {"schedule_kind": "cron", "cron": expression, "timezone": zone}
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    row, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        timezone=zone,
    )
    return {"crontab": str(row.pk)}


def entries_of(task: PeriodicTask):
    types = ContentType.objects.get_for_models(PeriodicTask, SchedulePolicy).values()
    return LogEntry.objects.filter(object_id=task.pk, content_type__in=list(types)).order_by("pk")


@pytest.fixture
def client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def weekday_berlin():
    publish_catalog(worker="tests")
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="9", day_of_week="1-5", timezone="Europe/Berlin"
    )
    return PeriodicTask.objects.create(name="report", task="heartbeat", crontab=crontab)


def test_an_admin_edit_records_who_when_and_the_cron_before_and_after(client, alice, weekday_berlin):
    task = weekday_berlin
    changes_before = ScheduleChange.objects.filter(task_id=task.pk).count()
    LogEntry.objects.all().delete()  # the creation's entries (no actor: made in code)
    started = timezone.now()

    six_utc = cron_fields(page_form(client, task), "30 6 * * *", "UTC")
    save_page(client, task, **six_utc, **{"policy-0-jitter": "7"})

    task_entry, policy_entry = (
        entries_of(task).get(content_type=ContentType.objects.get_for_model(model))
        for model in (PeriodicTask, SchedulePolicy)
    )
    for entry in (task_entry, policy_entry):
        assert entry.actor == alice
        assert entry.action == LogEntry.Action.UPDATE
        assert started <= entry.timestamp <= timezone.now()
    assert task_entry.changes == {"crontab": ["0 9 * * 1-5 Europe/Berlin", "30 6 * * * UTC"]}
    assert policy_entry.changes == {"jitter": ["0", "7"]}
    # Beside the change log, not instead of it: beat still hears of the edit.
    assert ScheduleChange.objects.filter(task_id=task.pk).count() > changes_before

    page = client.get(page_url(task)).content.decode()
    assert "Change history" in page
    assert "alice" in page
    assert f"{task_entry.timestamp.astimezone(UTC):%Y-%m-%d %H:%M:%S}</time>" in page
    assert (
        '<span class="audit-before">0 9 * * 1-5 Europe/Berlin (At 09:00, Monday through Friday)</span> → '
        '<span class="audit-after">30 6 * * * UTC (At 06:30)</span>'
    ) in page
    assert '<span class="audit-before">0</span> → <span class="audit-after">7</span>' in page


def test_an_unchanged_save_records_nothing(client, weekday_berlin):
    LogEntry.objects.all().delete()
    save_page(client, weekday_berlin)
    assert not entries_of(weekday_berlin).exists()


@pytest.mark.parametrize(
    ("action", "was", "now"), [("disable_tasks", True, False), ("enable_tasks", False, True)]
)
def test_a_bulk_enable_or_disable_records_an_entry_per_schedule_with_the_actor(
    client, alice, action, was, now
):
    publish_catalog(worker="tests")
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    tasks = [
        PeriodicTask.objects.create(name=f"s{i}", task="heartbeat", interval=every_minute, enabled=was)
        for i in range(3)
    ]
    LogEntry.objects.all().delete()

    response = client.post(
        CHANGELIST, {"action": action, "_selected_action": [t.pk for t in tasks], "index": 0}, follow=True
    )

    assert response.status_code == 200
    for task in tasks:
        (entry,) = entries_of(task)
        assert (entry.actor, entry.action, entry.object_repr) == (alice, LogEntry.Action.UPDATE, task.name)
        assert entry.changes == {"enabled": [str(was), str(now)]}
    page = client.get(page_url(tasks[0])).content.decode()
    assert (
        '<strong>Enabled</strong>: <span class="audit-before">{}</span>'.format("yes" if was else "no")
        in page
    )


def test_a_bulk_edit_of_the_schedule_row_reads_as_what_it_means(alice):
    publish_catalog(worker="tests")
    five_minutes = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    once = ClockedSchedule.objects.create(clocked_time=datetime(2030, 1, 2, 3, 4, tzinfo=UTC))
    task = PeriodicTask.objects.create(name="t", task="heartbeat", interval=five_minutes)
    LogEntry.objects.all().delete()

    with set_actor(alice):
        services.update_schedules(
            PeriodicTask.objects.filter(pk=task.pk), interval=None, clocked=once, one_off=True
        )

    (entry,) = entries_of(task)
    assert entry.actor == alice
    assert entry.changes == {
        "interval": ["Every 5 minutes", "None"],
        "clocked": ["None", "once at 2030-01-02 03:04:00 UTC"],
        "one_off": ["False", "True"],
    }


def test_a_bulk_edit_outside_a_request_has_no_actor_and_unchanged_schedules_get_no_entry():
    publish_catalog(worker="tests")
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    on = PeriodicTask.objects.create(name="on", task="heartbeat", interval=every_minute)
    off = PeriodicTask.objects.create(name="off", task="heartbeat", interval=every_minute, enabled=False)
    LogEntry.objects.all().delete()

    services.disable_schedules(PeriodicTask.objects.filter(pk__in=[on.pk, off.pk]))

    (entry,) = LogEntry.objects.all()
    assert (entry.object_id, entry.actor, entry.changes) == (on.pk, None, {"enabled": ["True", "False"]})


@pytest.mark.django_db(transaction=True)
def test_beats_bookkeeping_writes_record_nothing(beat_engine, redis_client):
    every_10_seconds = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    good = PeriodicTask.objects.create(name="good", task="heartbeat", interval=every_10_seconds)
    broken = PeriodicTask.objects.create(name="broken", task="heartbeat", interval=every_10_seconds)
    SchedulePolicy.objects.update(anchor=T0, created_at=T0)
    with connection.cursor() as cursor:  # a row beat must quarantine (it writes the policy's problem)
        cursor.execute(
            "UPDATE django_celery_beat_periodictask SET task = 'gone.job' WHERE id = %s", [broken.pk]
        )
    entries = LogEntry.objects.count()

    beat_engine.load(now=T0)
    for seconds in (10, 20, 30):
        beat_engine.tick(now=T0 + timedelta(seconds=seconds))
    # What django-celery-beat's own scheduler does after a dispatch: save() its counters.
    good.refresh_from_db()
    good.last_run_at, good.total_run_count = T0 + timedelta(seconds=30), 3
    good.save()

    assert SchedulePolicy.objects.get(task=good).last_slot_at == T0 + timedelta(seconds=30)
    assert SchedulePolicy.objects.get(task=broken).problem.startswith("not scheduled:")
    assert LogEntry.objects.count() == entries


def edit_jitter(task: PeriodicTask, times: int, actor) -> None:
    policy = SchedulePolicy.objects.get(task=task)
    with set_actor(actor):
        for jitter in range(1, times + 1):
            policy.jitter = jitter
            policy.save()


def history_page_queries(client, task: PeriodicTask) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(page_url(task))
    assert response.status_code == 200
    return len(queries), response.content.decode()


def test_the_history_is_newest_first_bounded_and_its_query_count_does_not_grow(client, alice, weekday_berlin):
    few, many = (
        weekday_berlin,
        PeriodicTask.objects.create(name="busy", task="heartbeat", crontab=weekday_berlin.crontab),
    )
    edit_jitter(few, 3, alice)
    edit_jitter(many, HISTORY_LIMIT + 10, alice)
    history_page_queries(client, few)  # warm the caches (content types, sessions) for both counts

    queries_few, page_few = history_page_queries(client, few)
    queries_many, page_many = history_page_queries(client, many)

    assert queries_many == queries_few
    assert page_many.count('class="audit-entry"') == HISTORY_LIMIT
    # Newest first: the last edit (jitter 59 → 60) heads the table.
    last = HISTORY_LIMIT + 10
    first_change = page_many.index('class="audit-change"')
    assert page_many.index(f'<span class="audit-after">{last}</span>', first_change) == page_many.index(
        '<span class="audit-after">', first_change
    )
    assert f"Showing the last {HISTORY_LIMIT} changes." in page_many
    assert "Showing the last" not in page_few
    # The full log: auditlog's own admin, filtered to this schedule's task and policy.
    link = page_many.split("All changes of this schedule")[0].rsplit('href="', 1)[1].split('"')[0]
    full = client.get(link.replace("&amp;", "&"))
    assert full.status_code == 200
    assert full.context["cl"].result_count == entries_of(many).count() > HISTORY_LIMIT


def test_a_pause_and_a_resume_from_the_page_record_alice_and_the_note(client, alice, weekday_berlin):
    task = weekday_berlin
    LogEntry.objects.all().delete()

    paused = client.post(
        f"{page_url(task)[: -len('change/')]}pause/", {"note": "deploy freeze", "apply": "1"}
    )
    resumed = client.post(f"{page_url(task)[: -len('change/')]}resume/")

    assert (paused.status_code, resumed.status_code) == (302, 302)
    pause, resume = entries_of(task)
    assert (pause.actor, resume.actor) == (alice, alice)
    assert pause.content_type.model_class() is SchedulePolicy
    assert pause.changes["pause_note"] == ["", "deploy freeze"]
    assert pause.changes["paused_by"] == ["", "alice"]
    assert pause.changes["paused_at"][0] == "None"
    assert resume.changes["pause_note"] == ["deploy freeze", ""]
    html = client.get(page_url(task)).content.decode()
    assert '<span class="audit-before">—</span> → <span class="audit-after">deploy freeze</span>' in html


def test_a_bulk_edits_audit_costs_the_same_queries_for_10_or_1000_schedules(alice):
    publish_catalog(worker="tests")
    crontabs = [
        CrontabSchedule.objects.create(minute=str(m), hour="3", timezone="UTC") for m in range(3)
    ]  # several old rows: their words are read in one query, not one per schedule
    new_row = CrontabSchedule.objects.create(minute="15", hour="4", timezone="Europe/Berlin")
    PeriodicTask.objects.bulk_create(
        [PeriodicTask(name=f"bulk-{i}", task="heartbeat", crontab=crontabs[i % 3]) for i in range(1010)]
    )

    def audit_queries(names) -> int:
        tasks = PeriodicTask.objects.filter(name__in=names)
        before = {pk: {"crontab": crontab} for pk, crontab in tasks.values_list("pk", "crontab")}
        with set_actor(alice), CaptureQueriesContext(connection) as queries:
            record_bulk_edit(before, {"crontab": new_row})
        return len(queries)

    ContentType.objects.get_for_models(PeriodicTask, SchedulePolicy)  # cached for the process, as in a server
    few = audit_queries([f"bulk-{i}" for i in range(10)])
    many = audit_queries([f"bulk-{i}" for i in range(10, 1010)])

    assert few == many
    assert LogEntry.objects.filter(action=LogEntry.Action.UPDATE).count() == 1010
    entry = LogEntry.objects.filter(object_repr="bulk-11").get()
    assert (entry.actor, entry.changes) == (alice, {"crontab": ["2 3 * * * UTC", "15 4 * * * Europe/Berlin"]})


def test_a_crontab_row_edited_on_its_own_page_records_an_entry_for_each_schedule_using_it(
    client, alice, weekday_berlin
):
    shared = weekday_berlin.crontab
    other = PeriodicTask.objects.create(name="also weekdays", task="heartbeat", crontab=shared)
    LogEntry.objects.all().delete()
    url = f"/admin/django_celery_beat/crontabschedule/{shared.pk}/change/"
    parser = FormValues()
    parser.feed(client.get(url).content.decode())

    response = client.post(url, {**parser.values, "hour": "10", "_save": "Save"})

    assert response.status_code == 302, response.content.decode()[:3000]
    for task in (weekday_berlin, other):
        (entry,) = entries_of(task)
        assert entry.actor == alice
        assert entry.changes == {"crontab": ["0 9 * * 1-5 Europe/Berlin", "0 10 * * 1-5 Europe/Berlin"]}
    assert "At 10:00, Monday through Friday" in client.get(page_url(other)).content.decode()
