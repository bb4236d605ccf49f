"""The renderings of a stored report, each read back the way its reader would.

CSV with the csv module, JSON with ``json.loads``, HTML with an HTML parser,
XLSX by opening the zip and reading the sheet's XML (openpyxl is not a
dependency). Also: the limits (XLSX rows, ``REPORT_MAX_ROWS``, the HTML
cap), and memory that stays flat when the report grows tenfold.
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from jobs.models import JobRun, RunStatus
from reports.models import ReportFile
from reports.storage import ReportMeta, ReportTooLarge, reports_storage, store_report
from tests.support import report_storage
from tests.support.report_storage import stored_files

reports_dir = report_storage.reports_dir  # a fixture: the reports storage in a temporary directory

pytestmark = pytest.mark.django_db

REPORT = "reports.orders"
COLUMNS = ["customer", "orders", "amount", "placed_at", "id", "note"]
WHEN = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
META = ReportMeta(
    title="Orders by customer",
    parameters={"min_amount": 10, "region": "EU <west>"},
    window_start=WHEN - timedelta(days=1),
    window_end=WHEN,
    generated_at=WHEN + timedelta(minutes=3),
)
ORDER_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
ROWS = [
    ["Ada, Ltd.", 3, Decimal("1234.50"), WHEN, ORDER_ID, 'says "hi"\nthen leaves'],
    ["<script>alert(1)</script>", 0, None, None, None, "=1+1"],
    ["Zoë & Co", 7, 2.5, date(2026, 11, 1), "plain", True],
]


@pytest.fixture
def run() -> JobRun:
    return JobRun.objects.create(job=REPORT, status=RunStatus.RUNNING, scheduled_for=WHEN)


def store(run, formats, rows=ROWS, columns=COLUMNS) -> dict[str, ReportFile]:
    files = store_report(run_id=run.pk, report=REPORT, columns=columns, rows=rows, formats=formats, meta=META)
    return {f.format: f for f in files}


def content(report_file: ReportFile) -> bytes:
    with reports_storage().open(report_file.storage_name, "rb") as fh:
        return fh.read()


# --- CSV ---------------------------------------------------------------------------------


def test_csv_has_the_columns_then_every_row_quoted_by_the_csv_module(reports_dir, run):
    csv_file = store(run, ["csv"])["csv"]

    lines = list(csv.reader(io.StringIO(content(csv_file).decode("utf-8"), newline="")))

    assert lines[0] == COLUMNS
    assert lines[1] == [
        "Ada, Ltd.",
        "3",
        "1234.50",
        "2026-11-30T07:00:00+00:00",
        str(ORDER_ID),
        'says "hi"\nthen leaves',
    ]
    # None: an empty cell; text a spreadsheet would evaluate: after a "'" (CSV injection)
    assert lines[2] == ["<script>alert(1)</script>", "0", "", "", "", "'=1+1"]
    assert lines[3] == ["Zoë & Co", "7", "2.5", "2026-11-01", "plain", "True"]
    assert len(lines) == 4
    assert csv_file.rows == 3 and csv_file.size_bytes == len(content(csv_file))


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_text_a_spreadsheet_would_evaluate_is_written_after_a_quote(reports_dir, run, text):
    csv_file = store(run, ["csv"], rows=[[text, -5, Decimal("-1.5"), None, None, "a=b"]])["csv"]

    lines = list(csv.reader(io.StringIO(content(csv_file).decode("utf-8"), newline="")))

    # Numbers are not text: a negative one is written as it is, as is text with "=" inside.
    assert lines[1] == ["'" + text, "-5", "-1.5", "", "", "a=b"]


# --- JSON --------------------------------------------------------------------------------


def test_json_is_one_document_with_the_report_meta_and_every_row(reports_dir, run):
    json_file = store(run, ["json"])["json"]

    document = json.loads(content(json_file))

    assert document["report"] == REPORT
    assert document["title"] == "Orders by customer"
    assert document["parameters"] == {"min_amount": 10, "region": "EU <west>"}
    assert document["window"] == {"start": "2026-11-29T07:00:00+00:00", "end": "2026-11-30T07:00:00+00:00"}
    assert document["generated_at"] == "2026-11-30T07:03:00+00:00"
    assert document["columns"] == COLUMNS
    assert document["rows"] == [
        ["Ada, Ltd.", 3, "1234.50", "2026-11-30T07:00:00+00:00", str(ORDER_ID), 'says "hi"\nthen leaves'],
        ["<script>alert(1)</script>", 0, None, None, None, "=1+1"],
        ["Zoë & Co", 7, 2.5, "2026-11-01", "plain", True],
    ]
    assert document["row_count"] == 3


def test_json_of_no_rows_and_of_values_json_has_no_word_for_is_still_valid(reports_dir, run):
    empty = store(run, ["json"], rows=[])["json"]
    assert json.loads(content(empty))["rows"] == []

    odd = store(
        run,
        ["json"],
        rows=[[float("nan"), float("inf"), timedelta(minutes=90), {"a": [Decimal("1.5")]}]],
        columns=["nan", "inf", "duration", "nested"],
    )["json"]
    assert json.loads(content(odd))["rows"] == [[None, None, "P0DT01H30M00S", {"a": ["1.5"]}]]


# --- HTML --------------------------------------------------------------------------------


class PageReader(HTMLParser):
    """The page's title, its definition list, its note and its table, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.facts: dict[str, str] = {}
        self.note = ""
        self.head: list[str] = []
        self.rows: list[list[str]] = []
        self.scripts = 0
        self._tag: str | None = None
        self._term = ""
        self._in_note = False

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
        if tag == "p" and ("class", "note") in attrs:
            self._in_note = True

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_note = False
        self._tag = None

    def handle_data(self, data):
        if self._tag == "title":
            self.title += data
        elif self._tag == "dt":
            self._term = data
        elif self._tag in ("dd", "code") and self._term:
            self.facts[self._term] = self.facts.get(self._term, "") + data
        elif self._tag in ("td", "th") and self.rows:
            self.rows[-1][-1] += data
        if self._in_note:
            self.note += data


