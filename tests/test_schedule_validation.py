"""Bad input never reaches beat: refused by model validation and by the admin form, nothing saved."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from jobs.catalog import publish_catalog
from scheduler.admin import CrontabForm, IntervalForm
from scheduler.models import SchedulePolicy
from scheduler.schedule_form import ScheduleForm

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


@pytest.fixture
def every_minute():
    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)


def task_form(every_minute, **overrides) -> ScheduleForm:
    """The schedule page's form on ``every_minute`` (reused: the page picks the identical row)."""
    data = {
        "name": "report",
        "task": "reports.run_summary",
        "schedule_kind": "interval",
        "every": str(every_minute.every),
        "period": every_minute.period,
        "args": "[]",
        "kwargs": "{}",
        "enabled": "on",
        "priority": "",
        **overrides,
    }
    return ScheduleForm(data=data)


class TestUnknownJob:
    def test_the_model_refuses_it_and_saves_nothing(self, every_minute):
        with pytest.raises(ValidationError, match="Unknown job 'no.such.job'"):
            PeriodicTask.objects.create(name="bad", task="no.such.job", interval=every_minute)
        assert not PeriodicTask.objects.filter(name="bad").exists()

    def test_the_admin_form_names_the_known_jobs(self, every_minute):
        form = task_form(every_minute, task="no.such.job")
        assert not form.is_valid()
        message = " ".join(form.errors["task"])
        assert "Unknown job 'no.such.job'" in message
        assert "heartbeat" in message


class TestArgumentsThatDoNotBind:
    def test_the_model_refuses_an_unexpected_keyword(self, every_minute):
        with pytest.raises(ValidationError, match="do not fit reports.run_summary"):
            PeriodicTask.objects.create(
                name="bad", task="reports.run_summary", interval=every_minute, kwargs='{"bogus": 1}'
            )
        assert not PeriodicTask.objects.filter(name="bad").exists()

    def test_the_admin_form_refuses_too_many_positional_arguments(self, every_minute):
        form = task_form(every_minute, args="[1, 2, 3]")
        assert not form.is_valid()
        assert "too many positional arguments" in " ".join(form.errors["args"])

    def test_the_admin_form_refuses_a_missing_required_argument(self, every_minute):
        form = task_form(every_minute, task="diagnostics.sleep")
        assert not form.is_valid()
        assert "missing a required argument: 'seconds'" in " ".join(form.errors["args"])

    def test_the_admin_form_refuses_kwargs_that_are_not_an_object(self, every_minute):
        form = task_form(every_minute, kwargs="[1]")
        assert not form.is_valid()
        assert "must be a JSON object" in " ".join(form.errors["kwargs"])

    def test_arguments_that_bind_are_accepted(self, every_minute):
        form = task_form(every_minute, kwargs='{"window_hours": 6}')
        assert form.is_valid(), form.errors
        task = form.save()
        assert task.kwargs == '{"window_hours": 6}'


class TestTimeLimits:
    @pytest.fixture
    def task(self, every_minute):
        return PeriodicTask.objects.create(name="hb", task="heartbeat", interval=every_minute)

    @pytest.mark.parametrize(
        ("soft", "hard", "message"),
        [
            (30, 10, "must be longer than the soft limit"),
            (30, 30, "must be longer than the soft limit"),
            (0, 10, "is not a time limit"),
        ],
    )
    def test_full_clean_refuses_impossible_limits(self, task, soft, hard, message):
        policy = task.policy
        policy.soft_time_limit, policy.hard_time_limit = soft, hard
        with pytest.raises(ValidationError, match=message):
            policy.full_clean()

    def test_a_save_through_the_orm_is_refused_and_changes_nothing(self, task):
        policy = task.policy
        policy.soft_time_limit, policy.hard_time_limit = 30, 10
        with pytest.raises(ValidationError):
            policy.save()
        policy.refresh_from_db()
        assert (policy.soft_time_limit, policy.hard_time_limit) == (None, None)

    def test_negative_limits_are_refused_by_the_database_field(self, task):
        policy = task.policy
        policy.soft_time_limit = -5
        with pytest.raises(ValidationError):
            policy.full_clean()

    def test_every_task_gets_its_policy_row(self, task):
        assert SchedulePolicy.objects.filter(task=task).count() == 1


