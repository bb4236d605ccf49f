"""Run now: a job by name (``POST jobs/{name}/runs``) or a schedule (``POST schedules/{id}/runs``).

Both answer ``202 Accepted`` with the run's id and URL (and ``Location``)
once the run is recorded; it is published after commit through the one
dispatch path (``jobs.dispatch.dispatch``; a schedule through
``scheduler.services.run_schedules_now``, with its policy).

``Idempotency-Key`` (optional, up to 255 characters): the key, per user,
is stored with the run in the transaction that records it
(``ApiIdempotencyKey``, unique on (user, key)). A retry with the same key
returns that run (``replayed: true``) and starts nothing; two concurrent
calls with one key start one run (the second waits on the unique index,
then reads the first's). The same key with a different request (another
job, schedule or body) is a 422: the key names one request. Another user's
key never matches.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django_celery_beat.models import PeriodicTask
from ninja import Field, Header, Router, Schema, Status
from pydantic import ConfigDict

from api.auth import RUN, VIEW_JOBS, require, user_of, username
from api.errors import ApiError, responses
from api.models import ApiIdempotencyKey
from api.runs import run_url
from jobs.dispatch import dispatch
from jobs.models import JobDefinition, JobRun, RunOrigin, RunStatus
from scheduler.services import run_schedules_now

router = Router(tags=["run now"])

KEY_HEADER = "Idempotency-Key"
MAX_LIMIT_SECONDS = 2**31 - 1  # the run's limit columns are 32-bit
MAX_DEADLINE_SECONDS = 366 * 24 * 3600


class JobOut(Schema):
    name: str
    queue: str
    parameters: list[dict[str, Any]]
    soft_time_limit: int
    hard_time_limit: int
    max_retries: int
    max_concurrency: int | None  # runs at once across all workers; null: no limit
    rate_limit: str  # Celery's per-worker rate ("10/m"); empty: none
    doc: str
    last_published_at: Any


class RunJobIn(Schema):
    """A run of a job: its arguments (JSON, bound to the job's signature) and optional overrides."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option must not be ignored

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(None, min_length=1, max_length=200)
    priority: int | None = None
    soft_time_limit: int | None = Field(None, ge=1, le=MAX_LIMIT_SECONDS)
    hard_time_limit: int | None = Field(None, ge=1, le=MAX_LIMIT_SECONDS)
    starting_deadline: int | None = Field(None, ge=1, le=MAX_DEADLINE_SECONDS)


class RunAcceptedOut(Schema):
    id: uuid.UUID
    url: str
    status: RunStatus
    delivery: str | None = Field(
        description="'sent', or 'outbox' when the broker did not take it yet (beat sends it); "
        "null for a replayed key"
    )
    replayed: bool


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def started_once(
    request: HttpRequest, key: str | None, request_digest: str, start: Callable[[], JobRun]
) -> tuple[JobRun, bool]:
    """``start()``'s run, or the run an earlier call with the same key started; (run, replayed)."""
    if key is None:
        return start(), False
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(422, "Idempotency-Key must be 1 to 255 printable characters.", KEY_HEADER)
    user = user_of(request)

    def earlier() -> JobRun | None:
        found = ApiIdempotencyKey.objects.select_related("run").filter(user=user, key=key).first()
        if found is None:
            return None
        if found.request_digest != request_digest:
            raise ApiError(
                422, "This Idempotency-Key was used for a different request; use a new key.", KEY_HEADER
            )
        return found.run

    run = earlier()
    if run is not None:
        return run, True
    try:
        with transaction.atomic():
            run = start()
            ApiIdempotencyKey.objects.create(user=user, key=key, request_digest=request_digest, run=run)
    except IntegrityError:
        # A concurrent call with this key committed first: its run is the one.
        run = earlier()
        if run is None:
            raise
        return run, True
    return run, False


@contextmanager
def job_named_by_the_path() -> Iterator[None]:
    """Dispatch's errors about the job (its model field ``task``) as errors of the path's ``name``."""
    try:
        yield
    except ValidationError as exc:
        if not hasattr(exc, "error_dict") or "task" not in exc.error_dict:
            raise
        errors = exc.error_dict
        raise ValidationError(
            {("name" if key == "task" else key): value for key, value in errors.items()}
        ) from exc


def accepted(
    request: HttpRequest, response: HttpResponse, run: JobRun, replayed: bool
) -> Status[dict[str, Any]]:
    url = run_url(request, run.id)
    response["Location"] = url
    delivery = None if replayed else str(getattr(run, "delivery", "")) or None
    return Status(
        202, {"id": run.id, "url": url, "status": run.status, "delivery": delivery, "replayed": replayed}
    )


@router.get("/jobs", response={200: list[JobOut], **responses(403)}, url_name="jobs")
def list_jobs(request: HttpRequest) -> Any:
    """The job catalog, as the workers published it: names, queues, signatures, default limits."""
    require(request, VIEW_JOBS)
    return list(JobDefinition.objects.order_by("name"))


@router.post(
    "/jobs/{name}/runs", response={202: RunAcceptedOut, **responses(400, 403, 422)}, url_name="run_job"
)
def run_job(
    request: HttpRequest,
    response: HttpResponse,
    name: str,
    payload: RunJobIn,
    idempotency_key: str | None = Header(None, alias=KEY_HEADER),
) -> Any:
    """Run the job ``name`` now with these arguments (origin ``client``, requested by the token's user).

    An unknown job or arguments that do not bind to its signature are a 422
    naming the field; nothing is recorded then.
    """
    require(request, RUN)
    body = payload.model_dump()

    def start() -> JobRun:
        with job_named_by_the_path():
            return dispatch(
                name,
                body["args"],
                body["kwargs"],
                queue=body["queue"],
                priority=body["priority"],
                soft_time_limit=body["soft_time_limit"],
                hard_time_limit=body["hard_time_limit"],
                starting_deadline=body["starting_deadline"],
                origin=RunOrigin.CLIENT,
                requested_by=username(request),
            )

    run, replayed = started_once(request, idempotency_key, fingerprint("job", name, body), start)
    return accepted(request, response, run, replayed)


@router.post(
    "/schedules/{schedule_id}/runs",
    response={202: RunAcceptedOut, **responses(403, 404, 422)},
    url_name="run_schedule",
)
def run_schedule(
    request: HttpRequest,
    response: HttpResponse,
    schedule_id: int,
    idempotency_key: str | None = Header(None, alias=KEY_HEADER),
) -> Any:
    """Run the schedule now, as the admin's *run now* does (origin ``manual``, the schedule's policy)."""
    require(request, RUN)
    schedules = PeriodicTask.objects.filter(pk=schedule_id)
    if not schedules.exists():
        raise ApiError(404, f"No schedule {schedule_id}.")

    def start() -> JobRun:
        outcome = run_schedules_now(schedules, requested_by=username(request))
        if outcome.refused:
            raise ApiError(422, f"The schedule cannot run: {outcome.refused[0][1]}")
        runs = outcome.sent or outcome.outbox
        if not runs:
            raise ApiError(404, f"No schedule {schedule_id}.")  # deleted meanwhile
        return runs[0]

    run, replayed = started_once(request, idempotency_key, fingerprint("schedule", schedule_id), start)
    return accepted(request, response, run, replayed)
