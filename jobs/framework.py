"""The ``@job`` decorator: a Celery task with a stable name, limits and a run record.

A job is a plain function taking JSON arguments. ``@job`` turns it into a
Celery task that:

- has an explicit name (the string stored in schedules; renaming the Python
  function does not orphan them), a default queue, default soft and hard time
  limits, and a retry policy (exponential backoff with full jitter);
- keeps the worker's database connection across tasks (Django's own rules
  still close an old or broken one, and one that died while the worker was
  idle is found by a ping: ``check_connections_before_task``), so a run
  costs its worker two statements: its start and its end;
- moves its ``JobRun`` to ``running`` with a conditional UPDATE before the job
  body runs, so a redelivered message of a finished run is acknowledged and
  ignored, and a message started after its deadline is recorded ``missed``.
  A message redelivered while its attempt still runs (unacknowledged past
  Redis's visibility timeout) is ignored too, with a warning; one whose
  attempt died is retried or recorded ``lost`` (``jobs.runs.start_run``).
  A message that does not run its job raises ``Ignore``: Celery acknowledges
  it and records no result, success or failure for it;
- records a pool process that died under the job from the worker's main
  process (``JobRequest``), before the message is requeued: ``retrying`` or
  ``lost``;
- records ``succeeded`` / ``failed`` / ``retrying`` / ``soft_timeout`` from the
  child, and ``hard_timeout`` from the worker's main process (the child was
  killed and cannot write);
- records a revoke from the worker's main process too (``record_revoked_run``,
  deciding in ``jobs.runs.record_revoked``): a run terminated by hand is
  ``failed`` / ``Terminated``, a run whose message was discarded before it
  started is ``skipped`` / ``Revoked`` (``missed`` when the message expired);
  a run that already ended keeps its record;
- sends ``jobs.signals.run_started`` / ``run_ended`` after each transition it
  won (start, every ending, a retry, a hard timeout, a revoke, a dead pool
  process), for layers above ``jobs`` (Sentry Crons check-ins); nothing is
  built or read when nobody listens;
- sends failures and time limits to Sentry with tags ``job``, ``schedule``,
  ``run``, ``scheduled_for`` and ``timeout`` (``soft`` or ``hard``);
- writes the progress the job body reports (``jobs.progress.report_progress``),
  throttled to one write a second, the last figure flushed when the body ends;
- holds a job with ``max_concurrency=N`` to N runs at once across every
  worker (``jobs.concurrency``): a run takes a place (its run id is the
  holder) before it starts. Without one it is noted waiting on its run
  (``waiting_since``, ``waiting_for``) and its message goes back to the
  broker 1-3 s later (the same task id, retry count, priority, queue,
  limits and deadline), holding no pool process and counting no attempt.
  The place is given back at every ending in the child, after the run's
  end is recorded (so the runs recorded ``running`` never outnumber the
  places; a retry's before its message is sent); for a hard time
  limit, a dead pool process or a termination the worker's main process
  gives it back; a killed worker's lapses (``jobs.concurrency``). A body
  returning ``RunContinues`` keeps it until ``end_continued_run``;
- passes ``rate_limit`` to Celery as is (Celery's own option: per worker,
  not across workers).
"""

from __future__ import annotations

import inspect
import logging
import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sentry_sdk
from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # not in billiard's stubs
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery import Task, signals
from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.time import get_exponential_backoff_interval
from celery.worker import state as worker_state
from celery.worker.request import Request
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone

from jobs import concurrency, progress, runs
from jobs import signals as run_signals
from jobs.models import ACTIVE_STATUSES, STARTABLE_STATUSES, JobRun, RunStatus
from jobs.sendonly.arguments import describe_parameters
from settings.celery_app import app

logger = logging.getLogger(__name__)

CONTROL_FLOW = (Retry, Ignore, Reject)


