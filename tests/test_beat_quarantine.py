"""One bad row never stops beat: hostile rows written with raw SQL are quarantined, the rest fire.

Each hostile row starts as a valid schedule saved through the ORM, then is
corrupted with raw SQL (what a migration script, a psql session or another
system can do behind validation's back). Beat must never raise out of
``tick()``, must record why each bad schedule does not run (its policy's
``problem``, one ERROR line each), must claim no slot for it, and must keep
firing the good schedule beside them. Fixing a row through the ORM brings it
back through the change log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from jobs.models import JobRun
from scheduler.beat.engine import BeatEngine
from scheduler.models import SchedulePolicy
from tests.support.queues import empty_queues

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
QUEUE = "quarantine-tests"  # no test worker consumes it


@pytest.fixture
def engine(beat_engine):
    empty_queues([QUEUE])
    return beat_engine


def sql(statement: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def schedule(name: str, **fields) -> PeriodicTask:
    """A valid every-minute heartbeat schedule anchored at T0 (to be corrupted by the caller)."""
    fields.setdefault("interval", IntervalSchedule.objects.get_or_create(every=60, period="seconds")[0])
    task = PeriodicTask.objects.create(name=name, task="heartbeat", **fields)
    SchedulePolicy.objects.filter(task=task).update(anchor=T0, created_at=T0, queue=QUEUE)
    return task


def corrupt_task(task: PeriodicTask, column: str, value) -> None:
    sql(f"UPDATE django_celery_beat_periodictask SET {column} = %s WHERE id = %s", [value, task.pk])


def own_interval(every: int, period: str = "seconds") -> IntervalSchedule:
    """An interval row of its own (valid), so raw SQL can break it without touching the good schedule's."""
    return IntervalSchedule.objects.create(every=every + 1000, period=period)


HOSTILE = {
    # name: (how to corrupt, words expected in its problem)
    "bad-json": (lambda t: corrupt_task(t, "args", "[1, 2"), "not valid JSON"),
    "nan": (lambda t: corrupt_task(t, "args", "[NaN]"), "NaN"),
    "infinity": (lambda t: corrupt_task(t, "kwargs", '{"targets": -Infinity}'), "Infinity"),
    "huge-number": (lambda t: corrupt_task(t, "args", "[1e999]"), "inf"),
    "nul": (lambda t: corrupt_task(t, "kwargs", '{"targets": "\\u0000"}'), "NUL"),
    "lone-surrogate": (lambda t: corrupt_task(t, "args", '["\\ud800"]'), "surrogate"),
    "kwargs-list": (lambda t: corrupt_task(t, "kwargs", "[1, 2]"), "must be a JSON object"),
    "unknown-job": (lambda t: corrupt_task(t, "task", "no.such.job"), "unknown job 'no.such.job'"),
    "no-schedule": (lambda t: corrupt_task(t, "interval_id", None), "no crontab, interval or clocked"),
}


def _interval_corruption(column: str, value):
    def corrupt(task: PeriodicTask) -> None:
        interval = own_interval(60)
        corrupt_task(task, "interval_id", interval.pk)
        sql(
            f"UPDATE django_celery_beat_intervalschedule SET {column} = %s WHERE id = %s",
            [value, interval.pk],
        )

    return corrupt


def _crontab_corruption(column: str, value):
    def corrupt(task: PeriodicTask) -> None:
        crontab = CrontabSchedule.objects.create(minute="*", hour="*")
        sql(
            "UPDATE django_celery_beat_periodictask SET interval_id = NULL, crontab_id = %s WHERE id = %s",
            [crontab.pk, task.pk],
        )
        sql(f"UPDATE django_celery_beat_crontabschedule SET {column} = %s WHERE id = %s", [value, crontab.pk])

    return corrupt


def _solar(task: PeriodicTask) -> None:
    solar = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
    sql(
        "UPDATE django_celery_beat_periodictask SET interval_id = NULL, solar_id = %s WHERE id = %s",
        [solar.pk, task.pk],
    )


def _policy(column: str, value):
    def corrupt(task: PeriodicTask) -> None:
        sql(f"UPDATE scheduler_schedulepolicy SET {column} = %s WHERE task_id = %s", [value, task.pk])

    return corrupt


def _inverted_limits(task: PeriodicTask) -> None:
    sql(
        "UPDATE scheduler_schedulepolicy SET soft_time_limit = 50, hard_time_limit = 10 WHERE task_id = %s",
        [task.pk],
    )


