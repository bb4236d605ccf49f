"""The schedule page's live preview: the page's fields in, the schedule in words and its next runs out.

``schedule_preview`` binds the page's own form (``ScheduleForm``) to the
fields as typed, so its errors are exactly those a save would show (invalid
cron, unknown time zone, a cron that never fires, an interval too short, a
one-off in the past, an unknown job, arguments that do not bind), by field.
When the schedule itself is valid, its next runs come from
``scheduler.describe.next_slots`` (beat's own entry code), in the schedule's
time zone and in UTC, each run on a day the zone changes its clocks marked:

- spring forward, a fixed-time cron whose time falls in the gap runs once,
  right after it (Europe/Berlin ``30 2 * * *`` on 2027-03-28 runs at 03:00);
- fall back, a fixed-time cron in the repeated hour runs once, at the first
  of the two (02:30 CEST on 2026-10-25, not again at 02:30 CET); a wildcard
  cron runs at both, and each is labelled first or second;
- any other run that day says the clocks change.

Which of these applies is beat's rule (``scheduler.beat.slots``: cronie's
fixed-time vs wildcard); the notes only explain the slots beat returned.
Whether a gap time was meant is asked of beat's own ``next_cron_slot`` on a
clock without DST (UTC, i.e. the bare wall clock).

Bad input never raises: a malformed request is a 400 with a JSON error, a
field that does not validate is a 200 with ``errors``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from django.http import QueryDict
from django_celery_beat.models import PeriodicTask

from jobs.models import JobDefinition
from scheduler.beat.entries import job_defaults
from scheduler.beat.slots import CronSpec, _transitions, next_cron_slot
from scheduler.describe import describe_cron, describe_interval, describe_schedule, next_slots
from scheduler.models import SchedulePolicy
from scheduler.schedule_form import (
    CRON,
    INTERVAL,
    JOB_FIELDS,
    SCHEDULE_FIELDS,
    ScheduleForm,
    policy_of,
    schedule_initial,
)
from scheduler.validation import cron_expression

RUNS = 5
# The fields whose errors the preview reports (the name and the policy are the save's business).
REPORTED_FIELDS = (*SCHEDULE_FIELDS, *JOB_FIELDS, "start_time", "expires")
_PLACEHOLDER_NAME = "\x00preview"  # a name no saved schedule has (NUL is refused on save)
_MICROSECOND = timedelta(microseconds=1)


def schedule_preview(
    params: QueryDict, now: datetime, form_class: type[ScheduleForm] = ScheduleForm
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for the page's fields ``params`` (``id``: the schedule being edited).

    ``form_class`` is the admin's form (``ModelAdmin.get_form``: its widgets
    name the fields as the page posts them, e.g. a split start time).
    """
    instance = None
    if raw_id := params.get("id"):
        if not raw_id.isdigit():
            return 400, {"error": f"id must be a schedule's number, not {raw_id!r}."}
        instance = (
            PeriodicTask.objects.select_related("crontab", "interval", "clocked", "policy")
            .filter(pk=raw_id)
            .first()
        )
        if instance is None:
            return 404, {"error": f"There is no schedule {raw_id}."}
    if instance is not None and "schedule_kind" not in params:
        return 200, saved_preview(instance, now)  # a read-only page: no inputs, the saved schedule
    data = params.copy()
    data["name"] = _PLACEHOLDER_NAME
    form = form_class(data=data, instance=instance)
    form.is_valid()
    errors = {field: list(messages) for field, messages in form.errors.items() if field in REPORTED_FIELDS}
    body: dict[str, Any] = {
        "fields": REPORTED_FIELDS,
        "errors": errors,
        "job": job_info(data.get("task", "")),
        "runs": [],
        "words": "",
    }
    if any(field in errors for field in SCHEDULE_FIELDS):
        return 200, body
    body.update(upcoming_runs(form, now))
    return 200, body


def job_info(name: str) -> dict[str, Any] | None:
    """The catalog's entry for the picked job: its doc, default queue and limits (None if unknown)."""
    job = JobDefinition.objects.filter(name=name.strip()).first()
    if job is None:
        return None
    return {
        "name": job.name,
        "doc": job.doc,
        "queue": job.queue,
        "soft_time_limit": job.soft_time_limit,
        "hard_time_limit": job.hard_time_limit,
        "parameters": job.parameters,
    }


