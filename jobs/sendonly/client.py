"""The send-only client: dispatch a job by name from any Python service, with only celery/kombu installed.

No Django, no models, no job code, no database: a call is checked against
the catalog the workers publish to Redis (``jobs.sendonly.routing``) and sent
as the platform's one message format (``jobs.sendonly.messages``). The
worker that takes the message records the run (origin ``client``) in the
same history as beat's runs, with the same guarantees: late ack, a
redelivered or duplicate message for a run that is running or finished is
acknowledged and ignored, limits enforced, an expired message recorded
``missed`` (``jobs.runs.start_run`` / ``record_revoked``).

Guarantees of ``Client.dispatch``:

- **Refused at once, nothing sent**: a job no worker has published
  (``UnknownJob``), arguments that do not bind to its parameters, have the
  wrong JSON types or are not strict JSON (``ArgumentsDoNotBind``), and
  options that cannot hold (``InvalidDispatchOption``: limits, priority,
  eta/countdown/expires). All are ``ValueError`` subclasses
  (``DispatchError``) with a message that says what to fix.
- **Sent or raised**: there is no outbox on this side. When the broker does
  not take the message, the broker's error is raised and nothing was
  recorded: call again (with an ``idempotency_key``, a call that did get
  through and is retried still makes one run).
- **Idempotency**: with ``idempotency_key``, the run id is derived from the
  job name and the key (``run_id_for``), so every call with the same pair
  sends a message for the same run, and the worker runs it at most once:
  a copy that arrives while the run is queued or running, or after it ended
  (succeeded or not), is acknowledged and ignored. A new run needs a new key.

Following a run needs the database, so it is not here: read
``GET /api/v1/runs/{run_id}`` on the platform's JSON API.

The routing table is read from Redis with a few seconds' cache
(``RoutingTable``); per-call ``queue`` overrides the job's queue and is the
caller's to get right (a queue no worker consumes keeps its messages).
"""

from __future__ import annotations

import json
import math
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from kombu import Connection
from kombu.pools import ProducerPool

from jobs.sendonly.arguments import (
    NotStrictJson,
    argument_type_problem,
    check_strict_json,
    signature_from_parameters,
)
from jobs.sendonly.messages import build_task_message, publish_task_message
from jobs.sendonly.routing import JobRoute, RoutingTable

# Run ids of idempotent calls: uuid5(RUN_ID_NAMESPACE, job + "\n" + key). Fixed
# forever: changing it would let a retried call start a second run.
RUN_ID_NAMESPACE = uuid.UUID("6b0f3c2e-5d7a-4f53-9a51-2f6d1c8e7b40")

ORIGIN_CLIENT = "client"  # jobs.models.RunOrigin.CLIENT, the run's recorded origin

# The platform's Redis broker keeps one list per priority 0-9 (settings:
# ``priority_steps``); a sender must map priorities the same way, or kombu's
# default steps (0, 3, 6, 9) would file priority 1 under 0.
REDIS_PRIORITY_STEPS = list(range(10))
REDIS_MAX_PRIORITY = 9  # 0 goes first on Redis (jobs.publishing.validate_priority)
# RabbitMQ: higher goes first, up to the queues' x-max-priority, which must be the
# platform's BROKER_QUEUE_MAX_PRIORITY (its default is this): a queue declared
# with other arguments is refused by RabbitMQ.
AMQP_QUEUE_MAX_PRIORITY = 10

REDIS_SCHEMES = ("redis", "rediss")
POOL_SIZE = 10  # broker connections a client keeps: threads sending at once beyond it wait


class DispatchError(ValueError):
    """A call the client refused before sending anything; the message says what to fix."""


class UnknownJob(DispatchError):
    """No worker has published a job by this name: nobody would read its message."""


class ArgumentsDoNotBind(DispatchError):
    """The arguments do not fit the job's published parameters (count, names, JSON types, strict JSON).

    ``field`` is ``"args"`` or ``"kwargs"``: where the fault is.
    """

    def __init__(self, message: str, field: str = "args") -> None:
        super().__init__(message)
        self.field = field