def _clocked_before_creation(task: PeriodicTask) -> None:
    clocked = ClockedSchedule.objects.create(clocked_time=T0 - timedelta(days=1))
    sql(
        "UPDATE django_celery_beat_periodictask SET interval_id = NULL, clocked_id = %s, one_off = %s "
        "WHERE id = %s",
        [clocked.pk, True, task.pk],
    )


HOSTILE.update(
    {
        "every-0": (_interval_corruption("every", 0), "every 0 seconds is not an interval"),
        "every-negative": (_interval_corruption("every", -5), "every -5 seconds"),
        "every-microsecond": (_interval_corruption("period", "microseconds"), "shorter than the shortest"),
        "unknown-period": (
            _interval_corruption("period", "fortnights"),
            "'fortnights' is not an interval unit",
        ),
        "minute-61": (_crontab_corruption("minute", "61"), "not a valid cron expression"),
        "never-fires": (_crontab_corruption("day_of_month", "31"), None),  # replaced below
        "bad-zone": (_crontab_corruption("timezone", "Mars/Olympus_Mons"), "not an IANA time zone"),
        "solar": (_solar, "solar schedules are not supported"),
        "inverted-limits": (_inverted_limits, "must be longer than the soft limit"),
        "deadline-0": (_policy("starting_deadline", 0), "starting deadline of 0 s"),
        "clocked-past": (_clocked_before_creation, "passed before it was scheduled"),
    }
)


def _never_fires(task: PeriodicTask) -> None:
    crontab = CrontabSchedule.objects.create(minute="0", hour="0")
    sql(
        "UPDATE django_celery_beat_periodictask SET interval_id = NULL, crontab_id = %s WHERE id = %s",
        [crontab.pk, task.pk],
    )
    sql(
        "UPDATE django_celery_beat_crontabschedule SET day_of_month = '31', month_of_year = '2' "
        "WHERE id = %s",
        [crontab.pk],
    )


HOSTILE["never-fires"] = (_never_fires, "can never fire")


@pytest.fixture
def zoo():
    """The good schedule and every hostile one, by name."""
    good = schedule("good")
    hostile = {}
    for name, (corrupt, _) in HOSTILE.items():
        task = schedule(name)
        corrupt(task)
        hostile[name] = task
    return good, hostile


def slots_of(task) -> list[datetime]:
    return sorted(JobRun.objects.filter(schedule=task).values_list("scheduled_for", flat=True))


def problem_of(task) -> str:
    return SchedulePolicy.objects.get(task=task).problem


def test_hostile_rows_are_quarantined_and_the_good_schedule_keeps_its_slots(engine, zoo, caplog):
    good, hostile = zoo
    caplog.set_level(logging.ERROR, logger="scheduler.beat.engine")

    engine.load(now=T0)  # never raises
    for seconds in (60, 120, 180):
        engine.tick(now=T0 + timedelta(seconds=seconds))  # never raises

    assert slots_of(good) == [T0 + timedelta(seconds=s) for s in (60, 120, 180)]
    assert not JobRun.objects.exclude(schedule=good).exists(), "a quarantined schedule claimed a slot"
    for name, task in hostile.items():
        problem = problem_of(task)
        assert problem.startswith("not scheduled:"), (name, problem)
        assert HOSTILE[name][1] in problem, (name, problem)
    quarantined = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(quarantined) == len(hostile), [r.getMessage() for r in quarantined]
    assert all(r.levelno == logging.ERROR for r in quarantined)


def test_an_interval_longer_than_a_century_is_quarantined_and_stops_nothing(engine):
    good = schedule("good")
    far = schedule("every 99,999,999 days", interval=own_interval(60))  # valid, then made huge (raw SQL)
    sql(
        "UPDATE django_celery_beat_intervalschedule SET every = 99999999, period = 'days' WHERE id = %s",
        [far.interval_id],
    )
    SchedulePolicy.objects.filter(task=far).update(anchor=T0 - timedelta(days=1))

    engine.load(now=T0)  # never raises
    for seconds in (60, 120):
        engine.tick(now=T0 + timedelta(seconds=seconds))  # never raises

    assert slots_of(good) == [T0 + timedelta(seconds=s) for s in (60, 120)]
    assert slots_of(far) == []
    assert "longer than 100 years" in problem_of(far)