def read_page(data: bytes) -> PageReader:
    page = PageReader()
    page.feed(data.decode("utf-8"))
    page.close()
    page.head, page.rows = page.rows[0], page.rows[1:]
    return page


def test_html_is_a_standalone_page_with_the_report_meta_and_an_escaped_table(reports_dir, run):
    html_file = store(run, ["html"])["html"]

    page = read_page(content(html_file))

    assert page.title == "Orders by customer"
    assert page.facts["Report"] == REPORT
    assert json.loads(page.facts["Parameters"]) == {"min_amount": 10, "region": "EU <west>"}
    assert page.facts["Window"] == "2026-11-29T07:00:00+00:00 to 2026-11-30T07:00:00+00:00"
    assert page.facts["Generated at"] == "2026-11-30T07:03:00+00:00"
    assert page.facts["Rows"] == "3"
    assert page.head == COLUMNS
    assert page.rows[1][0] == "<script>alert(1)</script>"  # shown as text...
    assert page.scripts == 0  # ...never run
    assert page.rows[2] == ["Zoë & Co", "7", "2.5", "2026-11-01", "plain", "True"]
    assert page.note == ""
    assert html_file.rows == 3


def test_html_shows_the_first_rows_up_to_its_cap_and_says_so(reports_dir, run, settings):
    settings.REPORT_HTML_MAX_ROWS = 5
    rows = [[f"c{i}", i] for i in range(12)]

    files = store(run, ["csv", "html"], rows=rows, columns=["customer", "orders"])

    page = read_page(content(files["html"]))
    assert [r[0] for r in page.rows] == ["c0", "c1", "c2", "c3", "c4"]
    assert "Showing the first 5 of 12 rows" in page.note
    assert page.facts["Rows"].startswith("12")
    assert files["html"].rows == 5  # what the file holds
    assert files["csv"].rows == 12  # the whole report, beside it


# --- XLSX --------------------------------------------------------------------------------

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
EXCEL_EPOCH = datetime(1899, 12, 30)


def excel_time(serial: float) -> datetime:
    """A date cell's serial number as a datetime, to the second (the serial is a double)."""
    return EXCEL_EPOCH + timedelta(seconds=round(serial * 86_400))


def column_index(ref: str) -> int:
    letters = "".join(c for c in ref if c.isalpha())
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def read_sheet(data: bytes) -> tuple[list[list[Any]], set[tuple[int, int]]]:
    """The first sheet's cells by row (inline and shared strings, numbers, booleans), and which are bold."""
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        names = book.namelist()
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = [
                "".join(t.text or "" for t in si.iter(f"{{{NS['m']}}}t")) for si in root.findall("m:si", NS)
            ]
        styles = ElementTree.fromstring(book.read("xl/styles.xml"))
        fonts = styles.findall("m:fonts/m:font", NS)
        bold_fonts = {i for i, font in enumerate(fonts) if font.find("m:b", NS) is not None}
        formats = styles.findall("m:cellXfs/m:xf", NS)
        bold_styles = {i for i, xf in enumerate(formats) if int(xf.get("fontId", "0")) in bold_fonts}
        sheet = ElementTree.fromstring(book.read("xl/worksheets/sheet1.xml"))
    rows: list[list[Any]] = []
    bold: set[tuple[int, int]] = set()
    for row in sheet.findall("m:sheetData/m:row", NS):
        number = int(row.get("r", "")) - 1
        while len(rows) <= number:
            rows.append([])
        for cell in row.findall("m:c", NS):
            col = column_index(cell.get("r", ""))
            kind = cell.get("t")
            value: Any
            if kind == "inlineStr":
                value = "".join(t.text or "" for t in cell.iter(f"{{{NS['m']}}}t"))
            elif kind == "s":
                value = shared[int(cell.findtext("m:v", "", NS))]
            elif kind == "b":
                value = cell.findtext("m:v", namespaces=NS) == "1"
            else:
                value = float(cell.findtext("m:v", "", NS))
            assert cell.find("m:f", NS) is None, "no cell is a formula"
            while len(rows[number]) <= col:
                rows[number].append(None)
            rows[number][col] = value
            if int(cell.get("s", "0")) in bold_styles:
                bold.add((number, col))
    return rows, bold


