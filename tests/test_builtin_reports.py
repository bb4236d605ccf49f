"""The schedule audit and the alert digest on real rows.

Audit: one schedule per problem, each found, healthy ones not listed.
Digest: incidents opened and resolved through ``alerts.incidents``' own writers.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from alerts import incidents
from alerts.models import IncidentKind
from jobs.framework import JOB_SPECS
from jobs.models import JobDefinition, JobRun, RunStatus, WorkerPresence
from reports.builtin.alert_digest import COLUMNS as DIGEST_COLUMNS
from reports.builtin.alert_digest import alert_digest_rows
from reports.builtin.run_summary import COLUMNS as RUN_SUMMARY_COLUMNS
from reports.builtin.schedule_audit import (
    COLUMNS,
    LIMITS_INVALID,
    LIMITS_MISSING,
    NEVER_RAN,
    PAUSE_ENDED,
    RARE,
    UNSERVED,
    UNUSABLE,
    schedule_audit_rows,
)
from reports.definitions import REPORTS
from reports.framework import run_report
from reports.models import ReportFile
from reports.storage import reports_storage
from scheduler.models import SchedulePolicy

pytestmark = pytest.mark.django_db


@pytest.fixture
def live_worker(catalog):
    """A live worker serving every job of the catalog on every catalog queue."""
    now = timezone.now()
    definitions = JobDefinition.objects.values_list("name", "queue")
    WorkerPresence.objects.create(
        hostname="audit-worker@test",
        queues=sorted({queue for _, queue in definitions}),
        jobs=sorted({name for name, _ in definitions}),
        last_seen_at=now,
        started_at=now,
    )


def hourly() -> IntervalSchedule:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return every


def make_schedule(name: str, **fields) -> PeriodicTask:
    """A schedule saved through the ORM (validated, its policy created), with one run unless told."""
    fields.setdefault("task", "heartbeat")
    if "crontab" not in fields:
        fields.setdefault("interval", hourly())
    return PeriodicTask.objects.create(name=name, **fields)


def with_a_run(task: PeriodicTask) -> PeriodicTask:
    JobRun.objects.create(
        job=task.task,
        schedule=task,
        status=RunStatus.SUCCEEDED,
        scheduled_for=timezone.now() - timedelta(hours=1),
    )
    return task


def audit(now: datetime | None = None) -> dict[str, list[dict]]:
    """The audit's rows by schedule name."""
    found: dict[str, list[dict]] = {}
    for row in schedule_audit_rows(now):
        record = dict(zip(COLUMNS, row, strict=True))
        found.setdefault(record["schedule"], []).append(record)
    return found


def problems(found: dict[str, list[dict]], name: str) -> list[str]:
    return [row["problem"] for row in found.get(name, [])]


