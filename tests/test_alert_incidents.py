"""The incident and health transitions (``alerts.incidents``) and mutes (``alerts.maintenance``).

Each transition is one guarded write that says whether it won: a second
open of the same scope, a second resolve, a stale reminder, a flip to the
state a schedule is already in all lose and change nothing; what a winner
pages is queued in its transaction, once. Mutes refuse bad input and end
by themselves.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from alerts import incidents
from alerts.incidents import NewIncident, schedule_scope
from alerts.maintenance import MaintenanceError, active_mute_for, active_mutes, end_mute, mute
from alerts.models import Channel, Flip, Health, Incident, Notification, ScheduleHealth
from jobs.catalog import publish_catalog
from tests.support.threads import at_once

pytestmark = pytest.mark.django_db


@pytest.fixture
def schedule(db) -> PeriodicTask:
    publish_catalog(worker="tests")
    Channel.objects.get_or_create(
        name="on-call", defaults={"kind": "webhook", "target": "http://127.0.0.1:9/", "is_default": True}
    )
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name="nightly", task="heartbeat", interval=every)


def new(schedule, **fields) -> NewIncident:
    return NewIncident(
        scope=schedule_scope(schedule.pk),
        kind="failed",
        summary="nightly: failed",
        schedule_id=schedule.pk,
        schedule_name=schedule.name,
        job=schedule.task,
        remind_every=60,
        **fields,
    )


def test_one_open_incident_per_scope_and_the_opener_pages_once(schedule):
    now = timezone.now()
    first = incidents.open_incident(new(schedule), now=now)
    assert first is not None and first.alerted_at == now
    assert first.next_reminder_at == now + timedelta(seconds=60)
    assert incidents.open_incident(new(schedule), now=now) is None
    assert Incident.objects.count() == 1
    assert Notification.objects.filter(event="trigger").count() == 1
    assert ScheduleHealth.objects.get(schedule=schedule).state == Health.DOWN
    assert Flip.objects.get().incident_id == first.pk


def test_a_quiet_incident_pages_nothing_until_escalated_once(schedule):
    now = timezone.now()
    quiet = incidents.open_incident(new(schedule, quiet=True), now=now)
    assert quiet is not None and quiet.alerted_at is None and quiet.next_reminder_at is None
    assert not Notification.objects.exists()
    assert incidents.escalate(quiet, now=now, remind_every=60, reason="mute over")
    assert not incidents.escalate(quiet, now=now, remind_every=60, reason="again")
    assert Notification.objects.filter(event="trigger").count() == 1


def test_reminders_are_numbered_and_each_is_sent_once(schedule):
    now = timezone.now()
    incident = incidents.open_incident(new(schedule), now=now)
    assert incident is not None
    assert not incidents.send_reminder(incident, now=now + timedelta(seconds=30), remind_every=60), "not due"
    later = now + timedelta(seconds=61)
    stale = Incident.objects.get(pk=incident.pk)
    assert incidents.send_reminder(incident, now=later, remind_every=60)
    assert not incidents.send_reminder(stale, now=later, remind_every=60), "reminder 1 again"
    assert incidents.send_reminder(incident, now=later + timedelta(seconds=60), remind_every=60)
    assert list(
        Notification.objects.filter(event="remind").values_list("sequence", flat=True).order_by("sequence")
    ) == [
        1,
        2,
    ]


def test_resolve_wins_once_pages_recovery_only_for_a_paged_incident(schedule):
    now = timezone.now()
    incident = incidents.open_incident(new(schedule), now=now)
    assert incident is not None
    stale = Incident.objects.get(pk=incident.pk)
    assert incidents.resolve(incident, now=now, resolution="recovered")
    assert not incidents.resolve(stale, now=now, resolution="recovered again")
    assert Notification.objects.filter(event="resolve").count() == 1
    assert ScheduleHealth.objects.get(schedule=schedule).state == Health.UP

    quiet = incidents.open_incident(new(schedule, quiet=True), now=now)
    assert quiet is not None and incidents.resolve(quiet, now=now, resolution="recovered")
    assert Notification.objects.filter(event="resolve").count() == 1


def test_a_resolve_racing_an_escalation_loses_and_never_skips_the_recovery_page(schedule):
    now = timezone.now()
    quiet = incidents.open_incident(new(schedule, quiet=True), now=now)
    assert quiet is not None
    read_before = Incident.objects.get(pk=quiet.pk)
    assert incidents.escalate(quiet, now=now, remind_every=0, reason="still failing")
    assert not incidents.resolve(read_before, now=now, resolution="quietly"), "it read quiet=True"
    assert incidents.resolve(Incident.objects.get(pk=quiet.pk), now=now, resolution="recovered")
    assert Notification.objects.filter(event="resolve").count() == 1


def test_add_condition_takes_each_condition_once(schedule):
    incident = incidents.open_incident(new(schedule), now=timezone.now())
    assert incident is not None
    stale = Incident.objects.get(pk=incident.pk)
    assert incidents.add_condition(incident, {"key": "lost:1", "kind": "lost"}, now=timezone.now())
    assert not incidents.add_condition(stale, {"key": "lost:1", "kind": "lost"}, now=timezone.now())
    assert not incidents.add_condition(incident, {"key": "lost:1", "kind": "lost"}, now=timezone.now())
    incident.refresh_from_db()
    assert [c["key"] for c in incident.details["conditions"]] == ["lost:1"]


def test_health_flips_only_on_a_change_and_a_healthy_schedule_has_no_row(schedule):
    now = timezone.now()
    assert not incidents.set_health(schedule.pk, Health.UP, now=now, reason="fine")
    assert not ScheduleHealth.objects.exists()
    assert incidents.set_health(schedule.pk, Health.LATE, now=now, reason="late")
    assert not incidents.set_health(schedule.pk, Health.LATE, now=now, reason="late again")
    assert incidents.set_health(schedule.pk, Health.DOWN, now=now, reason="failed")
    assert list(Flip.objects.order_by("id").values_list("old_state", "new_state")) == [
        ("up", "late"),
        ("late", "down"),
    ]


def test_quiet_incidents_open_in_a_batch_skipping_scopes_already_open(schedule):
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    others = [PeriodicTask.objects.create(name=f"o{i}", task="heartbeat", interval=every) for i in range(3)]
    now = timezone.now()
    assert incidents.open_incident(new(schedule), now=now) is not None
    batch = [new(s, quiet=True) for s in [schedule, *others]]
    later = now + timedelta(seconds=1)
    opened = incidents.open_quiet_incidents(batch, now=later)
    assert sorted(i.schedule_id for i in opened) == sorted(s.pk for s in others)
    assert all(i.quiet and i.alerted_at is None for i in opened)
    assert incidents.open_quiet_incidents(batch, now=later + timedelta(seconds=1)) == []
    assert Notification.objects.count() == 1, "only the first, paged one"
    assert ScheduleHealth.objects.filter(state=Health.DOWN).count() == 4
    assert Flip.objects.count() == 4


def test_quiet_incidents_resolve_in_a_batch_but_not_one_escalated_meanwhile(schedule):
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    others = [PeriodicTask.objects.create(name=f"o{i}", task="heartbeat", interval=every) for i in range(3)]
    now = timezone.now()
    opened = incidents.open_quiet_incidents([new(s, quiet=True) for s in others], now=now)
    escalated = Incident.objects.get(pk=opened[0].pk)
    assert incidents.escalate(escalated, now=now, remind_every=0, reason="failing again")
    resolved = incidents.resolve_quietly_many([(i, "recovered") for i in opened], now=now)
    assert sorted(i.pk for i in resolved) == sorted(i.pk for i in opened[1:])
    assert Incident.objects.filter(resolved_at__isnull=True).get().pk == escalated.pk
    assert incidents.resolve_quietly_many([(i, "recovered") for i in opened], now=now) == []
    assert Notification.objects.filter(event="resolve").count() == 0
    assert ScheduleHealth.objects.filter(state=Health.UP).count() == 2


@pytest.mark.django_db(transaction=True)
def test_threads_opening_the_same_outage_get_one_incident_and_one_page():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL")
    publish_catalog(worker="tests")
    Channel.objects.create(name="on-call", kind="webhook", target="http://127.0.0.1:9/", is_default=True)
    every, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    schedule = PeriodicTask.objects.create(name="raced", task="heartbeat", interval=every)

    opened = at_once(*[lambda: incidents.open_incident(new(schedule), now=timezone.now())] * 8)  # none raises
    assert len([i for i in opened if i is not None]) == 1
    assert Incident.objects.count() == 1 and Notification.objects.count() == 1 and Flip.objects.count() == 1


# --- maintenance --------------------------------------------------------------------------


def test_mute_refuses_bad_input_and_writes_nothing(schedule):
    soon = timezone.now() + timedelta(hours=1)
    bad = [
        {"note": "x", "ends_at": soon},  # no target
        {"note": "x", "ends_at": soon, "schedule": schedule, "everything": True},  # two
        {"note": "  ", "ends_at": soon, "everything": True},
        {"note": "x", "ends_at": timezone.now() - timedelta(seconds=1), "everything": True},
        {"note": "x", "ends_at": soon.replace(tzinfo=None), "everything": True},
        {"note": "x", "ends_at": soon, "schedule": 987654},
    ]
    for arguments in bad:
        with pytest.raises(MaintenanceError):
            mute(**arguments)
    assert active_mutes().until() is None


def test_mutes_cover_their_target_until_they_end_by_themselves(schedule):
    now = timezone.now()
    by_schedule = mute(
        schedule=schedule, note="migration", ends_at=now + timedelta(minutes=10), starts_at=now
    )
    assert active_mute_for(schedule, now=now) == by_schedule
    assert active_mute_for(schedule.pk + 1, now=now) is None
    assert active_mute_for(schedule, now=now + timedelta(minutes=10)) is None, "ended by itself"
    mute(job="heartbeat", note="known", ends_at=now + timedelta(minutes=5), starts_at=now)
    assert active_mute_for(job="heartbeat", now=now) is not None
    everything = mute(everything=True, note="all", ends_at=now + timedelta(minutes=20), starts_at=now)
    mutes = active_mutes(now)
    assert mutes.until(12345, "other") == everything.ends_at
    assert end_mute(everything, now=now) and not end_mute(everything, now=now)
    assert active_mutes(now).until(12345, "other") is None
    assert active_mutes(now).until(schedule.pk) == by_schedule.ends_at
