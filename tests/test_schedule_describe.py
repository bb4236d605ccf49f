"""Schedules in words, and next_slots: the slots beat's own entry would claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from scheduler.beat.entries import EntryFactory, fetch_rows, job_defaults
from scheduler.describe import describe_cron, describe_interval, describe_schedule, expand_cron, next_slots
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db
JOB = "reports.run_summary"


@pytest.fixture(autouse=True)
def catalog():
    publish_catalog(worker="tests")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


class TestWords:
    @pytest.mark.parametrize(
        ("expression", "words"),
        [
            ("0 9 * * 1-5", "At 09:00, Monday through Friday"),
            ("0 9 * * mon-fri", "At 09:00, Monday through Friday"),
            ("30 14 1 jan *", "At 14:30, on day 1 of the month, only in January"),
            ("@daily", "At 00:00"),
            ("@hourly", "Every hour"),
            ("*/5 * * * *", "Every 5 minutes"),
        ],
    )
    def test_cron_on_a_24_hour_clock(self, expression, words):
        assert describe_cron(expression) == words

    def test_unreadable_cron_comes_back_as_typed(self):
        assert describe_cron("not a cron") == "not a cron"

    def test_macros_expand_to_five_fields(self):
        assert expand_cron(" @Daily ") == "0 0 * * *"
        assert expand_cron("@weekly") == "0 0 * * 0"
        assert expand_cron("0  9 * *   MON-FRI") == "0 9 * * mon-fri"

    def test_interval(self):
        assert describe_interval(5, "minutes") == "Every 5 minutes"
        assert describe_interval(1, "hours") == "Every hour"
        assert describe_interval(2, "days") == "Every 2 days"

    def test_saved_schedules(self):
        cron = CrontabSchedule.objects.create(
            minute="0", hour="9", day_of_week="1-5", timezone="Europe/Berlin"
        )
        task = PeriodicTask.objects.create(name="c", task=JOB, crontab=cron)
        assert describe_schedule(task) == "At 09:00, Monday through Friday (Europe/Berlin)"
        every = IntervalSchedule.objects.create(every=10, period="minutes")
        assert describe_schedule(PeriodicTask(name="i", task=JOB, interval=every)) == "Every 10 minutes"
        clocked = ClockedSchedule(clocked_time=utc(2030, 1, 2, 3, 4))
        assert describe_schedule(PeriodicTask(task=JOB, clocked=clocked)) == ("Once at 2030-01-02 03:04 UTC")


class TestNextSlots:
    def test_berlin_spring_forward_fixed_time_fires_once_after_the_gap(self):
        cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
        task = PeriodicTask.objects.create(name="c", task=JOB, crontab=cron)
        slots = next_slots(task, utc(2027, 3, 26, 12), 3)
        assert slots == [
            utc(2027, 3, 27, 1, 30),  # 02:30 CET
            utc(2027, 3, 28, 1, 0),  # 02:30 does not exist: 03:00 CEST
            utc(2027, 3, 29, 0, 30),  # 02:30 CEST
        ]

    def test_autumn_repeated_hour_fires_once_at_the_first(self):
        cron = CrontabSchedule.objects.create(minute="30", hour="2", timezone="Europe/Berlin")
        task = PeriodicTask.objects.create(name="c", task=JOB, crontab=cron)
        assert next_slots(task, utc(2026, 10, 24, 12), 2) == [
            utc(2026, 10, 25, 0, 30),
            utc(2026, 10, 26, 1, 30),
        ]

    def test_equals_beats_own_entry_for_the_saved_row(self):
        cron = CrontabSchedule.objects.create(minute="*/7", hour="1-3", timezone="America/New_York")
        task = PeriodicTask.objects.create(name="c", task=JOB, crontab=cron)
        (row,) = list(fetch_rows([task.pk]))
        entry = EntryFactory(job_defaults()).build(row)[0]
        after = utc(2026, 11, 1, 4)
        expected, slot = [], after
        for _ in range(20):
            slot = entry.next_slot(slot)
            expected.append(slot)
        assert next_slots(PeriodicTask.objects.get(pk=task.pk), after, 20) == expected

    def test_interval_is_anchored_on_the_policy(self):
        every = IntervalSchedule.objects.create(every=15, period="minutes")
        task = PeriodicTask.objects.create(name="i", task=JOB, interval=every)
        SchedulePolicy.objects.filter(task=task).update(anchor=utc(2026, 1, 1, 0, 5))
        task = PeriodicTask.objects.select_related("policy").get(pk=task.pk)
        assert next_slots(task, utc(2026, 6, 1, 10, 0), 2) == [
            utc(2026, 6, 1, 10, 5),
            utc(2026, 6, 1, 10, 20),
        ]

    def test_unsaved_task_with_unsaved_rows(self):
        task = PeriodicTask(
            name="new",
            task=JOB,
            crontab=CrontabSchedule(minute="0", hour="9", day_of_week="mon-fri", timezone="UTC"),
        )
        assert next_slots(task, utc(2026, 12, 4, 12), 2) == [utc(2026, 12, 7, 9), utc(2026, 12, 8, 9)]

    def test_one_off_expiry_disabled_and_never(self):
        when = datetime.now(UTC) + timedelta(days=1)
        clocked = ClockedSchedule.objects.create(clocked_time=when)
        task = PeriodicTask.objects.create(name="o", task=JOB, clocked=clocked, one_off=True)
        assert next_slots(task, datetime.now(UTC), 5) == [when]
        assert next_slots(task, when, 5) == []
        cron = CrontabSchedule.objects.create(minute="0", hour="*", timezone="UTC")
        expiring = PeriodicTask(name="e", task=JOB, crontab=cron, expires=utc(2026, 1, 1, 2, 30))
        assert next_slots(expiring, utc(2026, 1, 1), 5) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]
        expiring.enabled = False
        assert next_slots(expiring, utc(2026, 1, 1), 5) == []
        never = PeriodicTask(
            name="n",
            task=JOB,
            crontab=CrontabSchedule(minute="0", hour="0", day_of_month="31", month_of_year="2"),
        )
        assert next_slots(never, utc(2026, 1, 1), 5) == []
