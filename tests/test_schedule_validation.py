"""Bad input never reaches beat: refused by model validation and by the admin form, nothing saved."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from scheduler.admin import CrontabForm, PeriodicTaskForm
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


@pytest.fixture
def every_minute():
    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)


def task_form(every_minute, **overrides) -> PeriodicTaskForm:
    data = {
        "name": "report",
        "task": "reports.run_summary",
        "interval": every_minute.pk,
        "args": "[]",
        "kwargs": "{}",
        "enabled": "on",
        "priority": "",
        "headers": "{}",
        **overrides,
    }
    return PeriodicTaskForm(data=data)


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