def upcoming_runs(form: ScheduleForm, now: datetime) -> dict[str, Any]:
    """Words, zone and the next ``RUNS`` runs of the valid schedule on ``form`` (unsaved, as typed)."""
    task = form.instance
    kind = form.cleaned_data["schedule_kind"]
    zone_name = (form.cleaned_data.get("timezone") or "").strip() or "UTC"
    if task.crontab is not None:
        expression = cron_expression(task.crontab)
        words = describe_cron(expression)
    elif task.interval is not None:
        expression = None
        words = describe_interval(task.interval.every, task.interval.period)
    else:
        expression = None
        words = describe_schedule(task)
    # Beat's entry reads the anchor from the policy; the page's anchor field is not saved yet.
    policy = policy_of(task) if task.pk else None
    task.policy = policy or SchedulePolicy()
    if kind == INTERVAL:
        task.policy.anchor = form.anchor_at(now)
    # The slots do not depend on the job or its arguments: preview the schedule while those are
    # still being typed (a job unknown to the catalog would make beat refuse the whole row).
    defaults = job_defaults()
    defaults.setdefault(task.task, cast("tuple[str, int, int]", ("default", None, None)))
    task.args, task.kwargs, task.enabled = "[]", "{}", True
    slots = next_slots(task, now, RUNS, defaults=defaults)
    zone = ZoneInfo(zone_name)
    result: dict[str, Any] = {
        "kind": kind,
        "words": words,
        "expression": expression,
        "timezone": zone_name,
        "runs": [run_of(slot, zone, expression if kind == CRON else None) for slot in slots],
        "note": "",
    }
    if not form.cleaned_data.get("enabled"):
        result["note"] = "Disabled: beat runs nothing until it is enabled; these are the runs it would have."
    elif not slots:
        result["note"] = "It will not run again."
    return result


def saved_preview(task: PeriodicTask, now: datetime) -> dict[str, Any]:
    """The preview of ``task`` as saved (a viewer's read-only page): beat's next runs of its row."""
    kind = schedule_initial(task)["schedule_kind"]
    crontab = task.crontab
    expression = cron_expression(crontab) if crontab is not None else None
    zone_name = str(crontab.timezone) if crontab is not None else "UTC"
    slots = next_slots(task, now, RUNS)
    return {
        "fields": (),
        "errors": {},
        "job": job_info(task.task),
        "kind": kind,
        "words": describe_schedule(task),
        "expression": expression,
        "timezone": zone_name,
        "runs": [run_of(slot, ZoneInfo(zone_name), expression) for slot in slots],
        "note": ""
        if slots
        else ("Disabled: beat runs nothing." if not task.enabled else "It will not run again."),
    }


def run_of(slot: datetime, zone: ZoneInfo, expression: str | None) -> dict[str, Any]:
    local = slot.astimezone(zone)
    return {
        "utc": slot.isoformat(),
        "utc_text": f"{slot:%a %Y-%m-%d %H:%M} UTC",
        "local_text": f"{local:%a %Y-%m-%d %H:%M %Z}",
        "dst": dst_note(slot, zone, expression),
    }


def _wall(instant: datetime, offset: timedelta) -> datetime:
    """The naive wall-clock time of ``instant`` at UTC ``offset``."""
    return (instant + offset).replace(tzinfo=None)


def dst_note(slot: datetime, zone: ZoneInfo, expression: str | None) -> str | None:
    """Why this run is special on a day ``zone`` changes its clocks, or None on any other day.

    ``expression`` is the cron (None for an interval or a one-off: their
    slots are instants, only the day is marked).
    """
    local = slot.astimezone(zone)
    for change in _transitions(zone.key, local.year):
        before = change.astimezone(zone) - _MICROSECOND
        before_offset, after_offset = before.utcoffset(), change.astimezone(zone).utcoffset()
        assert before_offset is not None and after_offset is not None  # aware datetimes
        if local.date() not in (before.date(), change.astimezone(zone).date()):
            continue
        old_wall, new_wall = _wall(change, before_offset), _wall(change, after_offset)
        fixed_time = expression is not None and not CronSpec(expression).is_wildcard
        day = f"{local:%Y-%m-%d}"
        if after_offset > before_offset:  # spring forward: [old_wall, new_wall) never happens
            jump = f"clocks jump from {old_wall:%H:%M} to {new_wall:%H:%M}"
            if fixed_time and slot == change:
                assert expression is not None
                # Beat's own cron search on the bare wall clock: was a time in the gap meant?
                meant = next_cron_slot(
                    CronSpec(expression, "UTC"), old_wall.replace(tzinfo=UTC) - _MICROSECOND
                )
                if meant is not None and meant.replace(tzinfo=None) < new_wall:
                    return (
                        f"DST: {meant:%H:%M} does not exist on {day} ({jump}): "
                        f"runs once at {local:%H:%M %Z} instead."
                    )
            return f"DST change day: {jump}."
        back = f"clocks go back from {old_wall:%H:%M} to {new_wall:%H:%M}"
        wall = local.replace(tzinfo=None)
        if new_wall <= wall < old_wall:  # the repeated hour
            if local.fold == 0:
                if fixed_time:
                    return (
                        f"DST: {wall:%H:%M} happens twice on {day} ({back}): "
                        f"runs once, at the first ({local:%Z})."
                    )
                return f"DST: the first {wall:%H:%M} on {day} ({local:%Z}); {back} and it runs again."
            return f"DST: the second {wall:%H:%M} on {day} ({local:%Z}), after {back}."
        return f"DST change day: {back}."
    return None