def test_xlsx_has_a_bold_header_and_cells_typed_from_the_values(reports_dir, run):
    xlsx_file = store(run, ["xlsx"])["xlsx"]

    rows, bold = read_sheet(content(xlsx_file))

    assert rows[0] == COLUMNS
    assert bold == {(0, col) for col in range(len(COLUMNS))}  # the header, and only the header
    ada, script, zoe = rows[1], rows[2], rows[3]
    assert ada[:3] == ["Ada, Ltd.", 3.0, 1234.5]
    assert excel_time(ada[3]) == datetime(2026, 11, 30, 7, 0)  # a date cell, in UTC
    assert ada[4:] == [str(ORDER_ID), 'says "hi"\nthen leaves']
    assert script == ["<script>alert(1)</script>", 0.0, None, None, None, "=1+1"]  # text, not a formula
    assert zoe[:3] == ["Zoë & Co", 7.0, 2.5]
    assert excel_time(zoe[3]) == datetime(2026, 11, 1)
    assert zoe[4:] == ["plain", True]
    assert xlsx_file.rows == 3


def test_xlsx_refuses_the_row_after_its_limit_and_nothing_is_stored(reports_dir, run, settings):
    settings.REPORT_XLSX_MAX_ROWS = 10
    rows = [[f"c{i}", i] for i in range(10)]
    assert store(run, ["xlsx"], rows=rows, columns=["customer", "orders"])["xlsx"].rows == 10  # at the limit
    ReportFile.objects.all().delete()
    before = stored_files(reports_dir)

    with pytest.raises(ReportTooLarge) as refused:
        store(run, ["csv", "xlsx"], rows=[*rows, ["c10", 10]], columns=["customer", "orders"])

    assert str(refused.value) == (
        "report reports.orders: XLSX holds at most 10 data rows and this report has more "
        "(row 11 refused); ask for CSV or JSON, or narrow the window"
    )
    assert (refused.value.format, refused.value.limit) == ("xlsx", 10)
    assert not ReportFile.objects.exists()
    assert stored_files(reports_dir) == before


def test_more_rows_than_report_max_rows_is_refused_in_every_format(reports_dir, run, settings):
    settings.REPORT_MAX_ROWS = 100
    consumed = []

    def rows() -> Iterator[list]:
        for i in range(1000):
            consumed.append(i)
            yield [f"c{i}", i]

    with pytest.raises(ReportTooLarge) as refused:
        store(run, ["csv", "json"], rows=rows(), columns=["customer", "orders"])

    assert str(refused.value) == (
        "report reports.orders: more than 100 rows; narrow the window or raise REPORT_MAX_ROWS"
    )
    assert refused.value.format is None
    assert len(consumed) == 101  # stopped at the first row over the limit
    assert not ReportFile.objects.exists()
    assert stored_files(reports_dir) == []


# --- memory ------------------------------------------------------------------------------


def generated_rows(count: int) -> Iterator[list]:
    for i in range(count):
        yield [f"customer {i:08d}", i, Decimal(i) / 100, WHEN + timedelta(seconds=i), f"note {i} " * 4]


def peak_bytes(run: JobRun, count: int) -> int:
    tracemalloc.start()
    try:
        files = store_report(
            run_id=run.pk,
            report=REPORT,
            columns=["customer", "orders", "amount", "placed_at", "note"],
            rows=generated_rows(count),
            formats=["csv", "json", "html", "xlsx"],
            meta=META,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    shown = min(count, 10_000)  # the HTML table's cap
    assert {f.format: f.rows for f in files} == {"csv": count, "json": count, "html": shown, "xlsx": count}
    return peak


@pytest.mark.timeout(240)
def test_peak_memory_does_not_grow_with_the_number_of_rows(reports_dir, run):
    small = peak_bytes(run, 5_000)
    large = peak_bytes(run, 50_000)

    # Ten times the rows: the peak stays that of a few rows and open files, not of the report.
    assert large < small * 1.5, f"peak {large:,} B for 50k rows vs {small:,} B for 5k"
    csv_size = Path(reports_storage().path(ReportFile.objects.get(format="csv").storage_name)).stat().st_size
    assert large < csv_size / 5  # and far below the size of what was written
