"""Schedules: list (cursor), one, create, replace (PUT), change (PATCH), delete, pause, resume.

A schedule is read and written as the schedule document of
``scheduler.documents`` (the CLI's YAML shape, keyed by the policy slug),
plus its ``id`` and ``url``. Writes are validated exactly as the admin's
schedule page validates them (``documents.save_document`` binds the page's
form and ``validate_policy``) and saved through the ORM (change log, audit);
errors are 422s whose ``field`` is the document path (``schedule.cron``,
``policy.hard_time_limit``). Pause and resume go through
``scheduler.services`` like the admin's actions.

PUT takes a whole document (a key left out means its default); PATCH the
keys to change: top-level keys replace, ``policy`` keys merge into the
stored policy, ``schedule`` replaces the whole schedule. ``paused`` is
read-only (pause and resume are operations, not configuration).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from api import cursors
from api.auth import (
    ADD_SCHEDULES,
    CHANGE_SCHEDULES,
    DELETE_SCHEDULES,
    PAUSE,
    VIEW_SCHEDULES,
    require,
    username,
)
from api.errors import ApiError, responses
from api.runs import MAX_PAGE, in_utc
from scheduler.documents import document_of, save_document
from scheduler.services import pause_schedules, resume_schedules

router = Router(tags=["schedules"])
ONE = "/schedules/{schedule_id}"

SCHEDULE_DESCRIPTION = (
    'One of {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}, '
    '{"every": 5, "period": "minutes", "anchor": "2026-12-01T00:00:00+00:00"} or '
    '{"at": "2026-12-24T18:00:00+00:00"}.'
)


class PolicyDoc(Schema):
    """The schedule's policy; a key left out is its default."""

    model_config = ConfigDict(extra="forbid")

    soft_time_limit: int | None = None
    hard_time_limit: int | None = None
    queue: str | None = None
    catchup: str | None = None
    overlap: str | None = None
    starting_deadline: int | None = None
    jitter: int | None = None
    grace: int | None = None
    late_after: int | None = None
    expected_duration: int | None = None
    failures_before_alert: int | None = None
    successes_before_recovery: int | None = None
    remind_every: int | None = None


