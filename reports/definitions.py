"""What a report is once declared: its spec, its window, and the check of a run's parameters.

The registry ``REPORTS`` maps a report's job name to its ``ReportSpec``;
the decorators in ``reports.framework`` fill it, and the chunk tasks in
``reports.chunking`` read it back in the worker (each process imports the
same modules, so the same specs).

A run's parameters (``bind_parameters``) are checked in full before any row
is read: an unknown name, a missing required one, a value of the wrong JSON
type, a window that ends before it starts: ``ReportInputError`` with a
sentence naming the report and the parameter; the run fails at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from jobs.sendonly.arguments import json_types_of, type_mismatch

WINDOW_PARAMETERS = ("window_hours", "window_start", "window_end")


class ReportInputError(ValueError):
    """A run's parameters that the report cannot take; the message says which and why."""


@dataclass(frozen=True)
class Window:
    """The half-open time range ``[start, end)`` a report covers (aware datetimes)."""

    start: datetime
    end: datetime

    def to_json(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]

    @classmethod
    def from_json(cls, value: list[str] | None) -> Window | None:
        if value is None:
            return None
        return cls(datetime.fromisoformat(value[0]), datetime.fromisoformat(value[1]))


@dataclass(frozen=True)
class ReportSpec:
    """A declared report. ``body`` yields rows; ``source`` (if any) feeds it; ``sql`` replaces both."""

    name: str
    title: str
    columns: list[str] | None
    formats: list[str]
    queue: str
    parameters: list[inspect.Parameter]  # the report's own, beside the window's
    windowed: bool
    default_window_hours: float
    body: Callable[..., Any] | None = None
    takes_rows: bool = False
    source: Callable[..., Any] | None = None
    sql: str | None = None
    database: str = "default"
    chunk_size: int | None = None
    chunk_soft_time_limit: int = 300
    chunk_hard_time_limit: int = 360
    chunk_max_retries: int = 2
    max_concurrency: int | None = None  # runs at once; chunks reading at once, separately
    merge_soft_time_limit: int = 3600
    merge_hard_time_limit: int = 3900


REPORTS: dict[str, ReportSpec] = {}


def parse_time(report: str, name: str, value: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReportInputError(
            f"report {report}: {name} {value!r} is not an ISO 8601 time (e.g. 2026-11-30T07:00:00+01:00)"
        ) from None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def resolve_window(
    spec: ReportSpec,
    *,
    window_hours: float | None,
    window_start: str | None,
    window_end: str | None,
    now: datetime,
) -> Window:
    """The run's window: ``window_start`` to ``window_end`` (default now), else hours ending now."""
    if window_hours is not None and (window_start or window_end):
        raise ReportInputError(f"report {spec.name}: give window_hours or window_start/window_end, not both")
    if window_start or window_end:
        if not window_start:
            raise ReportInputError(f"report {spec.name}: window_end is given without window_start")
        start = parse_time(spec.name, "window_start", window_start)
        end = parse_time(spec.name, "window_end", window_end) if window_end else now
    else:
        hours = spec.default_window_hours if window_hours is None else window_hours
        if hours <= 0:
            raise ReportInputError(f"report {spec.name}: window_hours must be above 0, got {hours}")
        end = now
        start = now - timedelta(hours=hours)
    if end <= start:
        raise ReportInputError(
            f"report {spec.name}: the window ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    return Window(start, end)


def bind_parameters(
    spec: ReportSpec, args: tuple, kwargs: Mapping[str, Any], *, now: datetime | None = None
) -> tuple[Window | None, dict[str, Any]]:
    """Check a run's arguments against the report; return its window and its own parameters' values.

    Report parameters are named (keyword) only. Defaults fill what is not given.
    """
    if args:
        raise ReportInputError(
            f"report {spec.name}: parameters are given by name, got {len(args)} positional argument(s)"
        )
    own = {p.name: p for p in spec.parameters}
    known = [*own, *(WINDOW_PARAMETERS if spec.windowed else ())]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ReportInputError(
            f"report {spec.name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(known) or 'none'}"
        )
    values: dict[str, Any] = {}
    for name, parameter in own.items():
        if name in kwargs:
            value = kwargs[name]
            problem = type_mismatch(value, json_types_of(parameter.annotation))
            if problem:
                raise ReportInputError(f"report {spec.name}: parameter {name!r}: {problem}")
            values[name] = value
        elif parameter.default is inspect.Parameter.empty:
            raise ReportInputError(f"report {spec.name}: parameter {name!r} is required")
        else:
            values[name] = parameter.default
    if not spec.windowed:
        return None, values
    for name, types in (
        ("window_hours", ["number", "null"]),
        ("window_start", ["string", "null"]),
        ("window_end", ["string", "null"]),
    ):
        problem = type_mismatch(kwargs.get(name), types)
        if problem:
            raise ReportInputError(f"report {spec.name}: parameter {name!r}: {problem}")
    window = resolve_window(
        spec,
        window_hours=kwargs.get("window_hours"),
        window_start=kwargs.get("window_start"),
        window_end=kwargs.get("window_end"),
        now=now or timezone.now(),
    )
    return window, values


def call_with(fn: Callable[..., Any], window: Window | None, values: Mapping[str, Any], *leading: Any) -> Any:
    """Call ``fn(*leading, window=…, **the parameters it names)`` (all of them if it takes ``**kwargs``)."""
    signature = inspect.signature(fn)
    accepts_all = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    names = signature.parameters
    kwargs = {k: v for k, v in values.items() if accepts_all or k in names}
    if "window" in names or accepts_all:
        kwargs["window"] = window
    return fn(*leading, **kwargs)