class TestCron:
    def crontab_form(self, **fields) -> CrontabForm:
        data = {
            "minute": "0",
            "hour": "6",
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
            "timezone": "UTC",
            **fields,
        }
        return CrontabForm(data=data)

    def test_a_cron_that_can_never_fire_is_refused(self):
        form = self.crontab_form(day_of_month="31", month_of_year="2")
        assert not form.is_valid()
        assert "can never fire" in str(form.errors)

    def test_an_unknown_time_zone_is_refused(self):
        form = self.crontab_form(timezone="Mars/Olympus_Mons")
        assert not form.is_valid()
        assert "timezone" in form.errors

    def test_the_orm_refuses_a_cron_that_can_never_fire(self):
        with pytest.raises(ValidationError, match="can never fire"):
            CrontabSchedule.objects.create(minute="0", hour="0", day_of_month="30", month_of_year="2")
        assert not CrontabSchedule.objects.filter(day_of_month="30").exists()

    def test_the_orm_refuses_an_invalid_cron_field(self):
        with pytest.raises(ValidationError, match="not a valid cron expression"):
            CrontabSchedule.objects.create(minute="61", hour="0")

    def test_a_valid_cron_in_a_dst_zone_is_accepted(self):
        form = self.crontab_form(minute="30", hour="2", timezone="America/New_York")
        assert form.is_valid(), form.errors


class TestStrictJson:
    """Python's json accepts NaN, Infinity and NUL; jsonb, and so a run's record, does not."""

    @pytest.mark.parametrize(
        ("field", "text", "message"),
        [
            ("args", "[NaN]", "NaN is not a JSON number"),
            ("args", "[Infinity]", "Infinity is not a JSON number"),
            ("kwargs", '{"window_hours": -Infinity}', "-Infinity is not a JSON number"),
            ("kwargs", '{"window_hours": 1e999}', "inf is not a JSON number"),
            ("args", '["\\u0000"]', "NUL character"),
            ("args", '["\\ud800"]', "lone surrogate"),
        ],
    )
    def test_the_admin_form_and_the_orm_refuse_it(self, every_minute, field, text, message):
        form = task_form(every_minute, **{field: text})
        assert not form.is_valid()
        assert message in " ".join(form.errors[field])
        with pytest.raises(ValidationError, match=message):
            PeriodicTask.objects.create(
                name="bad", task="reports.run_summary", interval=every_minute, **{field: text}
            )
        assert not PeriodicTask.objects.filter(name="bad").exists()

    def test_headers_must_be_a_strict_json_object(self, every_minute):
        # The page does not offer headers (beat does not read them); the ORM still refuses bad ones.
        assert "headers" not in task_form(every_minute).fields
        with pytest.raises(ValidationError, match="Headers are not strict JSON"):
            PeriodicTask.objects.create(
                name="bad", task="heartbeat", interval=every_minute, headers='{"x": NaN}'
            )


class TestArgumentTypes:
    def test_a_string_where_the_signature_says_a_number_is_refused(self, every_minute):
        form = task_form(every_minute, task="diagnostics.sleep", kwargs='{"seconds": "abc"}')
        assert not form.is_valid()
        assert "argument 'seconds': expected number, got string" in " ".join(form.errors["kwargs"])

    def test_a_positional_argument_of_the_wrong_type_is_refused_by_the_orm(self, every_minute):
        with pytest.raises(ValidationError, match="argument 'n': expected integer, got number"):
            PeriodicTask.objects.create(
                name="bad", task="diagnostics.count", interval=every_minute, args="[1.5]"
            )

    def test_an_integer_is_a_number_and_null_is_allowed_where_optional(self, every_minute):
        assert task_form(every_minute, task="diagnostics.sleep", args="[3]").is_valid()
        assert task_form(every_minute, task="heartbeat", kwargs='{"targets": null}').is_valid()


