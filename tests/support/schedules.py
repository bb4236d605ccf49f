"""Many schedules at once, and checks that their history has no holes."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.models import JobRun
from scheduler.models import SchedulePolicy


def make_interval_schedules(
    count: int, every_seconds: int, anchor: datetime, queue: str, prefix: str = "s", catchup: str = "latest"
) -> list[int]:
    """``count`` heartbeat schedules every ``every_seconds``, slots at anchor + k × every.

    Bulk-created (no signals), so start beats after this. Their messages go to
    ``queue``, which no test worker consumes, so the queue shows what was sent.
    """
    interval, _ = IntervalSchedule.objects.get_or_create(every=every_seconds, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.bulk_create(
        [PeriodicTask(name=f"{prefix}-{i}", task="heartbeat", interval=interval) for i in range(count)],
        batch_size=1000,
    )
    ids = list(PeriodicTask.objects.filter(name__startswith=f"{prefix}-").values_list("pk", flat=True))
    now = timezone.now()
    SchedulePolicy.objects.bulk_create(
        [
            SchedulePolicy(task_id=pk, anchor=anchor, queue=queue, slug=f"{prefix}{pk}", catchup=catchup)
            for pk in ids
        ],
        batch_size=1000,
    )
    # Created at the anchor (when it is past): on a busy machine the seeding
    # above can end after the first slot the caller counts on, and a slot
    # before a schedule's creation is rightly never due.
    SchedulePolicy.objects.filter(task_id__in=ids).update(created_at=min(now, anchor))
    return ids


def every_minute_heartbeat_entry(defaults: dict[str, tuple[str, int, int]] | None = None):
    """A new heartbeat task every minute and beat's ``Entry`` for it (``defaults``: the catalog's if None)."""
    from jobs.catalog import publish_catalog
    from scheduler.beat.entries import entry_from_row, fetch_rows, job_defaults

    publish_catalog(worker="tests")
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    task = PeriodicTask.objects.create(name="hb", task="heartbeat", interval=every_minute)
    (row,) = fetch_rows([task.pk])
    return entry_from_row(row, defaults or job_defaults())


def slots_by_schedule(task_ids) -> dict[int, list[datetime]]:
    slots: dict[int, list[datetime]] = defaultdict(list)
    for schedule_id, slot in JobRun.objects.filter(schedule_id__in=task_ids).values_list(
        "schedule_id", "scheduled_for"
    ):
        slots[schedule_id].append(slot)
    return {k: sorted(v) for k, v in slots.items()}


def assert_no_holes(task_ids, every_seconds: int, first: datetime, last: datetime) -> None:
    """Every schedule has exactly one run for each slot in [first, last]."""
    step = timedelta(seconds=every_seconds)
    expected = []
    slot = first
    while slot <= last:
        expected.append(slot)
        slot += step
    found = {
        tid: [s for s in slots if first <= s <= last] for tid, slots in slots_by_schedule(task_ids).items()
    }
    wrong = {tid: found.get(tid, []) for tid in task_ids if found.get(tid, []) != expected}
    assert not wrong, (
        f"{len(wrong)} of {len(task_ids)} schedules do not have exactly the slots "
        f"{expected[0]}..{expected[-1]}; e.g. {next(iter(wrong.items()))}"
    )
