"""Seed N schedules with ``bulk_create``: half crontab (varied expressions and zones), half interval.

Call with Django set up on the seed database. Nothing in a seeded table is due
for ``quiet_window`` after ``now`` (cron candidates that would fire sooner are
redrawn; interval schedules are phased past it), so every tick the bench
measures before the burst is an idle one for both schedulers. 10 % of the
schedules are the burst: interval schedules on their own queue that the
measuring process re-anchors to one shared second.

Signals do not fire on ``bulk_create``: our ``SchedulePolicy`` rows are
bulk-created too (the change log does not matter for a load).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from common import BURST_EVERY, BURST_QUEUE, IDLE_QUEUE
from django.db import connection, transaction

ZONES = [
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Africa/Cairo",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
]

# (every, period) of the non-burst interval schedules.
INTERVALS = [
    (45, "minutes"),
    (90, "minutes"),
    (1, "hours"),
    (2, "hours"),
    (3, "hours"),
    (6, "hours"),
    (12, "hours"),
    (1, "days"),
    (7, "days"),
]
# Interval rows the edit step switches schedules to (not used by the seed).
EDIT_INTERVALS = [(8, "days"), (9, "days")]  # longer than any seeded period: theirs does not fire at once
UNIT = {"minutes": timedelta(minutes=1), "hours": timedelta(hours=1), "days": timedelta(days=1)}


def random_cron(rng: random.Random) -> tuple[str, str, str, str, str]:
    """(minute, hour, day_of_month, month_of_year, day_of_week); never both day fields restricted
    (croniter ORs them, Celery's crontab ANDs them: keep the two schedulers comparable)."""
    m = rng.randrange(0, 60, 5)
    h = rng.randrange(24)
    kind = rng.randrange(11)
    if kind == 0:
        return (str(m), str(h), "*", "*", "*")
    if kind == 1:
        return (str(m), str(h), "*", "*", "1-5")
    if kind == 2:
        return (str(m), str(h), "*", "*", str(rng.randrange(7)))
    if kind == 3:
        return (str(m), str(h), str(rng.randrange(1, 29)), "*", "*")
    if kind == 4:
        return (str(m), f"{h},{(h + 12) % 24}", "*", "*", "*")
    if kind == 5:
        return (str(m), f"*/{rng.choice([2, 3, 4, 6, 8, 12])}", "*", "*", "*")
    if kind == 6:
        return (str(m), f"{h}-{min(h + 8, 23)}", "*", "*", "1-5")
    if kind == 7:
        return ("*/15", str(h), "*", "*", "*")
    if kind == 8:
        return (str(m), str(h), "1", "*/3", "*")
    if kind == 9:
        return (str(m), str(h), "*", "*", "0,6")
    return (str(m), "0", "1", "1", "*")


def truncate_all() -> None:
    from django.apps import apps

    labels = (
        "django_celery_beat.PeriodicTask",
        "django_celery_beat.CrontabSchedule",
        "django_celery_beat.IntervalSchedule",
        "django_celery_beat.ClockedSchedule",
        "django_celery_beat.SolarSchedule",
        "django_celery_beat.PeriodicTasks",
        "scheduler.SchedulePolicy",
        "scheduler.ScheduleChange",
        "scheduler.BeatLease",
        "scheduler.WorkerPresence",
        "jobs.JobRun",
    )
    tables = []
    for label in labels:
        try:
            tables.append(apps.get_model(label)._meta.db_table)
        except LookupError:
            pass  # a model this version of the code does not have
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def seed(
    n: int, now: datetime, quiet_window: timedelta, cron_rows: int = 1000, rng_seed: int = 20240601
) -> dict:
    """Replace every schedule by ``n`` new ones; return counts for the report."""
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    from jobs.catalog import publish_catalog
    from scheduler.beat.slots import CronSpec, next_cron_slot
    from scheduler.models import SchedulePolicy

    rng = random.Random(rng_seed + n)
    n_cron = n // 2
    n_interval = n - n_cron
    n_burst = max(1, n // 10)
    assert n_burst <= n_interval

    truncate_all()
    publish_catalog(worker="bench")
    with transaction.atomic():
        # A pool of distinct crontab rows (expression, zone), shared by the cron schedules as
        # get_or_create would share them; an (expression, zone) that would fire inside the
        # quiet window is redrawn.
        crons: dict[tuple, CrontabSchedule] = {}
        rejected = 0
        pool_size = min(n_cron, cron_rows)
        while len(crons) < pool_size:
            fields = random_cron(rng)
            zone = rng.choice(ZONES)
            key = (*fields, zone)
            if key in crons:
                continue
            first = next_cron_slot(CronSpec(" ".join(fields), zone), now)
            if first is None or first - now < quiet_window:
                rejected += 1
                continue
            minute, hour, dom, month, dow = fields
            crons[key] = CrontabSchedule(
                minute=minute,
                hour=hour,
                day_of_month=dom,
                month_of_year=month,
                day_of_week=dow,
                timezone=zone,
            )
        CrontabSchedule.objects.bulk_create(list(crons.values()), batch_size=5000)
        pool = list(crons)
        cron_keys = pool + [rng.choice(pool) for _ in range(n_cron - len(pool))]
        rng.shuffle(cron_keys)

        periods = {}
        for every, period in [*INTERVALS, BURST_EVERY, *EDIT_INTERVALS]:
            periods[(every, period)] = IntervalSchedule.objects.create(every=every, period=period)

        tasks: list[PeriodicTask] = []
        anchors: list[datetime] = []
        for i, key in enumerate(cron_keys):
            tasks.append(
                PeriodicTask(
                    name=f"bench-cron-{i}",
                    task="heartbeat",
                    crontab=crons[key],
                    queue=IDLE_QUEUE,
                    last_run_at=now,
                    enabled=True,
                )
            )
            anchors.append(now)
        for i in range(n_interval):
            burst = i < n_burst
            every, period = BURST_EVERY if burst else rng.choice(INTERVALS)
            step = every * UNIT[period]
            # Next slot (anchor + every) falls in [now + quiet_window, now + every).
            offset = timedelta(seconds=rng.uniform(quiet_window.total_seconds(), step.total_seconds()))
            anchor = (now - step + offset).replace(microsecond=0)
            tasks.append(
                PeriodicTask(
                    name=f"bench-{'burst' if burst else 'int'}-{i}",
                    task="heartbeat",
                    interval=periods[(every, period)],
                    queue=BURST_QUEUE if burst else IDLE_QUEUE,
                    last_run_at=anchor,
                    enabled=True,
                )
            )
            anchors.append(anchor)
        PeriodicTask.objects.bulk_create(tasks, batch_size=5000)
        SchedulePolicy.objects.bulk_create(
            [SchedulePolicy(task_id=t.pk, anchor=a) for t, a in zip(tasks, anchors, strict=True)],
            batch_size=5000,
        )
    register_live_worker([IDLE_QUEUE, BURST_QUEUE], ["heartbeat"])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {
        "schedules": n,
        "crontab": n_cron,
        "interval": n_interval,
        "burst": n_burst,
        "distinct_crontab_rows": len(crons),
        "cron_redraws": rejected,
        "seeded_at": now.isoformat(),
    }


def register_live_worker(queues: list[str], jobs: list[str]) -> bool:
    """A worker presence row serving the bench's queues, fresh for a day.

    Our engine checks every minute that a live worker serves each schedule's
    (queue, job) and flags those nobody serves; the bench has no worker, and a
    production beat has one, so one is registered. Without it the first tick
    flags every schedule (see the report). Returns False if the model is absent.
    """
    try:
        from jobs.models import WorkerPresence
    except ImportError:
        return False
    WorkerPresence.objects.update_or_create(
        hostname="bench-worker@127.0.0.1",
        defaults={"queues": queues, "jobs": jobs, "last_seen_at": datetime.now(UTC) + timedelta(days=1)},
    )
    return True


def create_alike_schedules(
    n: int,
    prefix: str,
    job: str,
    queue: str,
    now: datetime,
    anchor: datetime,
    policy_queue: str = "",
    **schedule,
) -> None:
    """``n`` schedules of ``job`` on one ``crontab=`` or ``interval=`` row, with their policies.

    In bulk, so no signal runs: no validation, no change-log rows (the
    seeded beat loads everything at start anyway).
    """
    from django_celery_beat.models import PeriodicTask

    from scheduler.models import SchedulePolicy

    tasks = PeriodicTask.objects.bulk_create(
        [
            PeriodicTask(
                name=f"{prefix}-{i}", task=job, queue=queue, last_run_at=now, enabled=True, **schedule
            )
            for i in range(n)
        ],
        batch_size=5000,
    )
    SchedulePolicy.objects.bulk_create(
        [SchedulePolicy(task_id=t.pk, anchor=anchor, queue=policy_queue) for t in tasks], batch_size=5000
    )


def seed_lateness(n: int, queue: str) -> None:
    """``n`` schedules ``* * * * *`` (UTC) of the probe job, for the lateness run."""
    from django_celery_beat.models import CrontabSchedule

    from jobs.catalog import publish_catalog
    from jobs.models import JobDefinition

    truncate_all()
    publish_catalog(worker="bench")
    now = datetime.now(UTC)
    # The probe is a job of the catalog, like every scheduled task: the platform's
    # pre_save validation (which DatabaseScheduler's sync() also triggers) requires it.
    JobDefinition.objects.update_or_create(
        name="bench.probe",
        defaults={
            "queue": queue,
            "parameters": [],
            "soft_time_limit": 30,
            "hard_time_limit": 45,
            "doc": "bench: records its start time",
            "published_by": "bench",
            "last_published_at": now,
        },
    )
    with transaction.atomic():
        every_minute = CrontabSchedule.objects.create(
            minute="*", hour="*", day_of_month="*", month_of_year="*", day_of_week="*", timezone="UTC"
        )
        create_alike_schedules(n, "bench-late", "bench.probe", queue, now, now, crontab=every_minute)


def seed_every(n: int, seconds: int, queue: str) -> None:
    """``n`` heartbeat schedules every ``seconds`` s on ``queue``, for the takeover run.

    Slots lie on the epoch grid (anchor = now floored to ``seconds``), so a
    slot is on time iff its epoch is a multiple of ``seconds``.
    """
    from django_celery_beat.models import IntervalSchedule

    from jobs.catalog import publish_catalog

    truncate_all()
    publish_catalog(worker="bench")
    now = datetime.now(UTC)
    anchor = datetime.fromtimestamp(now.timestamp() // seconds * seconds, UTC)
    with transaction.atomic():
        every = IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)
        create_alike_schedules(
            n, "bench-every", "heartbeat", queue, now, anchor, policy_queue=queue, interval=every
        )
    register_live_worker([queue], ["heartbeat"])


# Runs for every column the ORM would fill (raw SQL bypasses Python defaults).
INSERT_RUNS = """
INSERT INTO jobs_jobrun (
    id, schedule_id, schedule_name, origin, requested_by, job, args, kwargs, queue,
    scheduled_for, enqueued_at, started_at, finished_at, status, attempt, worker,
    error_type, error_message, traceback, lateness_ms, duration_ms, created_at
)
SELECT gen_random_uuid(), t.id, t.name, 'beat', '', 'heartbeat', '[]', '{}', 'bench_idle',
       s.at - interval '2 seconds', s.at - interval '2 seconds', s.at - interval '1 second',
       CASE WHEN %(finished)s THEN s.at END,
       CASE WHEN NOT %(finished)s THEN %(status)s
            WHEN random() < %(failed)s THEN 'failed' ELSE 'succeeded' END,
       1, 'bench-worker@127.0.0.1',
       '', '', '', 1000, CASE WHEN %(finished)s THEN 1000 END, s.at
FROM (
    SELECT %(since)s::timestamptz + (%(until)s::timestamptz - %(since)s::timestamptz) * random() AS at,
           1 + floor(random() * %(schedules)s)::int AS k
    FROM generate_series(1, %(n)s)
) s
JOIN (SELECT id, name, row_number() OVER (ORDER BY id) AS k FROM django_celery_beat_periodictask) t
  ON t.k = s.k
ON CONFLICT DO NOTHING
"""


def insert_runs(
    n: int, since: datetime, until: datetime, schedules: int, status: str = "", failed_share: float = 0.0
) -> None:
    """``n`` heartbeat runs of random seeded schedules, their slots spread over [since, until).

    Finished (``succeeded``, ``failed_share`` of them ``failed``) unless
    ``status`` names a state (``running``, ``queued``). One INSERT … SELECT.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            INSERT_RUNS,
            {
                "n": n,
                "since": since,
                "until": until,
                "schedules": schedules,
                "finished": not status,
                "status": status or "succeeded",
                "failed": failed_share,
            },
        )


def seed_schedules_and_a_week_of_runs(schedules: int, runs: int) -> datetime:
    """``seed(schedules)`` (quiet for 40 minutes), then ``runs`` finished runs over the last 7 days
    (0.2 % failed), inserted 200,000 at a time; returns the "now" they were seeded at.

    The shape the page, API and metrics benches measure at (100,000 schedules,
    1,000,000 runs).
    """
    now = datetime.now(UTC)
    seed(schedules, now, quiet_window=timedelta(minutes=40))
    step = 200_000
    for start in range(0, runs, step):
        insert_runs(min(step, runs - start), now - timedelta(days=7), now, schedules, failed_share=0.002)
    return now