class InvalidDispatchOption(DispatchError):
    """An option that cannot hold (``field`` names it): limits, priority, eta/countdown/expires, queue."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def run_id_for(job: str, idempotency_key: str) -> str:
    """The run id every call of ``job`` with ``idempotency_key`` gets (a UUID, as text)."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{job}\n{idempotency_key}"))


@dataclass(frozen=True)
class Dispatched:
    """A sent run: its id (the task id and the ``JobRun``'s primary key) and where it went."""

    run_id: str
    job: str
    queue: str
    priority: int | None
    eta: datetime | None
    expires: datetime | None
    soft_time_limit: int | None
    hard_time_limit: int | None
    idempotency_key: str | None

    @property
    def api_path(self) -> str:
        """Where the platform's JSON API shows the run (status, progress, result, error)."""
        return f"/api/v1/runs/{self.run_id}"


def _scheme(url: str) -> str:
    return urlparse(url).scheme.lower()


class Client:
    """Sends runs to the platform's workers through the broker; thread-safe, keeps its connections.

    ``broker_url``: the workers' broker (``BROKER_URL``, else ``REDIS_URL``).
    ``catalog_url``: the Redis the workers publish the catalog to; the broker
    itself when it is Redis, else the platform's ``REDIS_URL`` (required then).
    ``service``: recorded as the run's ``requested_by`` (who asked), e.g. "billing-api".
    ``catalog_ttl``: seconds a read of the catalog is trusted (an unknown name is read again at once).
    ``queue_max_priority``: RabbitMQ only: the platform's ``BROKER_QUEUE_MAX_PRIORITY``
    (queues are declared with it; priorities above it are refused).
    """

    def __init__(
        self,
        broker_url: str,
        *,
        catalog_url: str | None = None,
        service: str = "",
        catalog_ttl: float = 5.0,
        queue_max_priority: int = AMQP_QUEUE_MAX_PRIORITY,
    ) -> None:
        import redis  # kombu's Redis transport needs it too; imported here so the module loads without it

        self._broker_is_redis = _scheme(broker_url) in REDIS_SCHEMES
        self._queue_max_priority = 0 if self._broker_is_redis else queue_max_priority
        if catalog_url is None:
            if not self._broker_is_redis:
                raise ValueError(
                    f"The broker {_scheme(broker_url)}:// is not Redis: pass catalog_url, the platform's "
                    "REDIS_URL, where workers publish the job catalog."
                )
            catalog_url = broker_url
        options = {"priority_steps": REDIS_PRIORITY_STEPS} if self._broker_is_redis else {}
        self._connection = Connection(broker_url, transport_options=options)
        # This client's own pools (kombu's global ones are keyed by URL: closing
        # one would close it for every client of the same broker in the process).
        self._producers = ProducerPool(self._connection.Pool(limit=POOL_SIZE), limit=POOL_SIZE)
        self._redis = redis.Redis.from_url(catalog_url)
        self.routing = RoutingTable(self._redis, ttl=catalog_ttl)
        self.service = service[:150]
        self._origin = f"{service or 'sendonly'}@{socket.gethostname()}"

    def close(self) -> None:
        """Let go of the broker and Redis connections (the client reconnects if used again)."""
        self._producers.force_close_all()  # type: ignore[attr-defined]  # kombu's Resource has it; stubs lack it
        self._producers.connections.force_close_all()
        self._connection.release()
        self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def jobs(self) -> dict[str, JobRoute]:
        """Every job the workers have published, by name (read fresh)."""
        return dict(self.routing.routes(fresh=True))

    def dispatch(
        self,
        job: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: datetime | float | None = None,
        soft_time_limit: int | None = None,
        hard_time_limit: int | None = None,
        idempotency_key: str | None = None,
    ) -> Dispatched:
        """Check and send one run of ``job``; return its ``Dispatched`` handle (``run_id``).

        Options as Celery's ``apply_async`` takes them: ``queue`` (default: the
        job's), ``priority`` (Redis 0-9, 0 first; RabbitMQ 0 to
        ``queue_max_priority``, higher first), ``countdown`` seconds or ``eta`` (an aware datetime; not
        both), ``expires`` (an aware datetime or seconds from now: a message
        still unstarted then is discarded and its run recorded ``missed``),
        ``soft_time_limit`` / ``hard_time_limit`` (default: the job's), and
        ``idempotency_key`` (see the module docstring).

        Raises a ``DispatchError`` (``ValueError``) before sending anything
        for an unknown job, arguments that do not fit, or options that cannot
        hold; the broker's own error when it cannot take the message.
        """
        call_args, call_kwargs = _json_arguments(args, kwargs)
        route = self._checked_route(job, call_args, call_kwargs)
        soft, hard = _time_limits(route, soft_time_limit, hard_time_limit)
        self._check_priority(priority)
        now = datetime.now(UTC)
        start, expiry = _timing(now, countdown, eta, expires)
        if queue is not None and not _is_text(queue):
            raise InvalidDispatchOption(
                f"queue {queue!r} is not a queue name; leave it out for the job's.", "queue"
            )
        if idempotency_key is not None and not _is_text(idempotency_key):
            raise InvalidDispatchOption("idempotency_key must be a non-empty string.", "idempotency_key")
        run_id = run_id_for(job, idempotency_key) if idempotency_key else str(uuid.uuid4())
        target = queue or route.queue
        headers, body = build_task_message(
            run_id,
            job,
            call_args,
            call_kwargs,
            soft_time_limit=soft,
            hard_time_limit=hard,
            origin=self._origin,
            schedule_id=None,
            scheduled_for=(start or now).isoformat(),
            eta=start.isoformat() if start else None,
            expires=expiry.isoformat() if expiry else None,
            extra_headers={"run_origin": ORIGIN_CLIENT, "requested_by": self.service},
        )
        with self._producers.acquire(block=True, timeout=10) as producer:
            try:
                publish_task_message(
                    producer,
                    headers,
                    body,
                    queue=target,
                    priority=priority,
                    queue_max_priority=self._queue_max_priority,
                )
            except BaseException:
                if producer.connection is not None:  # the next call reconnects, not on a dead socket
                    producer.connection.collect()
                raise
        return Dispatched(
            run_id=run_id,
            job=job,
            queue=target,
            priority=priority,
            eta=start,
            expires=expiry,
            soft_time_limit=soft,
            hard_time_limit=hard,
            idempotency_key=idempotency_key,
        )

    def _checked_route(self, job: str, args: list[Any], kwargs: dict[str, Any]) -> JobRoute:
        """The job's route, once the arguments bind to its parameters (read fresh before refusing)."""
        if not _is_text(job):
            raise UnknownJob(f"A job name is a non-empty string, not {job!r}.")
        route = self.routing.route(job)
        if route is None:
            known = ", ".join(sorted(self.routing.routes())) or "none yet"
            raise UnknownJob(
                f"Unknown job {job!r}: no worker has published it, so no worker would read its message. "
                f"Known jobs: {known}. Start a worker that serves it (workers publish the catalog when "
                "they start) or fix the name."
            )
        problem = _binding_problem(route, args, kwargs)
        if problem is not None:
            route = self.routing.route(job, fresh=True) or route  # re-published meanwhile?
            problem = _binding_problem(route, args, kwargs)
        if problem is not None:
            message, field = problem
            raise ArgumentsDoNotBind(message, field)
        return route

    def _check_priority(self, priority: int | None) -> None:
        if priority is None:
            return
        highest = REDIS_MAX_PRIORITY if self._broker_is_redis else self._queue_max_priority
        if not (_is_whole_number(priority) and 0 <= priority <= highest):
            order = "0 goes first on Redis" if self._broker_is_redis else "higher goes first"
            raise InvalidDispatchOption(
                f"Priority {priority!r} is out of range: 0 to {highest} ({order}); "
                "leave it out for the default.",
                "priority",
            )