def test_a_reload_or_a_second_beat_does_not_report_a_quarantine_again(engine, zoo, caplog):
    caplog.set_level(logging.ERROR, logger="scheduler.beat.engine")
    engine.load(now=T0)
    assert [r for r in caplog.records if "quarantined" in r.getMessage()]
    caplog.clear()
    from scheduler.celery import app

    engine.load(now=T0 + timedelta(seconds=30))  # after an outage
    other = BeatEngine(app, poll_interval=0, fallback_poll_interval=0)  # after a failover
    other.load(now=T0 + timedelta(seconds=30))
    other.close()

    assert not [r for r in caplog.records if "quarantined" in r.getMessage()]


def test_a_fixed_row_comes_back_through_the_change_log(engine, zoo):
    good, hostile = zoo
    engine.load(now=T0)
    engine.tick(now=T0 + timedelta(seconds=60))
    nan = PeriodicTask.objects.get(pk=hostile["nan"].pk)

    nan.args = "[]"
    nan.save()  # validated, and recorded in the change log
    engine.tick(now=T0 + timedelta(seconds=61))
    engine.tick(now=T0 + timedelta(seconds=120))

    assert slots_of(nan) == [T0 + timedelta(seconds=120)]
    assert problem_of(nan) == ""
    assert slots_of(good) == [T0 + timedelta(seconds=60), T0 + timedelta(seconds=120)]


def test_a_row_broken_after_load_is_quarantined_by_the_reconcile(engine, zoo):
    good, _ = zoo
    victim = schedule("victim")
    engine.load(now=T0)
    corrupt_task(victim, "args", "[NaN]")  # raw SQL: no change-log row

    engine.reconcile(now=T0 + timedelta(seconds=30))
    engine.tick(now=T0 + timedelta(seconds=60))

    assert slots_of(victim) == []
    assert "NaN" in problem_of(victim)
    assert slots_of(good) == [T0 + timedelta(seconds=60)]


def test_a_schedule_whose_claim_the_database_refuses_is_quarantined_alone(engine):
    """The last line of defence: an error while claiming is pinned on the schedule that caused it."""
    good = schedule("good")
    refused = schedule("refused")
    engine.load(now=T0)
    with refuse_runs_of(refused.pk):
        engine.tick(now=T0 + timedelta(seconds=60))
        engine.tick(now=T0 + timedelta(seconds=120))

    assert slots_of(good) == [T0 + timedelta(seconds=60), T0 + timedelta(seconds=120)]
    assert slots_of(refused) == []
    assert problem_of(refused).startswith("not scheduled:")


class refuse_runs_of:
    """A database trigger that refuses inserting runs of one schedule (as a constraint would)."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id

    def __enter__(self) -> None:
        if connection.vendor == "postgresql":
            sql(
                "CREATE FUNCTION refuse_run() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.schedule_id = {int(self.task_id)} THEN RAISE EXCEPTION 'refused by a test'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql",
                [],
            )
            sql(
                "CREATE TRIGGER refuse_run BEFORE INSERT ON jobs_jobrun "
                "FOR EACH ROW EXECUTE FUNCTION refuse_run()",
                [],
            )
        else:
            sql(
                "CREATE TRIGGER refuse_run BEFORE INSERT ON jobs_jobrun "
                f"WHEN NEW.schedule_id = {int(self.task_id)} "
                "BEGIN SELECT RAISE(ABORT, 'refused by a test'); END",
                [],
            )

    def __exit__(self, *exc) -> None:
        sql(
            "DROP TRIGGER refuse_run ON jobs_jobrun"
            if connection.vendor == "postgresql"
            else "DROP TRIGGER refuse_run",
            [],
        )
        if connection.vendor == "postgresql":
            sql("DROP FUNCTION refuse_run()", [])


def test_a_new_leader_gives_workers_time_to_announce_before_flagging_unserved_jobs(engine, monkeypatch):
    """Workers started with beat publish their presence seconds after it: no flag in that window."""
    from scheduler.beat import engine as engine_module
    from scheduler.celery import app

    task = schedule("hb")  # no worker has announced anything in this test database
    engine.load(now=T0)
    engine.tick(now=T0 + timedelta(seconds=1))
    assert problem_of(task) == ""

    monkeypatch.setattr(engine_module, "PRESENCE_GRACE_SECONDS", 0.0)
    later = BeatEngine(app, poll_interval=0, fallback_poll_interval=0)  # the grace has passed
    later.load(now=T0)
    later.tick(now=T0 + timedelta(seconds=1))
    later.close()
    assert "no live worker serves job 'heartbeat'" in problem_of(task)
