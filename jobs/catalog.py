"""The job catalog: which jobs exist, their queues, signatures and defaults.

Workers publish it at start (``worker_ready``), as does ``runplatform``; the
admin, the import path and beat read it from the database, so a web process
knows the jobs without importing worker code. The same call writes it to
Redis too (``publish_routes_to_redis``), where send-only clients, which have
no database, read it as their routing table (``jobs.sendonly.routing``).

``validate_job_call`` is the one check that a schedule's job name and JSON
arguments are acceptable; it raises ``ValidationError`` keyed by field.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.limits import VISIBILITY_SHARE, broker_redelivery_timeout
from jobs.models import JobDefinition
from jobs.sendonly.arguments import (
    JSON_TYPES,
    NotStrictJson,
    argument_type_problem,
    check_strict_json,
    describe_parameters,
    json_type_of,
    json_types_of,
    signature_from_parameters,
    strict_json_loads,
    type_mismatch,
)
from jobs.sendonly.routing import JobRoute, write_routes

if TYPE_CHECKING:
    from jobs.framework import JobSpec

logger = logging.getLogger(__name__)

# Re-exported: the platform imports them from here (the code is Django-free, in jobs.sendonly).
__all__ = [
    "JSON_TYPES",
    "NotStrictJson",
    "check_argument_types",
    "check_strict_json",
    "describe_parameters",
    "json_type_of",
    "json_types_of",
    "parse_json_arguments",
    "publish_catalog",
    "signature_of",
    "strict_json_loads",
    "type_mismatch",
    "validate_job_call",
]


def load_job_modules() -> None:
    """Import every installed app's ``tasks`` module (``jobs.tasks``, ``reports.tasks``): the jobs served.

    By Django's app registry, so ``jobs`` names no app above it. Not Celery's
    ``import_default_modules``: its Django fixup runs the system checks,
    which call this again.
    """
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")


def publish_catalog(worker: str = "") -> int:
    """Upsert one ``JobDefinition`` per registered job; return how many."""
    from jobs.framework import JOB_SPECS

    load_job_modules()
    now = timezone.now()
    for spec in JOB_SPECS.values():
        JobDefinition.objects.update_or_create(
            name=spec.name,
            defaults={
                "queue": spec.queue,
                "parameters": spec.parameters,
                "soft_time_limit": spec.soft_time_limit,
                "hard_time_limit": spec.hard_time_limit,
                "max_retries": spec.max_retries,
                "max_concurrency": spec.max_concurrency,
                "rate_limit": spec.rate_limit or "",
                "doc": spec.doc,
                "published_by": worker[:255],
                "last_published_at": now,
            },
        )
    publish_routes_to_redis(JOB_SPECS.values(), worker=worker, published_at=now)
    return len(JOB_SPECS)


def catalog_redis_url() -> str:
    """Where send-only clients read the catalog: the broker when it is Redis, else ``REDIS_URL``."""
    broker = str(settings.CELERY_BROKER_URL)
    return broker if broker.startswith(("redis://", "rediss://")) else str(settings.REDIS_URL)


def publish_routes_to_redis(specs: Iterable[JobSpec], *, worker: str, published_at: datetime) -> int:
    """Write the jobs' routes to the Redis hash send-only clients read (``jobs.sendonly.routing``).

    The same facts as the ``JobDefinition`` rows, plus the longest hard limit
    this broker allows (``jobs.limits``). A Redis that cannot be reached is
    logged, not raised: the database copy is written and the platform works;
    send-only clients see the jobs once a later publish (the next worker
    start, ``manage.py publish_catalog``) reaches it.
    """
    import redis

    redelivery = broker_redelivery_timeout()
    ceiling = int(redelivery[0] * VISIBILITY_SHARE) if redelivery else None
    routes = [
        JobRoute(
            name=spec.name,
            queue=spec.queue,
            soft_time_limit=spec.soft_time_limit,
            hard_time_limit=spec.hard_time_limit,
            parameters=spec.parameters,
            published_at=published_at.isoformat(),
            published_by=worker[:255],
            max_hard_time_limit=ceiling,
        )
        for spec in specs
    ]
    client = redis.Redis.from_url(catalog_redis_url(), socket_timeout=5, socket_connect_timeout=5)
    try:
        return write_routes(client, routes)
    except redis.RedisError as exc:
        logger.warning("job catalog not published to Redis for send-only clients: %s", exc)
        return 0
    finally:
        client.close()


def signature_of(definition: JobDefinition) -> inspect.Signature:
    return signature_from_parameters(definition.parameters)


def _parse_json_field(text: Any, default: str, what: str) -> tuple[Any, str | None]:
    """(value, error): ``text`` parsed as strict JSON if it is text, else checked as it is."""
    try:
        if isinstance(text, str):
            return strict_json_loads(text or default), None
        check_strict_json(text)
        return text, None
    except json.JSONDecodeError as exc:
        return None, f"{what} are not valid JSON: {exc.msg} at position {exc.pos}."
    except NotStrictJson as exc:
        return None, f"{what} are not strict JSON: {exc}."
    except RecursionError:
        return None, f"{what} are nested too deeply."


def parse_json_arguments(args_text: Any, kwargs_text: Any) -> tuple[list, dict]:
    """Parse a schedule's ``args`` / ``kwargs`` (JSON text, as django-celery-beat stores them).

    Strict JSON only (:func:`strict_json_loads`); ``args`` must be a list and
    ``kwargs`` an object. Raises ``ValidationError`` keyed by field.
    """
    errors: dict[str, str] = {}
    args, args_error = _parse_json_field(args_text, "[]", "Positional arguments")
    kwargs, kwargs_error = _parse_json_field(kwargs_text, "{}", "Keyword arguments")
    if args_error:
        errors["args"] = args_error
    if kwargs_error:
        errors["kwargs"] = kwargs_error
    if "args" not in errors and not isinstance(args, list):
        errors["args"] = (
            f'Positional arguments must be a JSON list, like [1, "a"]; got {type(args).__name__}.'
        )
    if "kwargs" not in errors and not isinstance(kwargs, dict):
        errors["kwargs"] = (
            f'Keyword arguments must be a JSON object, like {{"a": 1}}; got {type(kwargs).__name__}.'
        )
    if errors:
        raise ValidationError(errors)
    return args, kwargs


def validate_job_call(name: str, args_text: Any = "[]", kwargs_text: Any = "{}") -> JobDefinition:
    """Check that ``name`` is a published job and the arguments bind to its signature."""
    definition = JobDefinition.objects.filter(name=name).first()
    if definition is None:
        known = ", ".join(JobDefinition.objects.values_list("name", flat=True)) or "none yet"
        raise ValidationError(
            {
                "task": f"Unknown job {name!r}: no worker has published it. "
                f"Known jobs: {known}. Start a worker (it publishes the catalog) or fix the name."
            }
        )
    args, kwargs = parse_json_arguments(args_text, kwargs_text)
    signature = signature_of(definition)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(
            {"kwargs" if kwargs else "args": (f"The arguments do not fit {name}{signature}: {exc}.")}
        ) from None
    check_argument_types(definition, bound, positional=len(args))
    return definition


def check_argument_types(definition: JobDefinition, bound: inspect.BoundArguments, positional: int) -> None:
    """Refuse a value whose JSON type the job's annotation does not admit (``seconds: "abc"``).

    ``jobs.sendonly.arguments.argument_type_problem`` decides; this raises its
    answer as a ``ValidationError`` keyed by ``args`` or ``kwargs``.
    """
    problem = argument_type_problem(definition.name, definition.parameters, bound, positional)
    if problem:
        field, message = problem
        raise ValidationError({field: message})
