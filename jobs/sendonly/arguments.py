"""A job's parameters as JSON, and the checks that a call's arguments fit them. No Django.

The one implementation for workers (``jobs.framework`` describes a job's
signature with ``describe_parameters`` when it registers it), for the catalog
check inside the platform (``jobs.catalog.validate_job_call``, which wraps
these in Django's ``ValidationError``) and for the send-only client (which
checks a call against the catalog the workers publish to the broker).

A parameter is ``{"name", "kind", "required", "types"}``: ``kind`` is an
``inspect.Parameter`` kind name, ``types`` the JSON types its annotation
admits (``[]``: any JSON value).
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any

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


def signature_from_parameters(parameters: list[dict[str, Any]]) -> inspect.Signature:
    """A ``Signature`` to ``bind`` a call against (defaults are placeholders: only binding counts)."""
    params = []
    for p in parameters:
        kind = getattr(inspect.Parameter, p["kind"])
        default = inspect.Parameter.empty if p.get("required") else None
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(p["name"], kind, default=default))
    return inspect.Signature(params)


def argument_type_problem(
    job: str, parameters: list[dict[str, Any]], bound: inspect.BoundArguments, positional: int
) -> tuple[str, str] | None:
    """``(field, message)`` for the first value whose JSON type its annotation does not admit, or None.

    ``field`` is ``"args"`` or ``"kwargs"``: where the value was passed. Only
    parameters the catalog gives types for are checked (a catalog published
    before types were recorded checks nothing); ``*args`` and ``**kwargs``
    are not checked.
    """
    types_by_name = {p["name"]: p.get("types") or [] for p in parameters}
    kinds = {p["name"]: p["kind"] for p in parameters}
    for index, (pname, value) in enumerate(bound.arguments.items()):
        if kinds.get(pname) in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            continue
        problem = type_mismatch(value, types_by_name.get(pname, []))
        if problem:
            field = "args" if index < positional else "kwargs"
            return field, f"{job}: argument {pname!r}: {problem}."
    return None


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
