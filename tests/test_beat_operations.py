"""Operations: which beat leads (beatstatus), and schedules whose job no live worker serves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.models import WorkerPresence
from jobs.workers import record_worker
from scheduler.beat.lease import Lease
from scheduler.models import SchedulePolicy
from scheduler.presence import flag_unserved
from tests.support.schedules import every_minute_heartbeat_entry

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry():
    return every_minute_heartbeat_entry({"heartbeat": ("heartbeat", 30, 45)})


def test_a_schedule_whose_job_no_live_worker_serves_is_flagged(entry):
    record_worker("w1@host", ["default"], ["heartbeat"])  # alive, but not on queue 'heartbeat'

    assert flag_unserved([entry]) == 1

    problem = SchedulePolicy.objects.get(task_id=entry.task_id).problem
    assert "no live worker serves job 'heartbeat' on queue 'heartbeat'" in problem


def test_the_flag_clears_when_a_worker_serves_it(entry):
    flag_unserved([entry])
    record_worker("w2@host", ["heartbeat"], ["heartbeat"])

    assert flag_unserved([entry]) == 0
    assert SchedulePolicy.objects.get(task_id=entry.task_id).problem == ""


def test_a_worker_not_seen_lately_does_not_count(entry):
    record_worker("w3@host", ["heartbeat"], ["heartbeat"])
    WorkerPresence.objects.update(last_seen_at=timezone.now() - timedelta(minutes=5))

    assert flag_unserved([entry]) == 1


def test_beatstatus_names_the_leader_and_the_next_slots(capsys):
    lease = Lease(ttl=10, holder="beat-host:42:abc")
    lease.acquire_or_renew()
    lease.acquire_or_renew(
        status={
            "schedules": 3,
            "change_cursor": 0,
            "next_due": [{"slot": "2026-11-21T12:01:00+00:00", "schedule": "hb", "job": "heartbeat"}],
        }
    )

    call_command("beatstatus", "--check")

    out = capsys.readouterr().out
    assert "leader: beat-host:42:abc (token 1)" in out
    assert "2026-11-21T12:01:00+00:00  hb  (heartbeat)" in out


def test_beatstatus_check_fails_when_no_beat_leads():
    with pytest.raises(CommandError, match="no beat leads"):
        call_command("beatstatus", "--check")


def test_flagging_many_schedules_takes_a_few_statements_not_one_each(entry, django_assert_max_num_queries):
    from dataclasses import replace

    entries = [replace(entry, task_id=entry.task_id)]
    interval = IntervalSchedule.objects.get(every=1, period=IntervalSchedule.MINUTES)
    for i in range(60):
        task = PeriodicTask.objects.create(name=f"hb{i}", task="heartbeat", interval=interval)
        entries.append(replace(entry, task_id=task.pk))

    with django_assert_max_num_queries(3):  # live workers, current flags, one grouped UPDATE
        assert flag_unserved(entries) == 61

    assert SchedulePolicy.objects.exclude(problem="").count() == 61
