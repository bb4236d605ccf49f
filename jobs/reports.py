"""What counts as a bad ending and as an outcome, and the old run-summary records' renderings.

``BAD_STATUSES`` and ``FINISHED_FOR_RATE`` are the one definition the
dashboard (``scheduler.dashboard``) and the run summary report
(``reports.builtin.run_summary``) share. The run summary itself is a report
now (``reports.builtin``); ``render_csv`` / ``render_html`` remain only for
the ``RunSummaryReport`` rows written before it moved, which the admin still
shows (no new ones are written).
"""

from __future__ import annotations

import csv
import io

from django.utils.html import format_html, format_html_join

from jobs.models import RunStatus, RunSummaryReport

BAD_STATUSES = [RunStatus.FAILED, RunStatus.SOFT_TIMEOUT, RunStatus.HARD_TIMEOUT, RunStatus.LOST]
FINISHED_FOR_RATE = [RunStatus.SUCCEEDED, *BAD_STATUSES]
# The columns of the old records' rows.
COLUMNS = [
    "job",
    "total",
    *[s.value for s in RunStatus],
    "failure_rate",
    "p50_duration_ms",
    "p95_duration_ms",
    "worst_lateness_ms",
]


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