@dataclass(frozen=True)
class JobSpec:
    """What the catalog publishes about a job."""

    name: str
    queue: str
    soft_time_limit: int
    hard_time_limit: int
    max_retries: int
    retry_backoff: int
    retry_backoff_max: int
    doc: str
    parameters: list[dict[str, Any]] = field(default_factory=list)
    max_concurrency: int | None = None  # runs at once across all workers; None: no limit
    rate_limit: str | None = None  # Celery's, per worker: "10/m"


JOB_SPECS: dict[str, JobSpec] = {}


def run_tags(run: JobRun) -> dict[str, str]:
    return {
        "job": run.job,
        "schedule": str(run.schedule_id or "manual"),
        "run": str(run.pk),
        "scheduled_for": run.scheduled_for.isoformat(),
    }


def report_to_sentry(run: JobRun, exc: BaseException, *, timeout: str | None = None) -> None:
    """Send one event for a run that ended badly, tagged so it can be found by run.

    The event's id is kept on the run (the run page links it). That write is
    a note, not a change of the run's state, and a failure of it is logged,
    never raised: reporting must not break the recording of the run's end.
    """
    with sentry_sdk.new_scope() as scope:
        for key, value in run_tags(run).items():
            scope.set_tag(key, value)
        if timeout:
            scope.set_tag("timeout", timeout)
            # Distinct issues for soft and hard limits of one job.
            scope.fingerprint = ["time-limit", timeout, run.job]
        scope.set_context("run", {"attempt": run.attempt, "worker": run.worker})
        event_id = sentry_sdk.capture_exception(exc)
    if event_id:
        try:
            JobRun.objects.filter(pk=run.pk).update(sentry_event_id=event_id)
        except DatabaseError:
            logger.warning("run %s: its Sentry event %s was sent but not noted on the run", run.pk, event_id)


def announce_ended(
    run: JobRun, status: RunStatus, error: runs.RunError | None, *, will_retry: bool = False
) -> None:
    """Send ``jobs.signals.run_ended`` for a transition that won; nothing when nobody listens."""
    if run_signals.has_receivers(run_signals.run_ended):
        run_signals.send(run_signals.run_ended, run=run, status=status, will_retry=will_retry, error=error)


def announce_ending(run_id: Any, recorded: RunStatus) -> None:
    """``announce_ended`` for a transition that returned only the status it wrote (main process).

    A pool process that died, a revoke: rare, and ``jobs.runs`` returns the
    status, not the run, so the run is read back (one SELECT), only when
    someone listens. The error is the one the transition stored.
    """
    if not run_signals.has_receivers(run_signals.run_ended):
        return
    run_uuid = runs.run_pk(run_id)
    try:
        run = JobRun.objects.filter(pk=run_uuid).first() if run_uuid else None
    except DatabaseError:
        logger.exception("run %s recorded %s; it could not be read back for its signal", run_id, recorded)
        return
    if run is None:
        return
    error = runs.RunError(type=run.error_type, message=run.error_message, traceback=run.traceback)
    will_retry = recorded == RunStatus.RETRYING
    announce_ended(run, recorded, error, will_retry=will_retry)


# A run waiting for a concurrency place is sent again this long after (uniform:
# the waiting runs of a burst do not all come back in the same instant).
WAIT_MIN_SECONDS = 1.0
WAIT_MAX_SECONDS = 3.0

# Our headers on a run's message (jobs.sendonly.messages), beyond Celery's own:
# a message sent again while its run waits keeps them (Celery's
# signature_from_request forwards only a message's "headers" entry).
FORWARDED_HEADERS = ("schedule", "scheduled_for", "run_origin", "requested_by")


def forwarded_headers(request: Any) -> dict[str, Any]:
    """The ``FORWARDED_HEADERS`` the request's message carried (attributes of Celery's ``Context``)."""
    headers = dict(getattr(request, "headers", None) or {})
    for name in FORWARDED_HEADERS:
        value = getattr(request, name, None)
        if value is not None:
            headers[name] = value
    return headers


