"""A report's renderings (CSV, JSON, HTML, XLSX), each written row by row to a local file.

``reports.storage.store_report`` opens one rendering per format in a
temporary directory, feeds every row to each of them as it comes from the
report (one pass over the rows), then calls ``finish`` and saves the files.
A rendering holds at most one row in memory (HTML: its capped table goes to
a second local file), so a report of millions of rows costs the memory of
one row, not of the report.

Values, the same way in every format: ``None`` is an empty cell (``null``
in JSON); a datetime is written in ISO 8601 with its offset (XLSX: as a date
cell in UTC, since Excel keeps no zone); a ``Decimal`` keeps its exact
digits (JSON: as a string, as Django's encoder does; XLSX: as a number, which
Excel holds as a double); a UUID as its text; a float that is not finite as
an empty cell (JSON has no NaN). Anything else is written as ``str(value)``.

In CSV, a text cell that a spreadsheet would take for a formula (its first
character ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written
after a ``'``, as OWASP advises against CSV injection: a report opened in
Excel never runs what a row held (``"=HYPERLINK(…)"``). Only text: numbers,
negative ones too, are written as they are. XLSX writes every text cell as
a string, never as a formula; JSON and HTML have no formulas.

Limits, checked as rows arrive, so a report that breaks one stops there:

- XLSX holds at most 1,048,575 data rows under its header (Excel's sheet
  limit; ``REPORT_XLSX_MAX_ROWS`` lowers it): the row after the limit raises
  ``ReportTooLarge`` before anything is written for it. A sheet whose XML
  passes 2 GiB (very wide rows) would need ZIP64, which not every Excel
  opens: ``ReportTooLarge`` too, when the file is completed.
- HTML is a page for people: it shows the first ``REPORT_HTML_MAX_ROWS``
  rows (10,000 by default) and says above the table "showing N of M rows"
  and which rendering has them all. It is never taken for the whole report:
  its ``rows`` count is the rows it shows.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import xlsxwriter
import xlsxwriter.exceptions
from django.conf import settings
from django.utils.duration import duration_iso_string

XLSX_SHEET_MAX_ROWS = 1_048_575  # Excel's 1,048,576 rows, less the header


@dataclass(frozen=True)
class ReportMeta:
    """What a rendering says about its report besides the rows."""

    title: str
    parameters: dict
    window_start: datetime | None
    window_end: datetime | None
    generated_at: datetime


class ReportTooLarge(Exception):
    """A report has more rows than a format (or the platform) takes; nothing of it is stored.

    ``format`` is ``None`` for the overall ``REPORT_MAX_ROWS`` bound.
    """

    def __init__(self, message: str, *, report: str, format: str | None, limit: int) -> None:
        super().__init__(message)
        self.report = report
        self.format = format
        self.limit = limit


def xlsx_max_rows() -> int:
    """``REPORT_XLSX_MAX_ROWS``, never above what a sheet holds (a test may lower it)."""
    return min(settings.REPORT_XLSX_MAX_ROWS, XLSX_SHEET_MAX_ROWS)


# --- values -----------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes exactly (see the module's rules)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return duration_iso_string(value)
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)


def text_value(value: Any) -> str:
    """``value`` as the text of a CSV or HTML cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return duration_iso_string(value)
    if isinstance(value, (dict, list)):
        return json.dumps(json_value(value), ensure_ascii=False)
    return str(value)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """``value`` as a CSV cell: its text, after a ``'`` when it is text a spreadsheet would evaluate."""
    text = text_value(value)
    if isinstance(value, str) and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def window_text(meta: ReportMeta) -> str:
    if meta.window_start is None and meta.window_end is None:
        return "(none)"
    start = meta.window_start.isoformat() if meta.window_start else "…"
    end = meta.window_end.isoformat() if meta.window_end else "…"
    return f"{start} to {end}"


# --- renderings -------------------------------------------------------------------