class TestIntervals:
    @pytest.mark.parametrize(
        ("every", "period", "message"),
        [
            (0, "seconds", "every 0 seconds is not an interval"),
            (-3, "minutes", "every -3 minutes is not an interval"),
            (500, "microseconds", "shorter than the shortest interval allowed (1 s"),
            (1, "fortnights", "'fortnights' is not an interval unit"),
            (99_999_999, "days", "every 99999999 days is longer than 100 years: it would run once at most"),
        ],
    )
    def test_the_orm_refuses_an_interval_beat_could_not_run(self, every, period, message):
        with pytest.raises(ValidationError, match=re.escape(message)):
            IntervalSchedule.objects.create(every=every, period=period)

    def test_the_interval_admin_form_refuses_one_below_the_minimum(self):
        form = IntervalForm(data={"every": "999999", "period": "microseconds"})
        assert not form.is_valid()
        assert "shorter than the shortest interval" in str(form.errors)

    @override_settings(SCHEDULE_MIN_INTERVAL_SECONDS=60)
    def test_the_minimum_is_configurable(self):
        with pytest.raises(ValidationError, match="shorter than the shortest interval allowed \\(60 s"):
            IntervalSchedule.objects.create(every=30, period="seconds")

    def test_a_task_on_an_interval_row_broken_with_sql_is_refused(self, every_minute):
        IntervalSchedule.objects.filter(pk=every_minute.pk).update(every=0)  # no signal: as raw SQL
        with pytest.raises(ValidationError, match="every 0 minutes is not an interval"):
            PeriodicTask.objects.create(name="bad", task="heartbeat", interval_id=every_minute.pk)


class TestScheduleKinds:
    def test_a_solar_schedule_is_refused_with_the_way_out(self):
        solar = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
        with pytest.raises(ValidationError, match="Solar schedules are not supported.*Use a crontab"):
            PeriodicTask.objects.create(name="dawn", task="heartbeat", solar=solar)
        # The page offers no solar schedule: a cron in the place's time zone instead.
        form = ScheduleForm(data={"name": "dawn", "task": "heartbeat", "args": "[]", "kwargs": "{}",
                                  "schedule_kind": "solar", "enabled": "on"})  # fmt: skip
        assert "solar" not in form.fields
        assert not form.is_valid()
        assert "Select a valid choice" in " ".join(form.errors["schedule_kind"])

    def test_a_one_off_time_in_the_past_is_refused(self):
        past = ClockedSchedule.objects.create(clocked_time=timezone.now() - timedelta(minutes=5))
        with pytest.raises(ValidationError, match="is in the past: it would never run"):
            PeriodicTask.objects.create(name="once", task="heartbeat", clocked=past, one_off=True)

    def test_a_one_off_that_already_ran_can_still_be_renamed(self):
        with time_machine.travel(timezone.now() - timedelta(hours=1), tick=False):
            when = ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(minutes=5))
            task = PeriodicTask.objects.create(name="once", task="heartbeat", clocked=when, one_off=True)
        task.name = "once, renamed"
        task.save()  # the one-off time did not change: not refused for being past


