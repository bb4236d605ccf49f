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
import math
import types
import typing
from collections.abc import Callable
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


# JSON type names per Python annotation; a parameter whose annotation is not
# among these (or has none) accepts any JSON value.
JSON_TYPES: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
    type(None): "null",
}


def json_types_of(annotation: Any) -> list[str]:
    """The JSON types an annotation admits (``float | None`` → number, null); [] means any."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [json_types_of(arg) for arg in typing.get_args(annotation)]
        if any(not m for m in members):
            return []
        return sorted({t for m in members for t in m})
    name = JSON_TYPES.get(typing.get_origin(annotation) or annotation)
    return [name] if name else []


def describe_parameters(fn: Callable[..., Any]) -> list[dict[str, Any]]:
    """The function's signature as JSON: enough to check that arguments bind and have the right types."""
    try:
        parameters = inspect.signature(fn, eval_str=True).parameters.values()
    except (NameError, TypeError):  # an annotation that cannot be resolved: no type checks
        parameters = inspect.signature(fn).parameters.values()
    return [
        {
            "name": p.name,
            "kind": p.kind.name,
            "required": p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD),
            "types": [] if isinstance(p.annotation, str) else json_types_of(p.annotation),
        }
        for p in parameters
    ]


def json_type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return JSON_TYPES.get(type(value), type(value).__name__)


def type_mismatch(value: Any, allowed: list[str]) -> str | None:
    """Why ``value`` is not one of the JSON types ``allowed`` (an integer is a number), or None."""
    if not allowed:
        return None
    found = json_type_of(value)
    if found in allowed or (found == "integer" and "number" in allowed):
        return None
    return f"expected {' or '.join(allowed)}, got {found} {json.dumps(value)[:60]}"


def signature_of(definition: JobDefinition) -> inspect.Signature:
    params = []
    for p in definition.parameters:
        kind = getattr(inspect.Parameter, p["kind"])
        default = inspect.Parameter.empty if p.get("required") else None
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(p["name"], kind, default=default))
    return inspect.Signature(params)


class NotStrictJson(ValueError):
    """JSON that Python's parser accepts but PostgreSQL's jsonb and other languages refuse."""


def _refuse_constant(name: str) -> Any:
    raise NotStrictJson(f"{name} is not a JSON number (strict JSON has no NaN or Infinity)")


def strict_json_loads(text: str) -> Any:
    """``json.loads`` that refuses what strict JSON (RFC 8259, PostgreSQL's jsonb) refuses.

    Python's parser accepts ``NaN``, ``Infinity`` and ``-Infinity`` and keeps
    ``"\\u0000"`` and lone surrogates in strings; jsonb refuses all of them, so a run carrying
    one cannot even be recorded. Raises ``json.JSONDecodeError`` for syntax
    and ``NotStrictJson`` for those values.
    """
    value = json.loads(text, parse_constant=_refuse_constant)
    check_strict_json(value)
    return value


def check_strict_json(value: Any) -> None:
    """Raise ``NotStrictJson`` for a non-finite number or a NUL character anywhere in ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise NotStrictJson(f"{item} is not a JSON number (strict JSON has no NaN or Infinity)")
        if isinstance(item, str):
            if "\x00" in item:
                raise NotStrictJson("a string holds a NUL character (\\u0000), which JSON stores cannot keep")
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise NotStrictJson(
                        "a string holds a lone surrogate (\\ud800-\\udfff), which is not text"
                    ) from None
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


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

    Only parameters the catalog gives types for are checked (a catalog
    published before types were recorded checks nothing); ``*args`` and
    ``**kwargs`` are not checked.
    """
    types_by_name = {p["name"]: p.get("types") or [] for p in definition.parameters}
    kinds = {p["name"]: p["kind"] for p in definition.parameters}
    for index, (pname, value) in enumerate(bound.arguments.items()):
        if kinds.get(pname) in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            continue
        problem = type_mismatch(value, types_by_name.get(pname, []))
        if problem:
            field = "args" if index < positional else "kwargs"
            raise ValidationError({field: f"{definition.name}: argument {pname!r}: {problem}."})