class Rendering:
    """One format's file, written row by row; ``finish`` completes it and returns its row count.

    ``close`` releases what it holds open without completing the file (used
    when the report failed; the caller deletes the directory).
    """

    format: ClassVar[str]
    extension: ClassVar[str]
    content_type: ClassVar[str]

    def __init__(self, path: Path, *, report: str, columns: Sequence[str], meta: ReportMeta) -> None:
        self.path = path
        self.report = report
        self.columns = list(columns)
        self.meta = meta
        self.rows = 0

    def write(self, row: Sequence[Any]) -> None:
        raise NotImplementedError

    def finish(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class CsvRendering(Rendering):
    """UTF-8 CSV (the csv module's quoting), a header row of the columns, ``\\r\\n`` line ends."""

    format = "csv"
    extension = "csv"
    content_type = "text/csv; charset=utf-8"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.file = path.open("w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.columns)

    def write(self, row: Sequence[Any]) -> None:
        self.writer.writerow([csv_cell(v) for v in row])
        self.rows += 1

    def finish(self) -> int:
        self.file.close()
        return self.rows

    def close(self) -> None:
        self.file.close()


class JsonRendering(Rendering):
    """One JSON document, its ``rows`` array written a row at a time.

    ``{"report", "title", "parameters", "window": {"start", "end"},
    "generated_at", "columns", "rows": [[...], ...], "row_count"}``; each row
    is a list in the order of ``columns``.
    """

    format = "json"
    extension = "json"
    content_type = "application/json"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.file = path.open("w", encoding="utf-8")
        head = {
            "report": self.report,
            "title": self.meta.title,
            "parameters": json_value(self.meta.parameters),
            "window": {"start": json_value(self.meta.window_start), "end": json_value(self.meta.window_end)},
            "generated_at": json_value(self.meta.generated_at),
            "columns": self.columns,
        }
        # The head's closing brace is replaced by the rows array, left open.
        self.file.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [')

    def write(self, row: Sequence[Any]) -> None:
        self.file.write(
            ("\n" if self.rows == 0 else ",\n")
            + json.dumps([json_value(v) for v in row], ensure_ascii=False, allow_nan=False)
        )
        self.rows += 1

    def finish(self) -> int:
        self.file.write(f'\n], "row_count": {self.rows}}}\n')
        self.file.close()
        return self.rows

    def close(self) -> None:
        self.file.close()


HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2;position:sticky;top:0}"
    "tr:nth-child(even) td{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}"
    "dt{font-weight:600}.note{background:#fff4ce;padding:8px;border:1px solid #e0c060}"
)


class HtmlRendering(Rendering):
    """A standalone page: title, parameters, window, generation time, row count, then the table.

    The rows go to a side file first, since the page's head states how many
    rows the report has, which is known only at the end; that side file
    holds at most ``REPORT_HTML_MAX_ROWS`` rows. Every value is escaped.
    """

    format = "html"
    extension = "html"
    content_type = "text/html; charset=utf-8"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.limit = settings.REPORT_HTML_MAX_ROWS
        self.seen = 0
        self.body_path = path.with_name(path.name + ".rows")
        self.body = self.body_path.open("w", encoding="utf-8")

    def write(self, row: Sequence[Any]) -> None:
        self.seen += 1
        if self.rows >= self.limit:
            return
        cells = "".join(
            f'<td class="n">{html.escape(text_value(v))}</td>'
            if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)
            else f"<td>{html.escape(text_value(v))}</td>"
            for v in row
        )
        self.body.write(f"<tr>{cells}</tr>\n")
        self.rows += 1

    def head(self) -> str:
        meta = self.meta
        e = html.escape
        parameters = json.dumps(json_value(meta.parameters), ensure_ascii=False, sort_keys=True)
        shown = f"{self.seen:,}"
        note = ""
        if self.seen > self.rows:
            shown = f"{self.seen:,} (this page shows the first {self.rows:,})"
            note = (
                f'<p class="note">Showing the first {self.rows:,} of {self.seen:,} rows: a page this long '
                f"is not readable. The CSV, JSON or XLSX rendering of this report has every row.</p>"
            )
        heads = "".join(f"<th>{e(c)}</th>" for c in self.columns)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(meta.title)}</title><style>{HTML_STYLE}</style></head><body>\n"
            f"<h1>{e(meta.title)}</h1>\n<dl>"
            f"<dt>Report</dt><dd>{e(self.report)}</dd>"
            f"<dt>Parameters</dt><dd><code>{e(parameters)}</code></dd>"
            f"<dt>Window</dt><dd>{e(window_text(meta))}</dd>"
            f"<dt>Generated at</dt><dd>{e(meta.generated_at.isoformat())}</dd>"
            f"<dt>Rows</dt><dd>{shown}</dd></dl>\n{note}"
            f"<table>\n<thead><tr>{heads}</tr></thead>\n<tbody>\n"
        )

    def finish(self) -> int:
        self.body.close()
        with self.path.open("w", encoding="utf-8") as page, self.body_path.open(encoding="utf-8") as body:
            page.write(self.head())
            shutil.copyfileobj(body, page)
            page.write("</tbody>\n</table>\n</body></html>\n")
        self.body_path.unlink()
        return self.rows

    def close(self) -> None:
        self.body.close()


