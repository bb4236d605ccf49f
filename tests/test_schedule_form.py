"""The schedule page's form through the admin's add and change pages (Django's test client, real PostgreSQL).

One schedule field stored in django-celery-beat's rows: an identical crontab,
interval or clocked row is reused, never duplicated; an invalid page saves
nothing; an edit page shows the current schedule in the new fields.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.urls import reverse
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from scheduler.models import ScheduleChange, SchedulePolicy

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:django_celery_beat_periodictask_add")
JOB = "reports.run_summary"


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


def page(**fields: str) -> dict[str, str]:
    """A POST of the schedule page: a cron schedule unless ``fields`` say otherwise."""
    data = {
        "name": "weekday report",
        "task": JOB,
        "args": "[]",
        "kwargs": "{}",
        "enabled": "on",
        "schedule_kind": "cron",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Berlin",
        "period": "minutes",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "0",
        "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-catchup": "latest",
        "policy-0-overlap": "allow",
        "policy-0-jitter": "0",
        "policy-0-grace": "60",
        "policy-0-failures_before_alert": "1",
        "policy-0-successes_before_recovery": "1",
    }
    data.update(fields)
    return data


def change_url(task: PeriodicTask) -> str:
    return reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])


def edit_page(admin_client, task: PeriodicTask, **fields: str) -> dict[str, str]:
    data = page(**fields)
    data.update({"policy-INITIAL_FORMS": "1", "policy-0-task": str(task.pk)})
    return data


class TestCron:
    def test_typed_cron_with_its_zone_is_saved_in_a_crontab_row(self, admin_client):
        response = admin_client.post(ADD_URL, page())

        assert response.status_code == 302, response.content.decode()[:3000]
        task = PeriodicTask.objects.get(name="weekday report")
        crontab = task.crontab
        assert (
            crontab.minute,
            crontab.hour,
            crontab.day_of_month,
            crontab.month_of_year,
            crontab.day_of_week,
        ) == (
            "0",
            "9",
            "*",
            "*",
            "1-5",
        )
        assert str(crontab.timezone) == "Europe/Berlin"
        assert task.interval is None and task.clocked is None and not task.one_off
        # Saved through the ORM: the change log has it (beat reconciles from it).
        assert ScheduleChange.objects.filter(task_id=task.pk).exists()

    def test_an_identical_crontab_row_is_reused_not_duplicated(self, admin_client):
        existing = CrontabSchedule.objects.create(
            minute="0",
            hour="9",
            day_of_month="*",
            month_of_year="*",
            day_of_week="1-5",
            timezone="Europe/Berlin",
        )
        assert admin_client.post(ADD_URL, page()).status_code == 302
        assert admin_client.post(ADD_URL, page(name="second")).status_code == 302

        assert CrontabSchedule.objects.count() == 1
        assert set(PeriodicTask.objects.values_list("crontab_id", flat=True)) == {existing.pk}

    def test_same_fields_in_another_zone_is_another_row(self, admin_client):
        assert admin_client.post(ADD_URL, page()).status_code == 302
        assert admin_client.post(ADD_URL, page(name="ny", timezone="America/New_York")).status_code == 302
        assert CrontabSchedule.objects.count() == 2

    def test_macros_are_stored_as_their_five_fields_and_names_are_kept(self, admin_client):
        assert admin_client.post(ADD_URL, page(name="daily", cron="@daily")).status_code == 302
        assert admin_client.post(ADD_URL, page(name="names", cron="30 6 1 JAN mon-fri")).status_code == 302

        daily = PeriodicTask.objects.get(name="daily").crontab
        assert (daily.minute, daily.hour, daily.day_of_month, daily.month_of_year, daily.day_of_week) == (
            "0",
            "0",
            "*",
            "*",
            "*",
        )
        names = PeriodicTask.objects.get(name="names").crontab
        assert (names.month_of_year, names.day_of_week) == ("jan", "mon-fri")

    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            ({"cron": "61 9 * * *"}, "cron", "is not a valid cron expression"),
            ({"cron": "0 9 * *"}, "cron", "it needs 5 fields"),
            ({"cron": "0 0 31 2 *"}, "cron", "can never fire"),
            ({"cron": ""}, "cron", "Type a cron expression"),
            ({"timezone": "Mars/Olympus"}, "timezone", "is not an IANA time zone"),
        ],
    )
    def test_an_invalid_cron_is_an_error_on_its_field_and_nothing_is_saved(
        self, admin_client, fields, field, message
    ):
        response = admin_client.post(ADD_URL, page(**fields))

        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert message in " ".join(errors[field]), errors
        assert not PeriodicTask.objects.exists()
        assert not CrontabSchedule.objects.exists()
        assert not SchedulePolicy.objects.exists()

    def test_an_invalid_policy_saves_no_task_and_no_new_crontab_row(self, admin_client):
        response = admin_client.post(
            ADD_URL, page(**{"policy-0-soft_time_limit": "40", "policy-0-hard_time_limit": "20"})
        )
        assert response.status_code == 200
        assert "must be longer than the soft limit" in response.content.decode()
        assert not PeriodicTask.objects.exists()
        assert not CrontabSchedule.objects.exists()


class TestJob:
    def test_unknown_job_is_an_error_on_the_job_field(self, admin_client):
        response = admin_client.post(ADD_URL, page(task="no.such.job"))
        assert response.status_code == 200
        assert "Unknown job 'no.such.job'" in " ".join(response.context["adminform"].form.errors["task"])
        assert not PeriodicTask.objects.exists()

    def test_arguments_are_checked_against_the_signature(self, admin_client):
        response = admin_client.post(ADD_URL, page(kwargs='{"bogus": 1}'))
        assert response.status_code == 200
        assert "do not fit" in " ".join(response.context["adminform"].form.errors["kwargs"])
        assert not PeriodicTask.objects.exists()

    def test_the_picker_offers_the_catalog_and_the_page_offers_only_what_beat_honours(self, admin_client):
        html = admin_client.get(ADD_URL).content.decode()
        assert f'<option value="{JOB}">' in html  # the job picker's autocomplete
        assert '<option value="Europe/Berlin">' in html  # the time-zone autocomplete
        for absent in (
            'name="regtask"',
            'name="solar"',
            'name="crontab"',
            'name="interval"',
            'name="clocked"',
            'name="exchange"',
            'name="routing_key"',
            'name="headers"',
            'name="queue"',
        ):
            assert absent not in html, absent
        for present in (
            'name="cron"',
            'name="timezone"',
            'name="every"',
            'name="anchor"',
            'name="run_at"',
            'name="priority"',
            'name="policy-0-queue"',
            'id="schedule-preview"',
        ):
            assert present in html, present


class TestIntervalAndOneOff:
    def test_interval_with_its_anchor(self, admin_client):
        response = admin_client.post(
            ADD_URL,
            page(schedule_kind="interval", every="15", period="minutes", anchor="2026-01-01T00:05:00"),
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        task = PeriodicTask.objects.get(name="weekday report")
        assert (task.interval.every, task.interval.period, task.crontab) == (15, "minutes", None)
        assert task.policy.anchor == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)

    def test_identical_interval_row_is_reused(self, admin_client):
        existing = IntervalSchedule.objects.create(every=15, period="minutes")
        assert admin_client.post(ADD_URL, page(schedule_kind="interval", every="15")).status_code == 302
        assert IntervalSchedule.objects.get() == existing

    @override_settings(SCHEDULE_MIN_INTERVAL_SECONDS=10)
    def test_interval_below_the_minimum_is_an_error(self, admin_client):
        response = admin_client.post(ADD_URL, page(schedule_kind="interval", every="5", period="seconds"))
        assert response.status_code == 200
        assert "shorter than the shortest interval" in " ".join(
            response.context["adminform"].form.errors["every"]
        )
        assert not PeriodicTask.objects.exists() and not IntervalSchedule.objects.exists()

    def test_one_off_on_the_zones_clock(self, admin_client):
        when = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0, second=0)
        berlin_wall = when.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
        response = admin_client.post(
            ADD_URL, page(schedule_kind="one_off", run_at=berlin_wall.strftime("%Y-%m-%dT%H:%M:%S"))
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        task = PeriodicTask.objects.get(name="weekday report")
        assert task.one_off and task.clocked.clocked_time == when and task.crontab is None

    def test_one_off_in_the_past_saves_nothing(self, admin_client):
        response = admin_client.post(ADD_URL, page(schedule_kind="one_off", run_at="2001-01-01T10:00:00"))
        assert response.status_code == 200
        assert "is in the past" in " ".join(response.context["adminform"].form.errors["run_at"])
        assert not PeriodicTask.objects.exists() and not ClockedSchedule.objects.exists()


class TestEdit:
    def test_the_edit_page_shows_the_current_cron_and_saves_a_change(self, admin_client):
        crontab = CrontabSchedule.objects.create(
            minute="30", hour="2", day_of_week="0", timezone="Europe/Berlin"
        )
        task = PeriodicTask.objects.create(name="nightly", task=JOB, crontab=crontab)

        form = admin_client.get(change_url(task)).context["adminform"].form
        assert form["schedule_kind"].value() == "cron"
        assert form["cron"].value() == "30 2 * * 0"
        assert form["timezone"].value() == "Europe/Berlin"

        response = admin_client.post(
            change_url(task), edit_page(admin_client, task, name="nightly", cron="45 3 * * *")
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        task.refresh_from_db()
        assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("45", "3", "*")
        assert str(task.crontab.timezone) == "Europe/Berlin"

    def test_the_edit_page_shows_an_interval_and_its_anchor(self, admin_client):
        every = IntervalSchedule.objects.create(every=2, period="hours")
        task = PeriodicTask.objects.create(name="often", task=JOB, interval=every)
        SchedulePolicy.objects.filter(task=task).update(anchor=datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC))

        form = admin_client.get(change_url(task)).context["adminform"].form
        assert (form["schedule_kind"].value(), form["every"].value(), form["period"].value()) == (
            "interval",
            2,
            "hours",
        )
        assert form["anchor"].value() == datetime(2026, 3, 1, 12, 0, 7)

    def test_saving_an_interval_page_untouched_keeps_its_anchor(self, admin_client):
        every = IntervalSchedule.objects.create(every=2, period="hours")
        task = PeriodicTask.objects.create(name="often", task=JOB, interval=every)
        anchor = datetime(2026, 3, 1, 12, 0, 7, 123456, tzinfo=UTC)
        SchedulePolicy.objects.filter(task=task).update(anchor=anchor)
        shown = admin_client.get(change_url(task)).context["adminform"].form["anchor"].value()

        fields = {"schedule_kind": "interval", "every": "2", "period": "hours", "anchor": shown.isoformat()}
        response = admin_client.post(change_url(task), edit_page(admin_client, task, name="often", **fields))
        assert response.status_code == 302, response.content.decode()[:3000]
        assert SchedulePolicy.objects.get(task=task).anchor == anchor

        fields["anchor"] = "2026-03-01T12:30:00"
        assert (
            admin_client.post(
                change_url(task), edit_page(admin_client, task, name="often", **fields)
            ).status_code
            == 302
        )
        assert SchedulePolicy.objects.get(task=task).anchor == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)

    def test_an_edit_keeps_a_one_off_row_shown_to_the_second(self, admin_client):
        when = datetime.now(UTC) + timedelta(days=1, microseconds=1234)
        clocked = ClockedSchedule.objects.create(clocked_time=when)
        task = PeriodicTask.objects.create(name="once", task=JOB, clocked=clocked, one_off=True)
        shown = admin_client.get(change_url(task)).context["adminform"].form["run_at"].value()

        fields = {
            "schedule_kind": "one_off",
            "run_at": shown.strftime("%Y-%m-%dT%H:%M:%S"),
            "timezone": "UTC",
        }
        response = admin_client.post(
            change_url(task), edit_page(admin_client, task, name="once, renamed", **fields)
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        task.refresh_from_db()
        assert (task.name, task.clocked_id, ClockedSchedule.objects.count()) == (
            "once, renamed",
            clocked.pk,
            1,
        )

    def test_an_invalid_edit_changes_nothing(self, admin_client):
        crontab = CrontabSchedule.objects.create(minute="0", hour="9", timezone="UTC")
        task = PeriodicTask.objects.create(name="keep", task=JOB, crontab=crontab)
        response = admin_client.post(
            change_url(task), edit_page(admin_client, task, name="keep", cron="0 0 31 2 *")
        )
        assert response.status_code == 200
        task.refresh_from_db()
        assert task.crontab_id == crontab.pk and CrontabSchedule.objects.count() == 1

    def test_a_task_level_queue_moves_to_the_policy(self, admin_client):
        crontab = CrontabSchedule.objects.create(minute="0", hour="9", timezone="UTC")
        task = PeriodicTask.objects.create(name="queued", task=JOB, crontab=crontab, queue="reports")
        response = admin_client.post(
            change_url(task), edit_page(admin_client, task, name="queued", cron="0 9 * * *", timezone="UTC")
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        task.refresh_from_db()
        assert task.queue is None
        assert SchedulePolicy.objects.get(task=task).queue == "reports"

    def test_the_page_does_not_load_every_crontab_row(self, admin_client, django_assert_max_num_queries):
        CrontabSchedule.objects.bulk_create(
            CrontabSchedule(minute=str(m), hour=str(h), timezone="UTC") for m in range(60) for h in range(24)
        )
        task = PeriodicTask.objects.create(name="x", task=JOB, crontab=CrontabSchedule.objects.first())
        response = admin_client.get(change_url(task))
        assert "readable_crontabs" not in response.context


@pytest.mark.django_db(transaction=True)
def test_two_pages_saving_the_same_new_cron_at_once_create_one_row():
    """Both pages validate before either saves (neither sees a row to reuse); still one row."""
    import threading
    import time

    from django.db import connection, transaction

    from scheduler.schedule_form import ScheduleForm

    publish_catalog(worker="tests")
    forms = []
    for name in ("first", "second"):
        form = ScheduleForm(data={**page(name=name, cron="7 7 7 7 *")})
        assert form.is_valid(), form.errors
        forms.append(form)
    both_ready = threading.Barrier(2)
    failures: list[BaseException] = []

    def save(form) -> None:
        try:
            both_ready.wait()
            with transaction.atomic():
                form.save_schedule_row()
                form.instance.save()
                time.sleep(0.3)  # hold the transaction open while the other page saves
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(form,)) for form in forms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures, failures
    assert (
        CrontabSchedule.objects.filter(minute="7", hour="7", day_of_month="7", month_of_year="7").count() == 1
    )
    assert PeriodicTask.objects.filter(name__in=["first", "second"]).count() == 2