class TestPolicy:
    @pytest.fixture
    def task(self, every_minute):
        return PeriodicTask.objects.create(name="drill", task="diagnostics.fail", interval=every_minute)

    def test_a_soft_limit_alone_is_judged_against_the_jobs_hard_limit(self, task):
        policy = task.policy
        policy.soft_time_limit = 100  # diagnostics.fail's default hard limit is 45 s
        with pytest.raises(
            ValidationError,
            match=r"hard limit \(45 s\).*soft limit \(100 s\).*fail.*s default; set it here too",
        ):
            policy.save()
        assert SchedulePolicy.objects.get(pk=task.pk).soft_time_limit is None

    def test_a_hard_limit_alone_is_judged_against_the_jobs_soft_limit(self, task):
        policy = task.policy
        policy.hard_time_limit = 10  # diagnostics.fail's default soft limit is 30 s
        with pytest.raises(ValidationError, match=r"hard limit \(10 s\).*soft limit \(30 s\)"):
            policy.full_clean()

    @override_settings(
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 600},
    )
    def test_a_hard_limit_near_the_visibility_timeout_names_both_numbers_and_the_fix(self, task):
        policy = task.policy
        policy.soft_time_limit, policy.hard_time_limit = 400, 500
        with pytest.raises(ValidationError) as caught:
            policy.save()
        message = " ".join(caught.value.messages)
        assert "hard limit (500 s)" in message and "BROKER_VISIBILITY_TIMEOUT = 600 s" in message
        assert "at or below 450 s" in message and "at least 667 s" in message

    @override_settings(
        CELERY_BROKER_URL="amqp://guest@127.0.0.1//",
        CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 600},
        BROKER_CONSUMER_TIMEOUT=1800,
    )
    def test_on_rabbitmq_the_consumer_timeout_bounds_the_hard_limit_not_the_visibility_timeout(self, task):
        policy = task.policy
        policy.soft_time_limit, policy.hard_time_limit = 400, 1350  # 75 % of 1800 s: allowed
        policy.save()
        policy.hard_time_limit = 1400
        with pytest.raises(ValidationError) as caught:
            policy.save()
        message = " ".join(caught.value.messages)
        assert "consumer timeout (BROKER_CONSUMER_TIMEOUT = 1800 s)" in message
        assert "RabbitMQ would hand the message to another worker" in message
        assert "at least 1867 s (and the server's consumer_timeout with it)" in message

    @override_settings(
        CELERY_BROKER_URL="amqp://guest@127.0.0.1//",
        CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 600},
        BROKER_CONSUMER_TIMEOUT=0,
    )
    def test_rabbitmq_with_its_consumer_timeout_off_bounds_no_hard_limit(self, task):
        policy = task.policy
        policy.soft_time_limit, policy.hard_time_limit = 400, 50_000
        policy.save()

    def test_a_starting_deadline_of_zero_is_refused_with_what_it_would_mean(self, task):
        policy = task.policy
        policy.starting_deadline = 0
        with pytest.raises(
            ValidationError, match="would make every run missed.*leave it empty for the default"
        ):
            policy.save()

    def test_jitter_must_be_shorter_than_the_period(self, task):
        policy = task.policy
        policy.jitter = 60  # the schedule runs every minute
        with pytest.raises(
            ValidationError, match=r"Jitter \(60 s\) must be shorter than the schedule's period \(60 s\)"
        ):
            policy.save()
        policy.jitter = 59
        policy.save()

    def test_jitter_on_a_cron_is_judged_against_its_shortest_gap(self, task):
        crontab = CrontabSchedule.objects.create(minute="0,10", hour="*")  # gaps of 10 and 50 minutes
        task.interval, task.crontab = None, crontab
        task.save()
        policy = task.policy
        policy.jitter = 700
        with pytest.raises(ValidationError, match=r"period \(600 s\)"):
            policy.save()


class TestAdminPolicyInline:
    """The policy inline is checked against the task as the page is about to save it."""

    def post(self, client, every_minute, **fields):
        data = {
            "name": "drill", "task": "diagnostics.fail", "schedule_kind": "interval",
            "every": str(every_minute.every), "period": every_minute.period, "args": "[]",
            "kwargs": "{}", "enabled": "on",
            "policy-TOTAL_FORMS": "1", "policy-INITIAL_FORMS": "0", "policy-MIN_NUM_FORMS": "0",
            "policy-MAX_NUM_FORMS": "1", "policy-0-catchup": "latest", "policy-0-overlap": "allow",
            "policy-0-jitter": "0", "policy-0-grace": "60",
            "policy-0-failures_before_alert": "1", "policy-0-successes_before_recovery": "1",
            **fields,
        }  # fmt: skip
        return client.post("/admin/django_celery_beat/periodictask/add/", data)

    def test_half_limits_are_a_form_error_and_nothing_is_saved(self, admin_client, every_minute):
        response = self.post(admin_client, every_minute, **{"policy-0-soft_time_limit": "100"})
        assert response.status_code == 200
        assert "diagnostics.fail&#x27;s default" in response.content.decode()
        assert not PeriodicTask.objects.filter(name="drill").exists()

    def test_jitter_longer_than_the_new_interval_is_a_form_error(self, admin_client, every_minute):
        response = self.post(admin_client, every_minute, **{"policy-0-jitter": "120"})
        assert response.status_code == 200
        assert "must be shorter than the schedule" in response.content.decode()
        assert not PeriodicTask.objects.filter(name="drill").exists()

    def test_a_past_one_off_time_is_a_form_error_not_a_500(self, admin_client, every_minute):
        past = (timezone.now() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
        response = self.post(admin_client, every_minute, schedule_kind="one_off", run_at=past, timezone="UTC")
        assert response.status_code == 200
        assert "is in the past" in response.content.decode()
