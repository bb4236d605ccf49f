"""Runs: one run (``GET runs/{id}``) and the run history with filters, cursor-paginated (``GET runs``).

The history is ordered newest slot first, by ``(scheduled_for, id)``
descending, the index ``run_history`` (``run_by_job`` with a job filter);
the cursor is the last row's ``(scheduled_for, id)``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from ninja import Field, Query, Router, Schema

from api import cursors
from api.auth import VIEW_RUNS, require
from api.errors import ApiError, responses
from jobs.models import JobRun, RunOrigin, RunStatus

router = Router(tags=["runs"])

MAX_PAGE = 200


class RunErrorOut(Schema):
    type: str
    message: str


class RunProgressOut(Schema):
    """What the job last reported: ``done`` of ``total`` (either may be null: a count without an end)."""

    done: int | None
    total: int | None
    message: str
    updated_at: datetime


class RunWaitingOut(Schema):
    """A queued run held back by its job's ``max_concurrency``: since when, and for what."""

    since: datetime | None
    for_: str = Field(..., alias="for")


class RunOut(Schema):
    id: uuid.UUID
    url: str
    job: str
    status: RunStatus
    origin: RunOrigin
    requested_by: str
    schedule_id: int | None
    schedule_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    attempt: int
    scheduled_for: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    deadline: datetime | None
    duration_ms: int | None
    lateness_ms: int | None
    result: Any = None
    error: RunErrorOut | None
    progress: RunProgressOut | None = None  # null until the job reports progress
    waiting: RunWaitingOut | None = None  # null unless the run waits for a concurrency place


class RunPage(Schema):
    items: list[RunOut]
    next_cursor: str | None
    next: str | None


class RunFilters(Schema):
    job: str | None = None
    status: list[RunStatus] | None = None
    schedule: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=MAX_PAGE)


def run_url(request: HttpRequest, run_id: uuid.UUID | str) -> str:
    return request.build_absolute_uri(reverse("api:run", args=[run_id]))


def run_out(request: HttpRequest, run: JobRun) -> dict[str, Any]:
    error = None
    if run.error_type or run.error_message:
        error = {"type": run.error_type, "message": run.error_message}
    return {
        "id": run.id,
        "url": run_url(request, run.id),
        "job": run.job,
        "status": run.status,
        "origin": run.origin,
        "requested_by": run.requested_by,
        "schedule_id": run.schedule_id,
        "schedule_name": run.schedule_name,
        "args": run.args,
        "kwargs": run.kwargs,
        "queue": run.queue,
        "attempt": run.attempt,
        "scheduled_for": run.scheduled_for,
        "enqueued_at": run.enqueued_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "deadline": run.deadline,
        "duration_ms": run.duration_ms,
        "lateness_ms": run.lateness_ms,
        "result": run.result,
        "error": error,
        "progress": progress_out(run),
        "waiting": waiting_out(run),
    }


def progress_out(run: JobRun) -> dict[str, Any] | None:
    if run.progress_updated_at is None:
        return None
    return {
        "done": run.progress_done,
        "total": run.progress_total,
        "message": run.progress_message,
        "updated_at": run.progress_updated_at,
    }


def waiting_out(run: JobRun) -> dict[str, Any] | None:
    """Only while the run is still queued (or retrying) and says what it waits for."""
    if run.status not in (RunStatus.QUEUED, RunStatus.RETRYING) or not run.waiting_for:
        return None
    return {"since": run.waiting_since, "for": run.waiting_for}


def in_utc(moment: datetime, field: str) -> datetime:
    """A time from a query string, in UTC (without an offset it is read as UTC).

    Converted here because PostgreSQL refuses offsets beyond ±15:59, which
    ISO 8601 allows; a time that leaves the calendar in UTC is a 422.
    """
    if timezone.is_naive(moment):
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ApiError(422, f"{moment.isoformat()} is out of range in UTC.", field) from exc


@router.get(
    "/runs/{run_id}", response={200: RunOut, **responses(403, 404, 422)}, url_name="run", by_alias=True
)
def get_run(request: HttpRequest, run_id: uuid.UUID) -> Any:
    """One run: its status, timings, result, error, progress and what it waits for."""
    require(request, VIEW_RUNS)
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None:
        raise ApiError(404, f"No run {run_id}.")
    return run_out(request, run)


@router.get("/runs", response={200: RunPage, **responses(403, 422)}, url_name="runs", by_alias=True)
def list_runs(request: HttpRequest, filters: Query[RunFilters]) -> Any:
    """The run history, newest slot first, filtered; follow ``next`` for the following page.

    ``since``/``until`` bound ``scheduled_for`` (since inclusive, until
    exclusive); ``status`` may be repeated. Pages are cut by a cursor, so
    runs recorded while paging never make a row repeat or vanish.
    """
    require(request, VIEW_RUNS)
    runs = JobRun.objects.all()
    if filters.job is not None:
        runs = runs.filter(job=filters.job)
    if filters.status:
        runs = runs.filter(status__in=filters.status)
    if filters.schedule is not None:
        runs = runs.filter(schedule_id=filters.schedule)
    if filters.since is not None:
        runs = runs.filter(scheduled_for__gte=in_utc(filters.since, "since"))
    if filters.until is not None:
        runs = runs.filter(scheduled_for__lt=in_utc(filters.until, "until"))
    if filters.cursor:
        after = after_cursor(filters.cursor)
        runs = runs.filter(after)
    page = list(runs.order_by("-scheduled_for", "-id")[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    next_cursor = cursors.encode(page[-1].scheduled_for.isoformat(), str(page[-1].id)) if more else None
    next_url = None
    if next_cursor is not None:
        query = request.GET.copy()
        query["cursor"] = next_cursor
        next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
    return {"items": [run_out(request, run) for run in page], "next_cursor": next_cursor, "next": next_url}


def after_cursor(cursor: str) -> Q:
    """Rows after the cursor's ``(scheduled_for, id)`` in descending order.

    Written as ``scheduled_for <= t AND (scheduled_for < t OR id < i)`` so the
    first term is a range on the index.
    """
    moment_text, run_id_text = cursors.decode(cursor, 2)
    try:
        moment = parse_datetime(moment_text) if isinstance(moment_text, str) else None
    except ValueError:
        moment = None
    try:
        run_id = uuid.UUID(str(run_id_text))
    except ValueError:
        run_id = None
    if moment is None or run_id is None or timezone.is_naive(moment):
        raise ApiError(422, "The cursor is not one this API gave out.", "cursor")
    return Q(scheduled_for__lte=moment) & (Q(scheduled_for__lt=moment) | Q(id__lt=run_id))
