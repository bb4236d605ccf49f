"""The schedule page's live preview (scheduler/preview.py) through the admin URL, with Django's test client.

The next runs are beat's own (a property test holds them to the entry beat
builds from the saved row), shown in the schedule's zone and in UTC with the
DST days explained; bad input is a field error or a 4xx, never a 500.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import RequestFactory, override_settings
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jobs.catalog import publish_catalog
from scheduler.beat.entries import EntryFactory, fetch_rows, job_defaults
from scheduler.beat.slots import _transitions
from scheduler.models import SchedulePolicy
from scheduler.preview import schedule_preview
from tests.test_cron_properties import cron_expressions

pytestmark = pytest.mark.django_db

URL = reverse("admin:django_celery_beat_periodictask_preview")
JOB = "reports.run_summary"
ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Australia/Sydney"]


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


class Answer:
    """The preview's answer for a chosen ``now`` (the view itself always asks at the real now)."""

    def __init__(self, status_code: int, body: dict) -> None:
        self.status_code, self.body = status_code, body

    def json(self) -> dict:
        return self.body


def preview(client, now: datetime | None = None, **fields: str):
    """GET the preview URL; with ``now``, the same view function at that moment.

    Moving the clock for a request would expire the admin session, so a
    chosen ``now`` calls ``schedule_preview`` with the admin's own form class.
    """
    params = {"task": JOB, "args": "[]", "kwargs": "{}", "enabled": "on", "schedule_kind": "cron", **fields}
    if now is None:
        return client.get(URL, params)
    request = RequestFactory().get(URL, params)
    request.user = get_user_model().objects.filter(is_superuser=True).first()
    form_class = admin.site._registry[PeriodicTask].get_form(request)
    return Answer(*schedule_preview(request.GET, now, form_class))


def runs(client, now: datetime, **fields: str) -> list[dict]:
    response = preview(client, now, **fields)
    assert response.status_code == 200
    body = response.json()
    assert body["errors"] == {}, body
    return body["runs"]


