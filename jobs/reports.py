"""The run-summary report: per job over a window, computed by the database.

Figures per job: runs by status, failure rate (failed + timeouts + lost over
finished runs), p50/p95 duration and worst lateness. Counts and maxima are one
grouped aggregate query; percentiles use ``percentile_cont`` on PostgreSQL and,
on SQLite (which has none), one ``ORDER BY … LIMIT 1 OFFSET k`` query per job
and percentile: rows are never pulled into Python.

Edge cases: an empty window gives a report with no rows; a job with no
finished runs has a failure rate and percentiles of ``None``.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Max, Q
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from jobs.models import JobRun, RunStatus, RunSummaryReport

BAD_STATUSES = [RunStatus.FAILED, RunStatus.SOFT_TIMEOUT, RunStatus.HARD_TIMEOUT, RunStatus.LOST]
FINISHED_FOR_RATE = [RunStatus.SUCCEEDED, *BAD_STATUSES]
COLUMNS = [
    "job",
    "total",
    *[s.value for s in RunStatus],
    "failure_rate",
    "p50_duration_ms",
    "p95_duration_ms",
    "worst_lateness_ms",
]


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(f) WITHIN GROUP (ORDER BY expr)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _nearest_rank(queryset, field: str, fraction: float, count: int) -> float | None:
    """Nearest-rank percentile via one indexed ORDER BY/OFFSET query (SQLite)."""
    if count == 0:
        return None
    offset = max(0, math.ceil(fraction * count) - 1)
    value = queryset.order_by(field).values_list(field, flat=True)[offset : offset + 1]
    first = list(value)
    return float(first[0]) if first else None


def summarize_runs(window_start: datetime, window_end: datetime) -> list[dict]:
    runs = JobRun.objects.filter(scheduled_for__gte=window_start, scheduled_for__lt=window_end)
    per_status = {s.value: Count("pk", filter=Q(status=s)) for s in RunStatus}
    aggregates = {
        "total": Count("pk"),
        **per_status,
        "finished": Count("pk", filter=Q(status__in=FINISHED_FOR_RATE)),
        "bad": Count("pk", filter=Q(status__in=BAD_STATUSES)),
        "worst_lateness_ms": Max("lateness_ms"),
        "timed": Count("duration_ms"),
    }
    use_percentile_cont = connection.vendor == "postgresql"
    if use_percentile_cont:
        aggregates["p50_duration_ms"] = PercentileCont("duration_ms", 0.5)
        aggregates["p95_duration_ms"] = PercentileCont("duration_ms", 0.95)
    rows = []
    for values in runs.values("job").annotate(**aggregates).order_by("job"):
        # The aggregates are built at run time, so the plugin's row type knows only "job".
        row: dict[str, Any] = dict(values)
        if not use_percentile_cont:
            timed = runs.filter(job=row["job"], duration_ms__isnull=False)
            row["p50_duration_ms"] = _nearest_rank(timed, "duration_ms", 0.5, row["timed"])
            row["p95_duration_ms"] = _nearest_rank(timed, "duration_ms", 0.95, row["timed"])
        finished, bad = row.pop("finished"), row.pop("bad")
        row.pop("timed")
        row["failure_rate"] = round(bad / finished, 4) if finished else None
        for key in ("p50_duration_ms", "p95_duration_ms"):
            if row[key] is not None:
                row[key] = round(row[key], 1)
        rows.append({column: row.get(column) for column in COLUMNS})
    return rows


def build_run_summary(
    window_hours: int = 24, *, now: datetime | None = None, run: JobRun | None = None
) -> RunSummaryReport:
    if window_hours <= 0:
        raise ValueError(f"window_hours must be above 0, got {window_hours}")
    window_end = now or timezone.now()
    window_start = window_end - timedelta(hours=window_hours)
    return RunSummaryReport.objects.create(
        window_start=window_start,
        window_end=window_end,
        rows=summarize_runs(window_start, window_end),
        run=run,
    )


def render_csv(report: RunSummaryReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def render_html(report: RunSummaryReport) -> str:
    head = format_html_join("", "<th>{}</th>", ((c,) for c in COLUMNS))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        (
            (
                format_html_join(
                    "", "<td>{}</td>", (("" if row.get(c) is None else row.get(c),) for c in COLUMNS)
                ),
            )
            for row in report.rows
        ),
    )
    return format_html(
        "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>"
        "<body><h1>{title}</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "{empty}</body></html>",
        title=str(report),
        head=head,
        body=body,
        empty=format_html("<p>{}</p>", "No runs in this window.") if not report.rows else "",
    )