def test_each_problem_is_found_on_its_schedule_and_healthy_ones_are_not_listed(live_worker):
    now = timezone.now()
    healthy = with_a_run(make_schedule("healthy"))
    with_a_run(make_schedule("healthy-cron", crontab=CrontabSchedule.objects.create(minute="0", hour="7")))

    never_ran = make_schedule("never-ran")
    SchedulePolicy.objects.filter(task=never_ran).update(created_at=now - timedelta(days=2))

    pause_ended = with_a_run(make_schedule("pause-ended"))
    SchedulePolicy.objects.filter(task=pause_ended).update(
        paused_at=now - timedelta(hours=3),
        paused_until=now - timedelta(hours=1),
        pause_note="deploy",
        paused_by="bob",
    )
    still_paused = with_a_run(make_schedule("still-paused"))  # a pause that holds is not a problem
    SchedulePolicy.objects.filter(task=still_paused).update(
        paused_at=now - timedelta(hours=3), paused_until=now + timedelta(hours=1), pause_note="freeze"
    )

    leap_day = with_a_run(
        make_schedule(
            "leap-day",
            crontab=CrontabSchedule.objects.create(
                minute="0", hour="0", day_of_month="29", month_of_year="2"
            ),
        )
    )

    every_400_days, _ = IntervalSchedule.objects.get_or_create(every=400, period=IntervalSchedule.DAYS)
    with_a_run(make_schedule("every-400-days", interval=every_400_days))

    unserved = with_a_run(make_schedule("unserved"))
    SchedulePolicy.objects.filter(task=unserved).update(queue="audit-nowhere")

    inverted = with_a_run(make_schedule("inverted"))
    # Written behind validation's back (raw updates are how such rows appear).
    SchedulePolicy.objects.filter(task=inverted).update(soft_time_limit=100, hard_time_limit=50)

    (unknown,) = PeriodicTask.objects.bulk_create(
        [PeriodicTask(name="unknown-job", task="no.such.job", interval=hourly())]
    )
    SchedulePolicy.objects.create(task=unknown)
    with_a_run(unknown)

    zero_deadline = with_a_run(make_schedule("zero-deadline"))
    SchedulePolicy.objects.filter(task=zero_deadline).update(starting_deadline=0)

    found = audit()

    assert problems(found, "never-ran") == [NEVER_RAN]
    assert "no run recorded" in found["never-ran"][0]["detail"]
    assert problems(found, "pause-ended") == [PAUSE_ENDED]
    assert "paused by bob until" in found["pause-ended"][0]["detail"]
    assert problems(found, "leap-day") == [RARE]
    assert "fires 1 time(s) in four years" in found["leap-day"][0]["detail"]
    assert problems(found, "every-400-days") == [RARE]
    assert found["every-400-days"][0]["detail"] == "every 400 days: less than once a year"
    assert problems(found, "unserved") == [UNSERVED]
    assert "'audit-nowhere'" in found["unserved"][0]["detail"]
    assert problems(found, "inverted") == [LIMITS_INVALID]
    assert "must be longer than the soft limit" in found["inverted"][0]["detail"]
    assert problems(found, "unknown-job") == [LIMITS_MISSING]  # not also "cannot evaluate": one reason, once
    assert problems(found, "zero-deadline") == [UNUSABLE]
    assert "starting deadline of 0 s" in found["zero-deadline"][0]["detail"]
    listed = set(found)
    assert not listed & {"healthy", "healthy-cron", "still-paused"}
    assert found["leap-day"][0]["schedule_id"] == leap_day.pk and found["leap-day"][0]["job"] == "heartbeat"
    assert healthy.pk not in {row["schedule_id"] for rows in found.values() for row in rows}


def test_a_young_schedule_and_one_whose_first_slot_is_not_due_yet_did_not_fail_to_run(live_worker):
    now = timezone.now()
    make_schedule("brand-new")  # created just now: not a day old
    # Once a year, about half a year from now: two days old, and no slot was due since.
    target = now + timedelta(days=180)
    yearly = make_schedule(
        "yearly",
        crontab=CrontabSchedule.objects.create(
            minute="0", hour="12", day_of_month=str(min(target.day, 28)), month_of_year=str(target.month)
        ),
    )
    SchedulePolicy.objects.filter(task=yearly).update(created_at=now - timedelta(days=2))
    overdue = make_schedule("overdue")  # the same age, hourly: it should have run
    SchedulePolicy.objects.filter(task=overdue).update(created_at=now - timedelta(days=2))

    found = audit()

    assert "brand-new" not in found
    assert "yearly" not in found  # and four slots in four years: not rare either
    assert problems(found, "overdue") == [NEVER_RAN]


def test_a_disabled_schedule_is_not_audited_but_its_stale_pause_is(live_worker):
    now = timezone.now()
    off = make_schedule("disabled", enabled=False)
    SchedulePolicy.objects.filter(task=off).update(
        created_at=now - timedelta(days=5),
        queue="audit-nowhere",
        paused_at=now - timedelta(days=2),
        paused_until=now - timedelta(days=1),
    )

    assert problems(audit(), "disabled") == [PAUSE_ENDED]


def test_no_live_worker_at_all_flags_every_schedule(catalog):
    with_a_run(make_schedule("lonely"))
    # An hour on, no worker seen now is live any more (the suite's real worker may be, now).
    later = timezone.now() + timedelta(hours=1)

    assert problems(audit(later), "lonely") == [UNSERVED]