class TestDst:
    def test_berlin_spring_forward_moves_a_fixed_time_to_after_the_gap(self, admin_client):
        got = runs(admin_client, utc(2027, 3, 26, 12), cron="30 2 * * *", timezone="Europe/Berlin")

        assert [run["local_text"] for run in got[:3]] == [
            "Sat 2027-03-27 02:30 CET",
            "Sun 2027-03-28 03:00 CEST",
            "Mon 2027-03-29 02:30 CEST",
        ]
        assert [run["utc_text"] for run in got[:3]] == [
            "Sat 2027-03-27 01:30 UTC",
            "Sun 2027-03-28 01:00 UTC",
            "Mon 2027-03-29 00:30 UTC",
        ]
        assert got[1]["dst"] == (
            "DST: 02:30 does not exist on 2027-03-28 (clocks jump from 02:00 to 03:00): "
            "runs once at 03:00 CEST instead."
        )
        assert got[0]["dst"] is None and got[2]["dst"] is None

    def test_a_real_three_oclock_on_the_spring_day_is_not_called_moved(self, admin_client):
        got = runs(admin_client, utc(2027, 3, 27, 12), cron="0 3 * * *", timezone="Europe/Berlin")
        assert got[0]["local_text"] == "Sun 2027-03-28 03:00 CEST"
        assert got[0]["dst"] == "DST change day: clocks jump from 02:00 to 03:00."

    def test_berlin_autumn_repeated_hour_runs_once_at_the_first(self, admin_client):
        got = runs(admin_client, utc(2026, 10, 24, 12), cron="30 2 * * *", timezone="Europe/Berlin")

        assert got[0]["local_text"] == "Sun 2026-10-25 02:30 CEST"
        assert got[0]["utc_text"] == "Sun 2026-10-25 00:30 UTC"
        assert got[0]["dst"] == (
            "DST: 02:30 happens twice on 2026-10-25 (clocks go back from 03:00 to 02:00): "
            "runs once, at the first (CEST)."
        )
        assert got[1]["local_text"] == "Mon 2026-10-26 02:30 CET"

    def test_a_wildcard_cron_runs_in_both_repeated_hours_and_says_which(self, admin_client):
        got = runs(admin_client, utc(2026, 10, 24, 23, 59), cron="*/30 2 * * *", timezone="Europe/Berlin")

        first = "(CEST); clocks go back from 03:00 to 02:00 and it runs again."
        second = "(CET), after clocks go back from 03:00 to 02:00."
        assert [(run["local_text"], run["dst"]) for run in got[:4]] == [
            ("Sun 2026-10-25 02:00 CEST", f"DST: the first 02:00 on 2026-10-25 {first}"),
            ("Sun 2026-10-25 02:30 CEST", f"DST: the first 02:30 on 2026-10-25 {first}"),
            ("Sun 2026-10-25 02:00 CET", f"DST: the second 02:00 on 2026-10-25 {second}"),
            ("Sun 2026-10-25 02:30 CET", f"DST: the second 02:30 on 2026-10-25 {second}"),
        ]

    def test_sundays_in_march_include_the_spring_forward_day(self, admin_client):
        got = runs(admin_client, utc(2027, 3, 1), cron="30 2 * 3 0", timezone="Europe/Berlin")
        assert [run["local_text"] for run in got] == [
            "Sun 2027-03-07 02:30 CET",
            "Sun 2027-03-14 02:30 CET",
            "Sun 2027-03-21 02:30 CET",
            "Sun 2027-03-28 03:00 CEST",
            "Sun 2028-03-05 02:30 CET",
        ]
        assert [bool(run["dst"]) for run in got] == [False, False, False, True, False]

    def test_new_york_spring_and_autumn(self, admin_client):
        spring = runs(admin_client, utc(2027, 3, 13, 12), cron="30 2 * * *", timezone="America/New_York")
        assert spring[0]["local_text"] == "Sun 2027-03-14 03:00 EDT"
        assert spring[0]["utc_text"] == "Sun 2027-03-14 07:00 UTC"
        assert "02:30 does not exist on 2027-03-14" in spring[0]["dst"]

        autumn = runs(admin_client, utc(2026, 10, 31, 12), cron="30 1 * * *", timezone="America/New_York")
        assert autumn[0]["local_text"] == "Sun 2026-11-01 01:30 EDT"
        assert autumn[0]["utc_text"] == "Sun 2026-11-01 05:30 UTC"
        assert "runs once, at the first (EDT)" in autumn[0]["dst"]
        assert autumn[1]["local_text"] == "Mon 2026-11-02 01:30 EST"

    def test_an_interval_marks_the_day_only(self, admin_client):
        got = runs(
            admin_client,
            utc(2027, 3, 27, 23, 30),
            schedule_kind="interval",
            every="1",
            period="hours",
            anchor="2027-01-01T00:00:00",
            timezone="Europe/Berlin",
        )
        assert [run["utc_text"] for run in got[:3]] == [
            "Sun 2027-03-28 00:00 UTC",
            "Sun 2027-03-28 01:00 UTC",
            "Sun 2027-03-28 02:00 UTC",
        ]
        assert [run["local_text"] for run in got[:3]] == [
            "Sun 2027-03-28 01:00 CET",
            "Sun 2027-03-28 03:00 CEST",
            "Sun 2027-03-28 04:00 CEST",
        ]
        assert all(run["dst"] == "DST change day: clocks jump from 02:00 to 03:00." for run in got[:3])