def release_place(run_id: Any) -> None:
    """Give back the run's concurrency place, if it holds one; a database error is logged (it lapses)."""
    try:
        concurrency.release(str(run_id))
    except DatabaseError as exc:
        logger.warning(
            "run %s: its concurrency place was not given back (%s); it lapses in %s s",
            run_id,
            exc,
            concurrency.lease_ttl_seconds(),
        )


@dataclass
class Place:
    """A run's concurrency place in the child running it; ``release`` gives it back once."""

    holder: str
    new: bool  # taken by this delivery (not one an earlier attempt held)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            release_place(self.holder)


@dataclass(frozen=True)
class RunContinues:
    """Returned by a job whose run goes on after its body returns (a report's chunks).

    The run stays ``running``; whatever carries on (a chord's callback, its
    error callback) ends it with :func:`end_continued_run`. ``note`` is logged.
    """

    note: str = ""


def end_continued_run(
    run_id: Any,
    status: RunStatus,
    *,
    result: Any = None,
    error: runs.RunError | None = None,
    exc: BaseException | None = None,
) -> bool:
    """End a run whose job returned ``RunContinues``; ``True`` if this call ended it.

    The run's concurrency place (a job with ``max_concurrency``), kept while
    it continued, is given back when this call ends it.

    The same ending a job's own return or exception gets: one guarded UPDATE
    (``runs.finish_run``, from ``running`` only, so a second callback or a
    run already recorded ``lost`` by hand never ends it twice), the
    ``run_ended`` signal, and a Sentry event for ``exc`` when it ended badly.
    ``False``, with nothing written, for an unknown or already ended run.
    """
    run_uuid = runs.run_pk(run_id)
    run = JobRun.objects.filter(pk=run_uuid, status=RunStatus.RUNNING).first() if run_uuid else None
    if run is None:
        return False
    if not runs.finish_run(run, status, error=error, result=result):
        return False
    # The place a max_concurrency job's run kept while it continued (no-op for others).
    release_place(run.pk)
    announce_ended(run, status, error)
    if exc is not None and status != RunStatus.SUCCEEDED:
        report_to_sentry(run, exc)
    return True


class JobRequest(Request):
    """A job's message in the worker's main process: what Celery does, plus two records.

    - Its pool process died (``WorkerLostError``): Celery requeues the
      message (late ack, reject on worker loss). First, the run is recorded
      ``retrying`` or ``lost`` (``jobs.runs.record_lost_process``), because
      the worker is alive and its copy would otherwise take the attempt for
      alive and ignore it.
    - A copy of the message ignored on this worker while the attempt runs
      here: Celery's bookkeeping finds requests by id, and the copy's end
      removed the id, so ``revoke --terminate`` would answer "unknown" for
      the attempt. The attempt's request is put back.
    """

    # Celery's Request has these; celery-types' stub of it leaves them out.
    _context: Context
    _already_cancelled: bool
    _already_revoked: bool

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if self._pool_process_died(exc) and self._twin() is None:
            self._record_lost_process(exc)
            if getattr(self.task, "max_concurrency", None):
                release_place(self.id)  # before the message is requeued: its next attempt takes it again
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        if isinstance(exc, Ignore) and (twin := self._twin()) is not None:
            worker_state.requests[self.id] = twin

    def on_timeout(self, soft, timeout):
        # Celery calls the task's on_failure for a hard limit without its
        # request: push it, so on_failure knows this worker's hostname.
        self.task.request_stack.push(self._context)
        try:
            super().on_timeout(soft, timeout)
        finally:
            self.task.request_stack.pop()

    def _pool_process_died(self, exc: BaseException) -> bool:
        if isinstance(exc, WorkerLostError):
            return True
        # Celery's own rule: billiard may report the exit itself.
        return isinstance(exc, SystemExit | KeyboardInterrupt) and not (
            self._already_cancelled or self._already_revoked
        )

    def _twin(self) -> Request | None:
        """Another request with this id running on this worker: the attempt, or a copy of its message."""
        return next((r for r in worker_state.active_requests if r.id == self.id and r is not self), None)

    def _record_lost_process(self, exc: BaseException) -> None:
        close_old_connections()  # the main process may have sat idle past CONN_MAX_AGE
        try:
            recorded = runs.record_lost_process(
                self.id,
                worker=self.hostname or "",
                max_attempts=(self.task.max_retries or 0) + 1,
                reason=str(exc),
            )
        except DatabaseError:
            logger.exception(
                "%s[%s]: its pool process died; the run could not be recorded", self.name, self.id
            )
            return
        if recorded is not None:
            logger.warning(
                "%s[%s]: its pool process died (%s); run recorded %s", self.name, self.id, exc, recorded
            )
            announce_ending(self.id, recorded)