# --- alert digest ------------------------------------------------------------------------------

DIGEST_START = datetime(2020, 6, 1, 0, 0, tzinfo=UTC)
DIGEST_END = DIGEST_START + timedelta(days=1)


def opened(scope: str, kind: str, at_hours: float, *, schedule: PeriodicTask | None = None, quiet=False):
    """An incident opened ``at_hours`` after the digest window's start, through the detector's writer."""
    incident = incidents.open_incident(
        incidents.NewIncident(
            scope=scope,
            kind=kind,
            summary=f"{kind} on {scope}",
            schedule_id=schedule.pk if schedule else None,
            schedule_name=schedule.name if schedule else "",
            job=schedule.task if schedule else "",
            queue="" if schedule else scope.removeprefix("queue:"),
            quiet=quiet,
        ),
        now=DIGEST_START + timedelta(hours=at_hours),
    )
    assert incident is not None
    return incident


def resolved(incident, at_hours: float) -> None:
    assert incidents.resolve(incident, now=DIGEST_START + timedelta(hours=at_hours), resolution="recovered")


def digest(start=DIGEST_START, end=DIGEST_END) -> dict[tuple[str, str], dict]:
    return {
        (record["scope"], record["kind"]): record
        for record in (dict(zip(DIGEST_COLUMNS, row, strict=True)) for row in alert_digest_rows(start, end))
    }


def test_the_digest_counts_incidents_opened_and_resolved_and_times_their_resolution(catalog):
    nightly = make_schedule("nightly")
    scope = incidents.schedule_scope(nightly.pk)
    # Three failures of one schedule in the window, resolved after 1 h, 2 h and 6 h: median 2 h.
    for at, took in ((1, 1), (4, 2), (10, 6)):
        resolved(opened(scope, IncidentKind.FAILED, at, schedule=nightly), at + took)
    # One more that opens in the window and is still open at its end (resolved the next day).
    late = opened(scope, IncidentKind.FAILED, 20, schedule=nightly)
    resolved(late, 30)
    # Opened the day before, resolved in the window after 5 h: resolved here, not opened here.
    resolved(opened("queue:reports", IncidentKind.NO_WORKER, -3), 2)
    # Opened before and never resolved: open at the window's end, not opened in it.
    opened("beat", IncidentKind.BEAT_DOWN, -30)
    # Quiet (in maintenance): opened, not paged.
    opened("queue:bulk", IncidentKind.NO_WORKER, 5, quiet=True)
    # Outside the window entirely: resolved before it starts, or opened after it ends.
    resolved(opened("queue:old", IncidentKind.NO_WORKER, -10), -8)
    opened("queue:later", IncidentKind.NO_WORKER, 25)

    rows = digest()

    failed = rows[(scope, IncidentKind.FAILED)]
    assert (failed["opened"], failed["paged"], failed["resolved"], failed["open_at_end"]) == (4, 4, 3, 1)
    assert failed["median_resolve_s"] == 2 * 3600 and failed["max_resolve_s"] == 6 * 3600
    assert failed["schedule"] == "nightly" and failed["job"] == "heartbeat"
    assert failed["oldest_open_since"] == DIGEST_START + timedelta(hours=20)
    queue = rows[("queue:reports", IncidentKind.NO_WORKER)]
    assert (queue["opened"], queue["resolved"], queue["open_at_end"]) == (0, 1, 0)
    assert queue["median_resolve_s"] == 5 * 3600
    beat = rows[("beat", IncidentKind.BEAT_DOWN)]
    assert (beat["opened"], beat["resolved"], beat["open_at_end"]) == (0, 0, 1)
    assert beat["median_resolve_s"] is None
    bulk = rows[("queue:bulk", IncidentKind.NO_WORKER)]
    assert (bulk["opened"], bulk["paged"], bulk["open_at_end"]) == (1, 0, 1)
    assert ("queue:old", IncidentKind.NO_WORKER) not in rows
    assert ("queue:later", IncidentKind.NO_WORKER) not in rows
    # Rows with incidents open at the end first (one each here), then the most opened.
    assert list(rows)[:1] == [(scope, IncidentKind.FAILED)]
    assert list(rows)[-1] == ("queue:reports", IncidentKind.NO_WORKER)  # nothing open at the end


