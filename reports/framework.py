"""``@report`` and ``@sql_report``: a function that yields rows becomes a scheduled, stored report.

What a user writes::

    @report("reports.orders_by_customer", columns=["customer", "orders", "amount"],
            source=lambda window: Order.objects.filter(created__gte=window.start, created__lt=window.end))
    def orders_by_customer(rows, window: Window, min_amount: int = 0):
        for order in rows.iterator(chunk_size=2000):
            if order.amount >= min_amount:
                yield [order.customer, 1, order.amount]

The decorator registers a job (``jobs.framework.job``) under the report's
name, so it is in the catalog and the admin's job picker, with the report's
own parameters (``min_amount``) plus ``window_hours`` / ``window_start`` /
``window_end`` when the function takes a ``window``: that signature is what
the admin and the API check a schedule's arguments against (an unknown
name is refused before save). Parameters are given by name.

A run (the job's body, ``run_report``):

1. checks the parameters (``reports.definitions.bind_parameters``): a bad
   one fails the run at once with a sentence saying which and why;
2. with a ``source`` returning a queryset of more than ``chunk_size`` rows:
   plans primary-key ranges, sends them as a chord (``reports.chunking``)
   and returns ``RunContinues``: the chord's callback ends the run. A
   chunked report must be row-wise (each output row comes from its chunk's
   rows alone: the parts are concatenated in pk order); give
   ``chunk_size=None`` for one that aggregates across all its rows;
3. otherwise runs inline: the function's rows (a queryset source is read in
   pk order unless it is ordered) are stored in every format and delivered
   (``reports.outputs``), progress written at most once a second.

``@sql_report`` declares a report whose rows are one read-only SELECT
(``reports.sources``); the function it decorates gives only its parameters
and its description. Its SQL gets ``%(window_start)s``, ``%(window_end)s``
and each parameter by name. It always runs inline, streamed.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import QuerySet

from jobs import runs
from jobs.framework import JOB_SPECS, JobTask, RunContinues, job
from reports import chunking
from reports.definitions import (
    REPORTS,
    WINDOW_PARAMETERS,
    ReportSpec,
    Window,
    bind_parameters,
    call_with,
)
from reports.outputs import PROGRESS_INTERVAL, CountedRows, meta_for, store_and_deliver
from reports.sources import check_select_only, plan_chunks, read_only_rows

__all__ = ["Window", "report", "sql_report"]

FORMATS = ("csv", "json", "html", "xlsx")


def report(
    name: str,
    *,
    columns: Sequence[str],
    source: Callable[..., Any] | None = None,
    chunk_size: int | None = 50_000,
    formats: Sequence[str] = ("csv",),
    title: str | None = None,
    queue: str = "reports",
    soft_time_limit: int | None = None,
    hard_time_limit: int | None = None,
    max_concurrency: int | None = None,
    default_window_hours: float = 24,
    chunk_soft_time_limit: int = 300,
    chunk_hard_time_limit: int = 360,
    chunk_max_retries: int = 2,
) -> Callable[[Callable[..., Any]], JobTask]:
    """Register ``fn(rows, window, **parameters)`` as a report (``fn(window, …)`` without a source).

    ``source(window, **the parameters it names)`` gives the rows: a queryset
    (chunked above ``chunk_size`` rows) or any iterable (inline). Limits:
    ``soft/hard_time_limit`` for the run itself (planning, or the whole
    inline report) and for the merge of a chunked one; ``chunk_*`` for each
    chunk, retried ``chunk_max_retries`` times with backoff.
    ``max_concurrency=N`` caps the report's runs across all workers at N,
    and, separately, its chunks reading at once at N (a chunk over the limit
    waits off the worker, not counted as an attempt).
    """

    def decorate(fn: Callable[..., Any]) -> JobTask:
        parameters, windowed = own_parameters(name, fn, takes_rows=source is not None)
        spec = ReportSpec(
            name=name,
            title=title or first_line(fn) or name,
            columns=list(columns),
            formats=checked_formats(name, formats),
            queue=queue,
            parameters=parameters,
            windowed=windowed,
            default_window_hours=default_window_hours,
            body=fn,
            takes_rows=source is not None,
            source=source,
            chunk_size=chunk_size,
            chunk_soft_time_limit=chunk_soft_time_limit,
            chunk_hard_time_limit=chunk_hard_time_limit,
            chunk_max_retries=chunk_max_retries,
            max_concurrency=max_concurrency,
        )
        return register(spec, fn, soft_time_limit, hard_time_limit, max_concurrency)

    return decorate


def sql_report(
    name: str,
    *,
    sql: str,
    database: str = "default",
    columns: Sequence[str] | None = None,
    formats: Sequence[str] = ("csv",),
    title: str | None = None,
    queue: str = "reports",
    soft_time_limit: int | None = None,
    hard_time_limit: int | None = None,
    max_concurrency: int | None = None,
    default_window_hours: float = 24,
) -> Callable[[Callable[..., Any]], JobTask]:
    """Register a read-only SQL report; the decorated function gives its parameters and description.

    ``columns`` default to the query's own column names. The SQL must be one
    SELECT (or WITH … SELECT) naming only placeholders the report provides:
    anything else raises ``NotASelect`` here, at import.
    """

    def decorate(fn: Callable[..., Any]) -> JobTask:
        parameters, windowed = own_parameters(name, fn, takes_rows=False)
        provided = {p.name for p in parameters} | ({"window_start", "window_end"} if windowed else set())
        check_select_only(name, sql, provided)
        spec = ReportSpec(
            name=name,
            title=title or first_line(fn) or name,
            columns=list(columns) if columns is not None else None,
            formats=checked_formats(name, formats),
            queue=queue,
            parameters=parameters,
            windowed=windowed,
            default_window_hours=default_window_hours,
            sql=sql,
            database=database,
        )
        return register(spec, fn, soft_time_limit, hard_time_limit, max_concurrency)

    return decorate


def first_line(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").strip().splitlines()[0] if inspect.getdoc(fn) else ""


def checked_formats(name: str, formats: Sequence[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"report {name}: formats must be some of {', '.join(FORMATS)}, got {list(formats)}")
    return list(formats)


def own_parameters(
    name: str, fn: Callable[..., Any], *, takes_rows: bool
) -> tuple[list[inspect.Parameter], bool]:
    """The report's parameters (as keyword-only, annotations resolved), and whether it takes a window.

    ``fn``'s first parameter is its rows when it has a source; one named
    ``window`` receives the window. Everything else is a parameter of the
    report, to be given by name; ``*args``/``**kwargs`` are refused.
    """
    try:
        signature = inspect.signature(fn, eval_str=True)
    except NameError as exc:
        raise ValueError(
            f"report {name}: an annotation of {fn.__qualname__} cannot be resolved: {exc}"
        ) from exc
    listed = list(signature.parameters.values())
    if takes_rows:
        if not listed or listed[0].name == "window":
            raise ValueError(
                f"report {name}: with a source, the first parameter of {fn.__qualname__} takes the rows"
            )
        listed = listed[1:]
    windowed = any(p.name == "window" for p in listed)
    own = []
    for p in listed:
        if p.name == "window":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"report {name}: parameters are named; {fn.__qualname__} takes {p}")
        if p.name in WINDOW_PARAMETERS:
            raise ValueError(f"report {name}: {p.name!r} is the framework's window parameter; rename it")
        own.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    return own, windowed


def job_signature(spec: ReportSpec) -> inspect.Signature:
    """What the catalog publishes: the report's parameters, then the window's (all optional)."""
    window = [
        inspect.Parameter(
            "window_hours", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=float | None
        ),
        inspect.Parameter(
            "window_start", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None
        ),
        inspect.Parameter("window_end", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
    ]
    # Required ones first: a signature refuses a required keyword after an optional one only for
    # positional parameters, but the catalog and admin list them in this order.
    own = sorted(spec.parameters, key=lambda p: p.default is not inspect.Parameter.empty)
    return inspect.Signature([*own, *(window if spec.windowed else [])])


def register(
    spec: ReportSpec,
    fn: Callable[..., Any],
    soft_time_limit: int | None,
    hard_time_limit: int | None,
    max_concurrency: int | None,
) -> JobTask:
    if spec.name in REPORTS:
        raise ValueError(f"report name {spec.name!r} is registered twice")

    def run_report_job(*args: Any, **kwargs: Any) -> Any:
        return run_report(REPORTS[spec.name], task.request.id, args, kwargs)

    run_report_job.__signature__ = job_signature(spec)  # type: ignore[attr-defined]  # read by inspect
    run_report_job.__doc__ = fn.__doc__
    run_report_job.__name__ = fn.__name__
    run_report_job.__qualname__ = fn.__qualname__
    run_report_job.__module__ = fn.__module__
    options: dict[str, Any] = {}
    if max_concurrency is not None:
        options["max_concurrency"] = max_concurrency
    task = job(
        spec.name,
        queue=spec.queue,
        soft_time_limit=soft_time_limit,
        hard_time_limit=hard_time_limit,
        **options,
    )(run_report_job)
    # The merge of a chunked report runs under the report's own (effective) limits.
    limits = JOB_SPECS[spec.name]
    REPORTS[spec.name] = dataclasses.replace(
        spec, merge_soft_time_limit=limits.soft_time_limit, merge_hard_time_limit=limits.hard_time_limit
    )
    return task


def run_report(spec: ReportSpec, run_id: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The body of a report's job: check, then chunk (``RunContinues``) or run inline (the result)."""
    window, values = bind_parameters(spec, args, kwargs)
    given = {**values, **{k: v for k, v in kwargs.items() if k in WINDOW_PARAMETERS and v is not None}}
    meta = meta_for(spec, window, given)
    progress = progress_writer(run_id, total=None)
    if spec.sql is not None:
        sql_params = {
            **values,
            **({"window_start": window.start, "window_end": window.end} if window else {}),
        }
        with read_only_rows(spec.database, spec.sql, sql_params) as result:
            columns = spec.columns or result.columns
            return store_and_deliver(
                spec, run_id, columns=columns, rows=CountedRows(result, progress), meta=meta
            )
    assert spec.body is not None and spec.columns is not None  # @report sets both
    if spec.source is None:
        rows = call_with(spec.body, window, values)
        return store_and_deliver(
            spec, run_id, columns=spec.columns, rows=CountedRows(rows, progress), meta=meta
        )
    source = call_with(spec.source, window, values)
    if isinstance(source, QuerySet):
        plan = plan_chunks(source, spec.chunk_size, planning_progress(run_id)) if spec.chunk_size else None
        if plan is not None:
            runs.record_progress(run_id, done=0, total=plan.total_rows, message=f"{len(plan.ranges)} chunks")
            chunking.send_chunks(spec, run_id, window, values, plan, shown_parameters=given)
            return RunContinues(f"{len(plan.ranges)} chunks, {plan.total_rows} rows")
        if not source.query.order_by:  # no order of its own (a model's default ordering is not one)
            source = source.order_by("pk")  # the order a chunked run of it gives
        total = source.count()
        runs.record_progress(run_id, done=0, total=total)  # the bar shows its size from the start
        progress = progress_writer(run_id, total=total)
    rows = call_with(spec.body, window, values, source)
    return store_and_deliver(spec, run_id, columns=spec.columns, rows=CountedRows(rows, progress), meta=meta)


def planning_progress(run_id: Any) -> Callable[[int], Any]:
    """While a large input is split: a progress message at most once a second."""
    last_write = time.monotonic()

    def write(boundaries: int) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_INTERVAL:
            runs.record_progress(run_id, done=0, message=f"planning: {boundaries} chunks of rows so far")
            last_write = time.monotonic()

    return write


def progress_writer(run_id: Any, *, total: int | None) -> Callable[[int, bool], Any]:
    """``write(done, finished)`` for the inline path: ``done`` of ``total`` (unknown until finished)."""

    def write(done: int, finished: bool) -> None:
        runs.record_progress(run_id, done=done, total=done if finished and total is None else total)

    return write