class JobTask(Task):
    """Base class of every job; see the module docstring for its guarantees."""

    Request = "jobs.framework:JobRequest"
    acks_late = True
    reject_on_worker_lost = True
    retry_backoff_seconds: int = 2
    retry_backoff_max_seconds: int = 600
    max_concurrency: int | None = None  # runs at once across all workers (jobs.concurrency)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return self.run(*args, **kwargs)
        delivery = request.delivery_info or {}
        assert request.id is not None  # a message always carries its task id
        place = self._take_place(request, args, kwargs)
        started = runs.start_run(
            request.id,
            job=self.name,
            attempt=request.retries + 1,
            worker=request.hostname or "",
            args=args,
            kwargs=kwargs,
            queue=delivery.get("routing_key") or "",
            redelivered=bool(delivery.get("redelivered")),
            max_attempts=(self.max_retries or 0) + 1,
            message=request,  # read only for a message with no run row (the send-only client's)
        )
        if isinstance(started, runs.NotStarted):
            if place is not None and place.new:
                place.release()  # taken by this call for nothing
            logger.log(
                logging.WARNING if started.warning else logging.INFO,
                "%s[%s]: %s; message acknowledged, job not run",
                self.name,
                request.id,
                started.reason,
            )
            raise Ignore()
        run = started
        if place is not None and not place.new:
            # The place an earlier attempt of this run held (its worker died):
            # this worker renews it from now on.
            concurrency.adopt(request.id, run.worker)
        if run_signals.has_receivers(run_signals.run_started):
            run_signals.send(run_signals.run_started, run=run)
        continues = False
        try:
            result = self._run_body(run, args, kwargs, place)
            continues = isinstance(result, RunContinues)
        finally:
            if place is not None and not continues:
                place.release()
        return None if continues else result

    def _run_body(self, run: JobRun, args: tuple, kwargs: dict, place: Place | None) -> Any:
        """The job body and the run's ending (or its retry); a ``RunContinues`` is returned as is."""
        request = self.request
        try:
            result = self._call_with_progress(str(run.pk), args, kwargs)
        except CONTROL_FLOW:
            raise
        except SoftTimeLimitExceeded as exc:
            error = runs.RunError.from_exception(exc)
            if runs.finish_run(run, RunStatus.SOFT_TIMEOUT, error=error):
                announce_ended(run, RunStatus.SOFT_TIMEOUT, error)
            report_to_sentry(run, exc, timeout="soft")
            raise
        except Exception as exc:
            error = runs.RunError.from_exception(exc)
            # Attempts count from the run's record, not the message: a lost
            # attempt's retry is the same message, requeued.
            if run.attempt <= (self.max_retries or 0):
                countdown = get_exponential_backoff_interval(
                    factor=self.retry_backoff_seconds,
                    retries=run.attempt - 1,
                    maximum=self.retry_backoff_max_seconds,
                    full_jitter=True,
                )
                if runs.mark_retrying(run, error, timezone.now() + timedelta(seconds=countdown)):
                    announce_ended(run, RunStatus.RETRYING, error, will_retry=True)
                if place is not None:
                    # Before the retry's message exists: the next attempt must find
                    # the place free, not this attempt's, released under it.
                    place.release()
                raise self.retry(exc=exc, countdown=countdown) from exc
            if runs.finish_run(run, RunStatus.FAILED, error=error):
                announce_ended(run, RunStatus.FAILED, error)
            report_to_sentry(run, exc)
            raise
        if isinstance(result, RunContinues):
            # The run goes on elsewhere (a chord of chunks): end_continued_run ends it.
            logger.info("%s[%s]: continues: %s", self.name, request.id, result.note)
            return result
        if runs.finish_run(run, RunStatus.SUCCEEDED, result=result):
            announce_ended(run, RunStatus.SUCCEEDED, None)
        return result

    def _call_with_progress(self, run_id: str, args: tuple, kwargs: dict) -> Any:
        """The job body, with ``report_progress`` writing to ``run_id``; its last figure flushed after."""
        if self.request.is_eager:
            return self.run(*args, **kwargs)  # apply(): report_progress does nothing, as documented
        progress.begin(run_id)
        try:
            return self.run(*args, **kwargs)
        finally:
            progress.end()

    def _take_place(self, request: Context, args: tuple, kwargs: dict) -> Place | None:
        """A place for this run if the job has ``max_concurrency``; else wait (raises ``Ignore``).

        ``None`` for a job without a limit, and for an eager call (``apply()``:
        there is no broker message to put back). Waiting: the run is noted
        (``runs.note_waiting``) and the message sent again 1-3 s later, the
        same task id and retry count, its queue, priority, limits, deadline
        and our headers (``jobs.sendonly.messages``) kept; this delivery is
        acknowledged (``Ignore``). A message with no run row yet (the
        send-only client's) gets its row now, from its headers. A run that
        already ended is not sent again; one past its deadline is recorded
        ``missed``.
        """
        limit = self.max_concurrency
        if not limit or request.is_eager:
            return None
        assert request.id is not None
        worker = request.hostname or ""
        admission = concurrency.acquire(self.name, request.id, limit, worker)
        if admission:
            return Place(holder=request.id, new=admission.new)
        reason = f"a concurrency place: {self.name} runs at most {limit} at once ({admission.held} running)"
        noted = runs.note_waiting(request.id, reason)
        if not noted and runs.run_pk(request.id) and runs.current_status(request.id) is None:
            # A send-only client's message, no row yet: record its run now, so its page shows the wait.
            runs.record_message_run(
                request.id,
                job=self.name,
                args=args,
                kwargs=kwargs,
                queue=(request.delivery_info or {}).get("routing_key") or "",
                message=request,
            )
            noted = runs.note_waiting(request.id, reason)
        if not noted:
            status = runs.current_status(request.id)
            if status is not None and status not in ACTIVE_STATUSES:
                logger.info("%s[%s]: its run already ended (%s); job not run", self.name, request.id, status)
                raise Ignore()
            if status in STARTABLE_STATUSES:
                # Startable but not noted: its deadline passed while it waited.
                deadline = JobRun.objects.filter(pk=request.id).values_list("deadline", flat=True).first()
                runs.record_missed(request.id, deadline.isoformat() if deadline else "?")
                logger.info("%s[%s]: waited past its deadline; run recorded missed", self.name, request.id)
                raise Ignore()
            # Running on a dead worker (the copy takes the attempt over once it
            # has a place), or a plain Celery task id: wait too.
        countdown = random.uniform(WAIT_MIN_SECONDS, WAIT_MAX_SECONDS)  # noqa: S311 (jitter, not secrets)
        self.signature_from_request(
            request,
            args,
            kwargs,
            countdown=countdown,
            retries=request.retries,
            headers=forwarded_headers(request),
        ).apply_async()
        logger.info("%s[%s]: waits for %s; sent again in %.1f s", self.name, request.id, reason, countdown)
        raise Ignore()

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Runs in the worker's main process for a hard time limit."""
        if isinstance(exc, TimeLimitExceeded):
            error = runs.RunError.from_exception(exc)
            run = runs.record_from_main_process(
                task_id, RunStatus.HARD_TIMEOUT, error, worker=self.request.hostname or ""
            )
            if run is not None:
                announce_ended(run, RunStatus.HARD_TIMEOUT, error)
                report_to_sentry(run, exc, timeout="hard")
            if self.max_concurrency:
                release_place(task_id)  # the child was killed before its own release