def test_an_empty_window_has_no_digest_rows_and_a_reversed_one_is_refused(catalog):
    opened("queue:reports", IncidentKind.NO_WORKER, 30)  # after the window

    assert digest() == {}
    with pytest.raises(ValueError, match="before it starts"):
        digest(DIGEST_END, DIGEST_START)


# --- through the report framework --------------------------------------------------------------


def csv_rows(run: JobRun) -> list[list[str]]:
    file = ReportFile.objects.get(run=run, format="csv")
    with reports_storage().open(file.storage_name, "rb") as fh:
        return list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("reports.run_summary", RUN_SUMMARY_COLUMNS),
        ("reports.schedule_audit", COLUMNS),
        ("reports.alert_digest", DIGEST_COLUMNS),
    ],
)
def test_each_builtin_report_is_a_job_on_the_reports_queue_with_its_columns(name, columns):
    spec = JOB_SPECS[name]

    assert (spec.queue, spec.soft_time_limit, spec.hard_time_limit) == ("reports", 240, 300)
    assert REPORTS[name].columns == columns
    windowed = {p["name"] for p in spec.parameters} == {"window_hours", "window_start", "window_end"}
    assert windowed is (name != "reports.schedule_audit")  # the audit is of now, not of a window


def test_the_run_summary_runs_through_the_framework_and_stores_its_rows(catalog):
    task = with_a_run(make_schedule("summarised"))
    run = JobRun.objects.create(
        job="reports.run_summary", status=RunStatus.RUNNING, scheduled_for=timezone.now(), attempt=1
    )

    result = run_report(REPORTS["reports.run_summary"], run.pk, (), {"window_hours": 2})

    rows = csv_rows(run)
    assert rows[0] == RUN_SUMMARY_COLUMNS
    by_scope = {(r[0], r[3]): r for r in rows[1:]}
    assert by_scope[("schedule", "summarised")][2] == str(task.pk)
    assert {r[1] for r in rows[1:] if r[0] == "job"} == {"heartbeat", "reports.run_summary"}  # itself too
    assert result["rows"] == len(rows) - 1
    assert sorted(f["format"] for f in result["files"]) == ["csv", "html", "json"]


def test_the_audit_runs_through_the_framework(catalog):
    # On a queue nobody serves: the suite's real worker, once started, serves heartbeat's own.
    alone = with_a_run(make_schedule("alone"))
    SchedulePolicy.objects.filter(task=alone).update(queue="audit-nowhere")
    run = JobRun.objects.create(
        job="reports.schedule_audit", status=RunStatus.RUNNING, scheduled_for=timezone.now(), attempt=1
    )

    run_report(REPORTS["reports.schedule_audit"], run.pk, (), {})

    rows = csv_rows(run)
    assert rows[0] == COLUMNS
    assert [(r[1], r[3]) for r in rows[1:] if r[1] == "alone"] == [("alone", UNSERVED)]


def test_the_digest_runs_through_the_framework_with_an_explicit_window(catalog):
    resolved(opened("queue:reports", IncidentKind.NO_WORKER, 1), 3)
    run = JobRun.objects.create(
        job="reports.alert_digest", status=RunStatus.RUNNING, scheduled_for=timezone.now(), attempt=1
    )

    run_report(
        REPORTS["reports.alert_digest"],
        run.pk,
        (),
        {"window_start": DIGEST_START.isoformat(), "window_end": DIGEST_END.isoformat()},
    )

    rows = csv_rows(run)
    assert rows[0] == DIGEST_COLUMNS
    assert [r[:2] + r[5:9] for r in rows[1:]] == [["queue:reports", "no_worker", "1", "1", "1", "7200.0"]]