class TestWords:
    def test_daily_macro_is_expanded(self, admin_client):
        body = preview(admin_client, utc(2026, 12, 1, 12), cron="@daily", timezone="UTC").json()
        assert (body["expression"], body["words"]) == ("0 0 * * *", "At 00:00")
        assert body["runs"][0]["utc_text"] == "Wed 2026-12-02 00:00 UTC"

    def test_names_of_days_and_months(self, admin_client):
        body = preview(admin_client, utc(2026, 12, 1, 12), cron="0 9 * jan mon-fri", timezone="UTC").json()
        assert body["words"] == "At 09:00, Monday through Friday, only in January"
        assert body["runs"][0]["local_text"] == "Fri 2027-01-01 09:00 UTC"

    def test_the_chosen_jobs_doc_queue_and_limits(self, admin_client):
        body = preview(admin_client, cron="@hourly").json()
        assert body["job"]["name"] == JOB
        assert {"doc", "queue", "soft_time_limit", "hard_time_limit"} <= set(body["job"])
        assert preview(admin_client, cron="@hourly", task="nope").json()["job"] is None

    def test_a_disabled_schedule_says_so_and_still_shows_its_runs(self, admin_client):
        params = {"task": JOB, "schedule_kind": "cron", "cron": "@hourly", "timezone": "UTC"}
        body = admin_client.get(URL, params).json()
        assert body["note"].startswith("Disabled") and len(body["runs"]) == 5

    def test_an_interval_from_a_saved_anchor(self, admin_client):
        every = IntervalSchedule.objects.create(every=15, period="minutes")
        task = PeriodicTask.objects.create(name="i", task=JOB, interval=every)
        SchedulePolicy.objects.filter(task=task).update(anchor=utc(2026, 1, 1, 0, 5))
        got = preview(
            admin_client,
            utc(2026, 6, 1, 10),
            id=str(task.pk),
            schedule_kind="interval",
            every="15",
            period="minutes",
        ).json()["runs"]
        assert [run["utc_text"] for run in got[:2]] == [
            "Mon 2026-06-01 10:05 UTC",
            "Mon 2026-06-01 10:20 UTC",
        ]


class TestBadInput:
    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            ({"cron": "61 * * * *"}, "cron", "is not a valid cron expression"),
            ({"cron": "0 9 * *"}, "cron", "it needs 5 fields"),
            ({"cron": "0 0 31 2 *"}, "cron", "can never fire"),
            ({"cron": "0 9 * * *", "timezone": "Europe/Nowhere"}, "timezone", "is not an IANA time zone"),
            (
                {"schedule_kind": "interval", "every": "0", "period": "minutes"},
                "every",
                "whole number above 0",
            ),
            ({"schedule_kind": "interval", "every": "abc"}, "every", "whole number"),
            (
                {"schedule_kind": "interval", "every": "2000000000", "period": "days"},
                "every",
                "longer than any",
            ),
            ({"schedule_kind": "one_off", "run_at": "not a date"}, "run_at", "valid date"),
            ({"schedule_kind": "one_off", "run_at": "2001-01-01T00:00"}, "run_at", "is in the past"),
            ({"schedule_kind": "bogus"}, "schedule_kind", "Select a valid choice"),
            ({"cron": "@hourly", "kwargs": "{nope"}, "kwargs", "JSON"),
            ({"cron": "@hourly", "task": "no.such.job"}, "task", "Unknown job"),
        ],
    )
    def test_field_errors_carry_the_save_messages(self, admin_client, fields, field, message):
        response = preview(admin_client, **fields)
        assert response.status_code == 200
        assert message in " ".join(response.json()["errors"][field]), response.json()

    @override_settings(SCHEDULE_MIN_INTERVAL_SECONDS=60)
    def test_an_interval_too_short(self, admin_client):
        body = preview(admin_client, schedule_kind="interval", every="30", period="seconds").json()
        assert "shorter than the shortest interval allowed" in body["errors"]["every"][0]
        assert body["runs"] == []

    @pytest.mark.parametrize("every", ["99999999", "9999999999999"])
    def test_an_interval_longer_than_a_century_is_an_error_on_every(self, admin_client, every):
        body = preview(admin_client, schedule_kind="interval", every=every, period="days").json()
        assert set(body["errors"]) == {"every"} and body["runs"] == []

    def test_the_schedule_still_previews_while_the_job_is_wrong(self, admin_client):
        body = preview(admin_client, utc(2026, 12, 1), cron="@daily", task="no.such.job", args="[1,").json()
        assert set(body["errors"]) == {"task"} and len(body["runs"]) == 5

    @pytest.mark.parametrize(("object_id", "status"), [("abc", 400), ("-1", 400), ("99999999", 404)])
    def test_a_bad_schedule_id_is_a_4xx_with_json(self, admin_client, object_id, status):
        response = preview(admin_client, id=object_id, cron="@daily")
        assert response.status_code == status
        assert response.json()["error"]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        fields=st.dictionaries(
            st.sampled_from(
                [
                    "cron",
                    "timezone",
                    "every",
                    "period",
                    "anchor",
                    "run_at",
                    "schedule_kind",
                    "start_time_0",
                    "args",
                    "kwargs",
                    "task",
                ]
            ),
            st.text(max_size=30),
        )
    )
    def test_no_input_is_a_server_error(self, admin_client, fields):
        response = admin_client.get(URL, fields)
        assert response.status_code in (200, 400), response.content

    def test_it_needs_the_view_permission(self, client, admin_client):
        staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
        client.force_login(staff)
        assert client.get(URL, {"cron": "@daily"}).status_code == 403
        staff.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
        client.force_login(get_user_model().objects.get(pk=staff.pk))
        assert client.get(URL, {"cron": "@daily"}).status_code == 200
        client.logout()
        assert client.get(URL, {"cron": "@daily"}).status_code == 302  # to the login page