# A kept connection idle this long is pinged (one SELECT 1) before the next
# task uses it: it may have died meanwhile (a database restart, a server or
# proxy idle timeout), and a run's first statement must not be the one that
# finds out (its message would be acknowledged with the run still queued).
# Tasks back to back never pay for the ping.
IDLE_PING_SECONDS = 1.0


@dataclass
class _ConnectionUse:
    last_task_ended: float = 0.0  # time.monotonic(); 0: no task yet


_connection_use = _ConnectionUse()


def _in_worker_task(sender: Task | None) -> bool:
    """A task run by a worker, not an eager call (tests, ``apply()``: the caller's transaction)."""
    request = getattr(sender, "request", None)
    return not (request is None or getattr(request, "is_eager", False) or request.called_directly)


@signals.task_prerun.connect(dispatch_uid="jobs.framework.check_connections_before_task")
def check_connections_before_task(sender: Task | None = None, **_kwargs: Any) -> None:
    """Before a task: Django's rules for a kept connection, and a ping after an idle spell.

    The worker keeps its connection across tasks (``CELERY_DB_REUSE_MAX``:
    Celery's Django fixup would otherwise close it after every task, and
    opening one cost a third of a run's time on the worker). What a web
    request gets, a task gets too: a connection older than ``CONN_MAX_AGE``,
    left in a transaction, or unusable after an error is closed, and the next
    query opens a fresh one. Eager calls are left alone, as the fixup leaves them.
    """
    if not _in_worker_task(sender):
        return
    close_old_connections()
    if time.monotonic() - _connection_use.last_task_ended >= IDLE_PING_SECONDS:
        close_dead_connections()