def _json_arguments(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """``args`` as a list and ``kwargs`` as a dict of strict JSON, or ``ArgumentsDoNotBind``."""
    if args is not None and not isinstance(args, (list, tuple)):
        raise ArgumentsDoNotBind(f'args must be a list, like [1, "a"]; got {type(args).__name__}.', "args")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise ArgumentsDoNotBind('kwargs must be a dict with string keys, like {"a": 1}.', "kwargs")
    call_args, call_kwargs = list(args or []), dict(kwargs or {})
    for field, value in (("args", call_args), ("kwargs", call_kwargs)):
        try:
            check_strict_json(value)
            json.dumps(value, allow_nan=False)
        except NotStrictJson as exc:
            raise ArgumentsDoNotBind(f"{field} are not strict JSON: {exc}.", field) from None
        except (TypeError, ValueError) as exc:
            raise ArgumentsDoNotBind(f"{field} are not JSON: {exc}.", field) from None
        except RecursionError:
            raise ArgumentsDoNotBind(f"{field} are nested too deeply.", field) from None
    return call_args, call_kwargs


def _binding_problem(route: JobRoute, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(message, field) when the arguments do not fit the route's parameters, else None."""
    signature = signature_from_parameters(route.parameters)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {route.name}{signature}: {exc}.", "kwargs" if kwargs else "args"
    problem = argument_type_problem(route.name, route.parameters, bound, positional=len(args))
    if problem is not None:
        field, message = problem
        return message, field
    return None


def _time_limits(route: JobRoute, soft: int | None, hard: int | None) -> tuple[int | None, int | None]:
    """The effective limits (the call's, else the job's), judged as ``jobs.limits`` judges them."""
    for field, value in (("soft_time_limit", soft), ("hard_time_limit", hard)):
        if value is not None and not (_is_whole_number(value) and value > 0):
            raise InvalidDispatchOption(f"{value!r} is not a time limit: give whole seconds above 0.", field)
    soft = soft or route.soft_time_limit
    hard = hard or route.hard_time_limit
    if soft is not None and hard is not None and hard <= soft:
        raise InvalidDispatchOption(
            f"The hard limit ({hard} s) must be longer than the soft limit ({soft} s): the soft limit "
            "lets the job clean up before the hard limit kills it.",
            "hard_time_limit",
        )
    if hard is not None and route.max_hard_time_limit is not None and hard > route.max_hard_time_limit:
        raise InvalidDispatchOption(
            f"The hard limit ({hard} s) is above {route.max_hard_time_limit} s, the longest the workers' "
            "broker allows before it hands the message to another worker while this one still runs it.",
            "hard_time_limit",
        )
    return soft, hard


def _timing(
    now: datetime, countdown: float | None, eta: datetime | None, expires: datetime | float | None
) -> tuple[datetime | None, datetime | None]:
    """(eta, expiry), aware; refuses countdown with eta, naive times, an expiry before the start."""
    if countdown is not None and eta is not None:
        raise InvalidDispatchOption("Give countdown or eta, not both.", "countdown")
    start: datetime | None = None
    if countdown is not None:
        if not (_is_seconds(countdown) and countdown >= 0):
            raise InvalidDispatchOption(
                f"countdown {countdown!r} is not a number of seconds >= 0.", "countdown"
            )
        start = now + timedelta(seconds=countdown)
    elif eta is not None:
        if not _is_aware(eta):
            raise InvalidDispatchOption("eta must be an aware datetime (with a time zone).", "eta")
        start = eta
    expiry: datetime | None = None
    if expires is not None:
        if isinstance(expires, datetime):
            if not _is_aware(expires):
                raise InvalidDispatchOption(
                    "expires must be an aware datetime, or seconds from now.", "expires"
                )
            expiry = expires
        elif _is_seconds(expires) and expires > 0:
            expiry = now + timedelta(seconds=expires)
        else:
            raise InvalidDispatchOption(
                f"expires {expires!r} is not a datetime or seconds above 0.", "expires"
            )
        if expiry <= (start or now):
            raise InvalidDispatchOption(
                f"expires ({expiry.isoformat()}) is not after the run's start "
                f"({(start or now).isoformat()}): "
                "the run could never start.",
                "expires",
            )
    return start, expiry


# Type checks at run time: callers are other services, often passing values
# decoded from JSON or a form, whatever the annotations say.
def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_aware(value: object) -> bool:
    return isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None