@st.composite
def zone_and_now(draw) -> tuple[str, datetime]:
    """A zone and a moment, half of the time within 3 days before one of its 2026-2027 offset changes."""
    zone = draw(st.sampled_from(ZONES))
    changes = [change for year in (2026, 2027) for change in _transitions(zone, year)]
    if changes and draw(st.booleans()):
        return zone, draw(st.sampled_from(changes)) - timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
    start = draw(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31)))
    return zone, start.replace(tzinfo=UTC)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(expression=cron_expressions, zone_now=zone_and_now())
def test_the_preview_shows_the_slots_beats_entry_claims(admin_user, expression, zone_now):
    zone, now = zone_now
    body = preview(None, now, cron=expression, timezone=zone).json()
    assume(not body["errors"])
    minute, hour, dom, month, dow = expression.split()
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, timezone=zone
    )
    task = PeriodicTask.objects.create(name=uuid.uuid4().hex, task=JOB, crontab=crontab)
    (row,) = list(fetch_rows([task.pk]))
    entry = EntryFactory(job_defaults()).build(row)[0]
    expected, slot = [], entry.next_slot(now)
    while slot is not None and len(expected) < 5:
        expected.append(slot)
        slot = entry.next_slot(slot)
    assert [datetime.fromisoformat(run["utc"]) for run in body["runs"]] == expected
    assert timedelta(0) < (expected[0] - now) if expected else True


def test_a_viewer_sees_the_saved_schedule_in_words_and_its_runs(client):
    """Without the change permission the page has no inputs: words, and the preview of the saved row."""
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="9", day_of_week="1-5", timezone="Europe/Berlin"
    )
    task = PeriodicTask.objects.create(name="weekdays", task=JOB, crontab=crontab)
    viewer = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client.force_login(viewer)

    page = client.get(
        reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    ).content.decode()
    assert "At 09:00, Monday through Friday (Europe/Berlin)" in page
    assert 'name="cron"' not in page

    body = client.get(URL, {"id": task.pk}).json()
    assert body["words"] == "At 09:00, Monday through Friday (Europe/Berlin)"
    assert len(body["runs"]) == 5 and body["runs"][0]["local_text"].endswith(("09:00 CET", "09:00 CEST"))
    assert body["job"]["name"] == JOB