@signals.task_postrun.connect(dispatch_uid="jobs.framework.recycle_connections_after_task")
def recycle_connections_after_task(sender: Task | None = None, **_kwargs: Any) -> None:
    """After a task: close a connection Django would not keep (too old, broken by an error)."""
    if not _in_worker_task(sender):
        return
    close_old_connections()
    _connection_use.last_task_ended = time.monotonic()


def close_dead_connections() -> int:
    """Close every open connection that does not answer a ping; return how many were closed."""
    closed = 0
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block and not conn.is_usable():
            conn.close()
            closed += 1
    return closed


def signal_name(signum: Any) -> str:
    """``SIGTERM`` for 15 or ``"15"`` (Celery passes either); the value as given otherwise."""
    try:
        return signal.Signals(int(signum)).name
    except (TypeError, ValueError):
        return str(signum)


@signals.task_revoked.connect(dispatch_uid="jobs.framework.record_revoked_run")
def record_revoked_run(
    sender: Task | None = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_kwargs: Any,
) -> None:
    """Record a revoked run; Celery runs no task hook for it (worker's main process).

    Celery sends ``task_revoked`` when it kills the pool process running a job
    (``revoke(id, terminate=True)``: ``celery control revoke --terminate``,
    Flower) and when it discards a message whose id was revoked or whose
    ``expires`` passed; it acknowledges the message either way. This only
    translates the signal into one call of ``jobs.runs.record_revoked``, which
    decides the transition (``skipped``, ``missed`` or ``failed``, or none for
    a run that already ended or runs elsewhere) in guarded UPDATEs.
    """
    if not isinstance(sender, JobTask) or request is None:
        return  # not a job: no run to record
    # The main process may have sat idle past the server's timeout or
    # CONN_MAX_AGE; the task_prerun cleanup Celery's Django fixup does runs in
    # the children only.
    close_old_connections()
    terminated_by = signal_name(signum) if terminated else None
    recorded = runs.record_revoked(
        request.id,
        terminated_by=terminated_by,
        expired=bool(expired),
        expires=request.expires,
        worker=getattr(request, "hostname", "") or "",
        message=request,
    )
    if terminated and sender.max_concurrency:
        release_place(request.id)  # its pool process was killed before its own release
    how = runs.revoke_cause(terminated_by=terminated_by, expired=bool(expired))
    if recorded is not None:
        logger.warning("%s[%s]: %s; run recorded %s", sender.name, request.id, how, recorded)
        announce_ending(request.id, recorded)
    else:
        status = runs.current_status(request.id)
        found = f"its run was already {status}, record kept" if status else "no run recorded for it"
        logger.info("%s[%s]: %s; %s", sender.name, request.id, how, found)