class ScheduleIn(Schema):
    """A schedule document (``scheduler.documents``); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    slug: str | None = None
    name: str | None = None
    job: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    enabled: bool | None = None
    description: str | None = None
    schedule: dict[str, Any] | None = Field(None, description=SCHEDULE_DESCRIPTION)
    priority: int | None = None
    start_time: str | None = Field(None, description="ISO 8601 with an offset, or null.")
    expires: str | None = Field(None, description="ISO 8601 with an offset, or null.")
    policy: PolicyDoc | None = None
    paused: Any = Field(None, description="Read-only: ignored (use pause and resume).")


class PausedOut(Schema):
    note: str
    until: str | None
    by: str


class ScheduleOut(Schema):
    id: int
    url: str
    slug: str | None
    name: str
    job: str
    args: list[Any]
    kwargs: dict[str, Any]
    enabled: bool
    description: str
    schedule: dict[str, Any] = Field(description=SCHEDULE_DESCRIPTION)
    priority: int | None
    start_time: str | None
    expires: str | None
    policy: dict[str, Any]
    paused: PausedOut | None


class SchedulePage(Schema):
    items: list[ScheduleOut]
    next_cursor: str | None
    next: str | None


class ScheduleFilters(Schema):
    job: str | None = None
    enabled: bool | None = None
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=MAX_PAGE)


class PauseIn(Schema):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(description="Why it is paused; shown on every skipped run.")
    until: datetime | None = Field(
        None, description="When it resumes by itself (with an offset); null: never."
    )


def schedules() -> QuerySet[PeriodicTask]:
    # Everything document_of reads, in the one query.
    return PeriodicTask.objects.select_related("crontab", "interval", "clocked", "solar", "policy")


def schedule_or_404(schedule_id: int) -> PeriodicTask:
    task = schedules().filter(pk=schedule_id).first()
    if task is None:
        raise ApiError(404, f"No schedule {schedule_id}.")
    return task


def schedule_out(request: HttpRequest, task: PeriodicTask) -> dict[str, Any]:
    url = request.build_absolute_uri(reverse("api:schedule", args=[task.pk]))
    return {"id": task.pk, "url": url, **document_of(task)}


def body_of(payload: ScheduleIn) -> dict[str, Any]:
    """The keys the client sent (a key left out is not a null), ``paused`` dropped (read-only)."""
    body = payload.model_dump(exclude_unset=True)
    body.pop("paused", None)
    return body


def saved(request: HttpRequest, doc: dict[str, Any], existing: PeriodicTask | None) -> dict[str, Any]:
    task = save_document(doc, existing)
    return schedule_out(request, schedules().get(pk=task.pk))


@router.get("/schedules", response={200: SchedulePage, **responses(403, 422)}, url_name="schedules")
def list_schedules(request: HttpRequest, filters: Query[ScheduleFilters]) -> Any:
    """Every schedule by id; follow ``next`` for the following page (a cursor: no row repeats or vanishes)."""
    require(request, VIEW_SCHEDULES)
    tasks = schedules()
    if filters.job is not None:
        tasks = tasks.filter(task=filters.job)
    if filters.enabled is not None:
        tasks = tasks.filter(enabled=filters.enabled)
    if filters.cursor:
        (after,) = cursors.decode(filters.cursor, 1)
        if not isinstance(after, int) or isinstance(after, bool):
            raise ApiError(422, "The cursor is not one this API gave out.", "cursor")
        tasks = tasks.filter(pk__gt=after)
    page = list(tasks.order_by("pk")[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    next_cursor = cursors.encode(page[-1].pk) if more else None
    next_url = None
    if next_cursor is not None:
        query = request.GET.copy()
        query["cursor"] = next_cursor
        next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
    return {"items": [schedule_out(request, t) for t in page], "next_cursor": next_cursor, "next": next_url}


@router.get(ONE, response={200: ScheduleOut, **responses(403, 404, 422)}, url_name="schedule")
def get_schedule(request: HttpRequest, schedule_id: int) -> Any:
    """One schedule as its document."""
    require(request, VIEW_SCHEDULES)
    return schedule_out(request, schedule_or_404(schedule_id))


@router.post(
    "/schedules", response={201: ScheduleOut, **responses(400, 403, 422)}, url_name="create_schedule"
)
def create_schedule(request: HttpRequest, response: HttpResponse, payload: ScheduleIn) -> Any:
    """Create a schedule from a document (no ``slug``: one is made from the name)."""
    require(request, ADD_SCHEDULES)
    out = saved(request, body_of(payload), None)
    response["Location"] = out["url"]
    return Status(201, out)


@router.put(
    ONE,
    response={200: ScheduleOut, **responses(400, 403, 404, 422)},
    url_name="put_schedule",
)
def replace_schedule(request: HttpRequest, schedule_id: int, payload: ScheduleIn) -> Any:
    """Replace the schedule with this document: a key left out takes its default."""
    require(request, CHANGE_SCHEDULES)
    with transaction.atomic():
        existing = schedule_or_404(schedule_id)
        return saved(request, body_of(payload), existing)


@router.patch(
    ONE,
    response={200: ScheduleOut, **responses(400, 403, 404, 422)},
    url_name="patch_schedule",
)
def change_schedule(request: HttpRequest, schedule_id: int, payload: ScheduleIn) -> Any:
    """Change the keys given; ``policy`` keys merge into the stored policy, ``schedule`` is replaced whole."""
    require(request, CHANGE_SCHEDULES)
    with transaction.atomic():
        existing = schedule_or_404(schedule_id)
        doc = document_of(existing)
        doc.pop("paused", None)
        changes = body_of(payload)
        policy = changes.pop("policy", None)
        doc.update(changes)
        if policy:
            doc["policy"] = {**doc["policy"], **policy}
        return saved(request, doc, existing)


@router.delete(ONE, response={204: None, **responses(403, 404, 422)}, url_name="delete_schedule")
def delete_schedule(request: HttpRequest, schedule_id: int) -> Any:
    """Delete the schedule (beat drops it within a second); its runs stay in the history."""
    require(request, DELETE_SCHEDULES)
    schedule_or_404(schedule_id).delete()
    return Status(204, None)


@router.post(
    f"{ONE}/pause",
    response={200: ScheduleOut, **responses(400, 403, 404, 422)},
    url_name="pause_schedule",
)
def pause_schedule(request: HttpRequest, schedule_id: int, payload: PauseIn) -> Any:
    """Pause with a note and an optional end: beat records each paused slot as ``skipped`` with the note."""
    require(request, PAUSE, VIEW_SCHEDULES)
    task = schedule_or_404(schedule_id)
    until = payload.until
    if until is not None and not timezone.is_naive(until):  # a naive one is refused by validate_pause
        until = in_utc(until, "until")  # PostgreSQL takes offsets up to ±15:59 only
    pause_schedules(PeriodicTask.objects.filter(pk=task.pk), payload.note, until, paused_by=username(request))
    return schedule_out(request, schedule_or_404(schedule_id))


@router.post(
    f"{ONE}/resume",
    response={200: ScheduleOut, **responses(403, 404, 422)},
    url_name="resume_schedule",
)
def resume_schedule(request: HttpRequest, schedule_id: int) -> Any:
    """Resume (the slots skipped while paused are not caught up); a schedule not paused is left alone."""
    require(request, PAUSE, VIEW_SCHEDULES)
    task = schedule_or_404(schedule_id)
    resume_schedules(PeriodicTask.objects.filter(pk=task.pk))
    return schedule_out(request, schedule_or_404(schedule_id))
