"""The job catalog: which jobs exist, their queues, signatures and defaults.

Workers publish it at start (``worker_ready``), as does ``runplatform``; the
admin, the import path and beat read it from the database, so a web process
knows the jobs without importing worker code.

``validate_job_call`` is the one check that a schedule's job name and JSON
arguments are acceptable; it raises ``ValidationError`` keyed by field.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.models import JobDefinition


def load_job_modules() -> None:
    """Import every module that defines jobs (the same ones a worker loads)."""
    import jobs.tasks  # noqa: F401


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
                "doc": spec.doc,
                "published_by": worker[:255],
                "last_published_at": now,
            },
        )
    return len(JOB_SPECS)


def signature_of(definition: JobDefinition) -> inspect.Signature:
    params = []
    for p in definition.parameters:
        kind = getattr(inspect.Parameter, p["kind"])
        default = inspect.Parameter.empty if p.get("required") else None
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(p["name"], kind, default=default))
    return inspect.Signature(params)


def parse_json_arguments(args_text: Any, kwargs_text: Any) -> tuple[list, dict]:
    """Parse a schedule's ``args`` / ``kwargs`` (JSON text, as django-celery-beat stores them)."""
    errors: dict[str, str] = {}
    args: Any = args_text
    kwargs: Any = kwargs_text
    if isinstance(args_text, str):
        try:
            args = json.loads(args_text or "[]")
        except json.JSONDecodeError as exc:
            errors["args"] = f"Positional arguments are not valid JSON: {exc.msg} at position {exc.pos}."
    if isinstance(kwargs_text, str):
        try:
            kwargs = json.loads(kwargs_text or "{}")
        except json.JSONDecodeError as exc:
            errors["kwargs"] = f"Keyword arguments are not valid JSON: {exc.msg} at position {exc.pos}."
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
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(
            {"kwargs" if kwargs else "args": (f"The arguments do not fit {name}{signature}: {exc}.")}
        ) from None
    return definition