def route_to_job_queue(name, args, kwargs, options, task=None, **_kw):
    """Celery router: a job sent by name without a queue goes to its default queue."""
    spec = JOB_SPECS.get(name)
    return {"queue": spec.queue} if spec else None


# Celery's rate format (celery.utils.time.rate): a positive number, per second
# unless followed by /s, /m or /h.
RATE_LIMIT = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)(?:/[smh])?")


def job(
    name: str,
    *,
    queue: str = "default",
    soft_time_limit: int | None = None,
    hard_time_limit: int | None = None,
    max_retries: int = 0,
    retry_backoff: int = 2,
    retry_backoff_max: int = 600,
    max_concurrency: int | None = None,
    rate_limit: str | None = None,
) -> Callable[[Callable[..., Any]], JobTask]:
    """Register ``fn`` as a job named ``name`` (stable: schedules store it).

    Limits default to ``JOB_DEFAULT_SOFT_TIME_LIMIT`` / ``..._HARD_...``; the
    hard limit must exceed the soft one, so the job can clean up first.

    ``max_concurrency=N``: never more than N runs of the job running at once,
    across every worker; the others wait queued (see the module docstring).
    ``rate_limit``: Celery's task option, enforced by each worker on its own
    (``"10/s"``, ``"100/m"``, ``"5/h"``, or a number: per second). Both are
    checked here: a bad value raises ``ValueError`` at import.
    """
    soft = soft_time_limit or settings.JOB_DEFAULT_SOFT_TIME_LIMIT
    hard = hard_time_limit or settings.JOB_DEFAULT_HARD_TIME_LIMIT
    if hard <= soft:
        raise ValueError(f"job {name!r}: hard_time_limit ({hard}) must exceed soft ({soft})")
    # type(...) is int: True is an int to isinstance, and not a limit.
    if max_concurrency is not None and not (type(max_concurrency) is int and max_concurrency >= 1):
        raise ValueError(
            f"job {name!r}: max_concurrency must be a whole number of 1 or more, got {max_concurrency!r}"
        )
    if rate_limit is not None and not (
        RATE_LIMIT.fullmatch(rate_limit) and float(rate_limit.split("/")[0]) > 0
    ):
        raise ValueError(
            f"job {name!r}: rate_limit must be like '10/s', '100/m', '5/h' or a number per second, "
            f"got {rate_limit!r}"
        )

    def decorate(fn: Callable[..., Any]) -> JobTask:
        if name in JOB_SPECS:
            raise ValueError(f"job name {name!r} is registered twice")
        JOB_SPECS[name] = JobSpec(
            name=name,
            queue=queue,
            soft_time_limit=soft,
            hard_time_limit=hard,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            doc=inspect.getdoc(fn) or "",
            parameters=describe_parameters(fn),
            max_concurrency=max_concurrency,
            rate_limit=rate_limit,
        )
        return app.task(
            name=name,
            base=JobTask,
            soft_time_limit=soft,
            time_limit=hard,
            max_retries=max_retries,
            retry_backoff_seconds=retry_backoff,
            retry_backoff_max_seconds=retry_backoff_max,
            max_concurrency=max_concurrency,
            rate_limit=rate_limit,
        )(fn)

    return decorate