class XlsxRendering(Rendering):
    """One sheet, a bold header row, written by XlsxWriter in ``constant_memory`` mode (row by row).

    Values are written by their Python type, never guessed from text: a
    string is a string cell even if it starts with ``=`` (no formula
    injection, no auto links). Text over Excel's 32,767 characters is cut.
    """

    format = "xlsx"
    extension = "xlsx"
    content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.limit = xlsx_max_rows()
        # XlsxWriter's own temporary files go beside ours (local disk, deleted with them).
        self.workbook = xlsxwriter.Workbook(
            str(path), {"constant_memory": True, "tmpdir": str(path.parent), "nan_inf_to_errors": True}
        )
        self.sheet = self.workbook.add_worksheet((self.meta.title or self.report)[:31].translate(SHEET_NAME))
        self.datetime_format = self.workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.date_format = self.workbook.add_format({"num_format": "yyyy-mm-dd"})
        bold = self.workbook.add_format({"bold": True})
        for col, name in enumerate(self.columns):
            self.sheet.write_string(0, col, name, bold)

    def write(self, row: Sequence[Any]) -> None:
        if self.rows >= self.limit:
            raise ReportTooLarge(
                f"report {self.report}: XLSX holds at most {self.limit:,} data rows and this report has more "
                f"(row {self.rows + 1:,} refused); ask for CSV or JSON, or narrow the window",
                report=self.report,
                format=self.format,
                limit=self.limit,
            )
        self.rows += 1
        for col, value in enumerate(row):
            self.write_cell(self.rows, col, value)

    def write_cell(self, row: int, col: int, value: Any) -> None:
        sheet = self.sheet
        if value is None:
            return
        if isinstance(value, bool):
            sheet.write_boolean(row, col, value)
        elif isinstance(value, (int, float, Decimal)):
            if isinstance(value, float) and not math.isfinite(value):
                return
            sheet.write_number(row, col, float(value))
        elif isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            sheet.write_datetime(row, col, value, self.datetime_format)
        elif isinstance(value, date):
            # A naive midnight: Excel has no zones, and a date has none either.
            sheet.write_datetime(row, col, datetime.combine(value, time()), self.date_format)
        else:
            sheet.write_string(row, col, text_value(value)[:32_767])

    def finish(self) -> int:
        try:
            self.workbook.close()
        except xlsxwriter.exceptions.FileSizeError:
            # Over 2 GiB of sheet XML needs ZIP64, which not every Excel opens: refused, not sent broken.
            raise ReportTooLarge(
                f"report {self.report}: its XLSX ({self.rows:,} rows) would exceed the 2 GiB a plain "
                f"XLSX file holds; ask for CSV or JSON, or narrow the window",
                report=self.report,
                format=self.format,
                limit=self.rows,
            ) from None
        return self.rows

    def close(self) -> None:
        # Not ``workbook.close()``: that would write the zip of an abandoned report. The
        # sheet's row file is closed here; the files themselves go with their directory.
        for sheet in self.workbook.worksheets():
            sheet._opt_close()


SHEET_NAME = str.maketrans({c: "_" for c in "[]:*?/\\"})

RENDERINGS: dict[str, type[Rendering]] = {
    r.format: r for r in (CsvRendering, JsonRendering, HtmlRendering, XlsxRendering)
}


def rendering_class(format: str) -> type[Rendering]:
    """The rendering of ``format``; ``ValueError`` naming the known ones otherwise."""
    try:
        return RENDERINGS[format]
    except KeyError:
        raise ValueError(f"unknown report format {format!r}; known: {', '.join(RENDERINGS)}") from None


def content_type_of(format: str) -> str:
    cls = RENDERINGS.get(format)
    return cls.content_type if cls else "application/octet-stream"
