"""The report framework in-process: declaring reports, their parameters and windows, inline runs, SQL.

The chunked path over a real worker is in ``test_report_chunking.py``.
These run a report's job body (``run_report``) against the real database
and the reports storage, for a run recorded ``running`` as a worker would.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from jobs.catalog import publish_catalog, validate_job_call
from jobs.framework import JOB_SPECS
from jobs.models import JobRun, RunStatus
from reports import Window, report, sql_report
from reports.chunking import decode_object, encode_value
from reports.definitions import REPORTS, ReportInputError, bind_parameters
from reports.framework import run_report
from reports.models import ReportFile
from reports.sources import NotASelect, PkRange, QueryRefused, plan_chunks, rows_in_range
from reports.storage import reports_storage

pytestmark = pytest.mark.django_db

WINDOW_START = datetime(2021, 3, 1, tzinfo=UTC)
WINDOW_END = datetime(2021, 3, 2, tzinfo=UTC)
WINDOW = {"window_start": WINDOW_START.isoformat(), "window_end": WINDOW_END.isoformat()}


@report(
    "tests.reports.runs_of_job",
    columns=["run", "attempt", "scheduled_for"],
    source=lambda window, job_name: JobRun.objects.filter(
        job=job_name, scheduled_for__gte=window.start, scheduled_for__lt=window.end
    ),
    chunk_size=10_000,
    formats=["csv", "json"],
)
def runs_of_job(rows, window: Window, job_name: str, min_attempt: int = 0):
    """Runs of one job (a test report)."""
    for run in rows.iterator(chunk_size=100):
        if run.attempt >= min_attempt:
            yield [run.pk, run.attempt, run.scheduled_for]


@report("tests.reports.no_source", columns=["n", "square"])
def squares(window: Window, upto: int = 3):
    """Squares: a report whose function makes its rows itself."""
    for n in range(upto):
        yield [n, n * n]


def running_run(job: str) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        job=job, status=RunStatus.RUNNING, scheduled_for=now, started_at=now, attempt=1
    )


def input_runs(job_name: str, count: int) -> list[JobRun]:
    runs = [
        JobRun(
            job=job_name,
            status=RunStatus.SUCCEEDED,
            scheduled_for=WINDOW_START + timedelta(minutes=i),
            attempt=i,
        )
        for i in range(count)
    ]
    return JobRun.objects.bulk_create(runs)


def csv_of(run: JobRun) -> list[list[str]]:
    file = ReportFile.objects.get(run=run, format="csv")
    with reports_storage().open(file.storage_name, "rb") as fh:
        return list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


def test_a_report_is_a_job_whose_parameters_are_its_own_plus_the_window():
    spec = JOB_SPECS["tests.reports.runs_of_job"]

    assert spec.queue == "reports"
    assert [(p["name"], p["required"], p["types"]) for p in spec.parameters] == [
        ("job_name", True, ["string"]),
        ("min_attempt", False, ["integer"]),
        ("window_hours", False, ["null", "number"]),
        ("window_start", False, ["null", "string"]),
        ("window_end", False, ["null", "string"]),
    ]
    assert spec.doc == "Runs of one job (a test report)."
    assert REPORTS["tests.reports.runs_of_job"].columns == ["run", "attempt", "scheduled_for"]


def test_the_catalog_refuses_an_unknown_parameter_before_a_schedule_is_saved():
    publish_catalog(worker="tests")

    with pytest.raises(ValidationError, match="colour"):
        validate_job_call("tests.reports.runs_of_job", "[]", json.dumps({"job_name": "x", "colour": "red"}))
    validate_job_call("tests.reports.runs_of_job", "[]", json.dumps({"job_name": "x", "window_hours": 24}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"job_name": "x", "colour": "red"},
            "unknown parameter(s) 'colour'; it takes: job_name, min_attempt",
        ),
        ({}, "parameter 'job_name' is required"),
        ({"job_name": 7}, "parameter 'job_name': expected string, got integer 7"),
        (
            {
                "job_name": "x",
                "window_start": "2021-03-02T00:00:00+00:00",
                "window_end": "2021-03-01T00:00:00+00:00",
            },
            "the window ends (2021-03-01T00:00:00+00:00) before it starts (2021-03-02T00:00:00+00:00)",
        ),
        ({"job_name": "x", "window_start": "yesterday"}, "window_start 'yesterday' is not an ISO 8601 time"),
        ({"job_name": "x", "window_hours": 0}, "window_hours must be above 0"),
        ({"job_name": "x", "window_hours": 2, "window_start": "2021-03-01"}, "not both"),
        ({"job_name": "x", "window_end": "2021-03-01"}, "window_end is given without window_start"),
    ],
)
def test_bad_parameters_fail_the_run_at_once_with_a_clear_message(kwargs, message):
    run = running_run("tests.reports.runs_of_job")

    with pytest.raises(ReportInputError) as raised:
        run_report(REPORTS["tests.reports.runs_of_job"], run.pk, (), kwargs)

    assert message in str(raised.value)
    assert str(raised.value).startswith("report tests.reports.runs_of_job: ")
    assert not ReportFile.objects.filter(run=run).exists()


def test_the_window_defaults_to_hours_ending_now_and_a_naive_time_is_utc():
    spec = REPORTS["tests.reports.runs_of_job"]
    now = datetime(2021, 3, 5, 7, 0, tzinfo=UTC)

    window, values = bind_parameters(spec, (), {"job_name": "x"}, now=now)
    assert window == Window(now - timedelta(hours=24), now)
    assert values == {"job_name": "x", "min_attempt": 0}

    window, _ = bind_parameters(spec, (), {"job_name": "x", "window_hours": 1.5}, now=now)
    assert window == Window(now - timedelta(hours=1.5), now)

    window, _ = bind_parameters(spec, (), {"job_name": "x", "window_start": "2021-03-01T06:00"}, now=now)
    assert window == Window(datetime(2021, 3, 1, 6, 0, tzinfo=UTC), now)


def test_an_inline_report_stores_its_rows_in_order_and_records_its_progress():
    job_name = f"input-{uuid4()}"
    inputs = input_runs(job_name, 30)
    input_runs(f"other-{uuid4()}", 5)  # another job's rows are not read
    run = running_run("tests.reports.runs_of_job")

    result = run_report(REPORTS["tests.reports.runs_of_job"], run.pk, (), {"job_name": job_name, **WINDOW})

    expected = sorted(inputs, key=lambda r: r.pk)
    assert csv_of(run) == [
        ["run", "attempt", "scheduled_for"],
        *[[str(r.pk), str(r.attempt), r.scheduled_for.isoformat()] for r in expected],
    ]
    assert result["rows"] == 30
    assert sorted(f["format"] for f in result["files"]) == ["csv", "json"]
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total) == (30, 30)
    assert run.status == RunStatus.RUNNING  # the job framework ends it with this result


def test_a_report_parameter_reaches_the_function():
    job_name = f"input-{uuid4()}"
    input_runs(job_name, 10)
    run = running_run("tests.reports.runs_of_job")

    result = run_report(
        REPORTS["tests.reports.runs_of_job"], run.pk, (), {"job_name": job_name, "min_attempt": 7, **WINDOW}
    )

    assert result["rows"] == 3
    assert sorted(row[1] for row in csv_of(run)[1:]) == ["7", "8", "9"]


def test_a_report_without_a_source_yields_its_own_rows():
    run = running_run("tests.reports.no_source")

    result = run_report(REPORTS["tests.reports.no_source"], run.pk, (), {"upto": 4})

    assert csv_of(run) == [["n", "square"], ["0", "0"], ["1", "1"], ["2", "4"], ["3", "9"]]
    assert result["rows"] == 4
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total) == (4, 4)  # the total is known once it ends


def test_primary_key_ranges_cover_every_row_once_in_chunks_of_at_most_the_chunk_size():
    job_name = f"input-{uuid4()}"
    inputs = input_runs(job_name, 25)
    queryset = JobRun.objects.filter(job=job_name)

    plan = plan_chunks(queryset, 10)

    assert plan is not None and plan.total_rows == 25
    assert len(plan.ranges) == 3
    assert plan.ranges[0].low is None and plan.ranges[-1].high is None
    seen = [list(rows_in_range(queryset, r).values_list("pk", flat=True)) for r in plan.ranges]
    assert [len(s) for s in seen] == [10, 10, 5]
    assert [pk for s in seen for pk in s] == sorted(r.pk for r in inputs)


def test_an_input_that_fits_one_chunk_is_not_chunked_and_an_exact_multiple_has_no_empty_chunk():
    job_name = f"input-{uuid4()}"
    input_runs(job_name, 20)
    queryset = JobRun.objects.filter(job=job_name)

    assert plan_chunks(queryset, 20) is None
    assert plan_chunks(queryset, 25) is None
    plan = plan_chunks(queryset, 10)
    assert plan is not None and plan.total_rows == 20 and len(plan.ranges) == 2


def test_a_chunk_range_names_its_keys():
    assert PkRange(150000, 200000).describe() == "pk 150001–200000"
    assert PkRange(None, 50000).describe() == "pk ≤ 50000"
    assert PkRange(950000, None).describe() == "pk > 950000"


def test_a_part_gives_back_the_values_it_was_given():
    row = [
        datetime(2021, 3, 1, 7, 0, 0, 123456, tzinfo=UTC),
        WINDOW_START.date(),
        Decimal("12.30"),
        uuid4(),
        None,
        1.5,
        "text",
        {"$t": "not a tag", "x": 1},
    ]

    text = json.dumps(row, default=encode_value)

    assert json.loads(text, object_hook=decode_object) == row


# SQL reports


@pytest.fixture
def orders_table(transactional_db):
    """A table and a writing function, committed: the report reads on a connection of its own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS report_test_orders "
            "(id serial PRIMARY KEY, amount int, at timestamptz)"
        )
        cursor.execute("TRUNCATE report_test_orders")
        cursor.execute(
            "INSERT INTO report_test_orders (amount, at) "
            "SELECT n, %s + n * interval '1 minute' FROM generate_series(1, 50) n",
            [WINDOW_START],
        )
        cursor.execute(
            "CREATE OR REPLACE FUNCTION report_test_write() RETURNS int LANGUAGE sql VOLATILE AS "
            "$$ INSERT INTO report_test_orders (amount, at) VALUES (-1, now()) RETURNING id $$"
        )
    yield "report_test_orders"
    with connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION report_test_write()")
        cursor.execute("DROP TABLE report_test_orders")


@sql_report(
    "tests.reports.sql_orders",
    sql="SELECT id, amount FROM report_test_orders "
    "WHERE at >= %(window_start)s AND at < %(window_end)s AND amount >= %(min_amount)s ORDER BY id",
)
def sql_orders(window: Window, min_amount: int = 0):
    """Orders above an amount (SQL)."""


@sql_report(
    "tests.reports.sql_cte_insert",
    sql="WITH made AS (INSERT INTO report_test_orders (amount, at) VALUES (-1, now()) RETURNING id) "
    "SELECT id FROM made",
)
def sql_cte_insert():
    """A report that tries to write through a CTE."""


@sql_report("tests.reports.sql_function_write", sql="SELECT report_test_write() AS id")
def sql_function_write():
    """A report that tries to write through a function."""


needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="READ ONLY transactions: PostgreSQL"
)


@needs_postgresql
def test_a_sql_report_streams_its_rows_with_the_query_s_columns(orders_table):
    run = running_run("tests.reports.sql_orders")

    result = run_report(REPORTS["tests.reports.sql_orders"], run.pk, (), {"min_amount": 45, **WINDOW})

    assert result["rows"] == 6
    assert csv_of(run) == [["id", "amount"], *[[str(n), str(n)] for n in range(45, 51)]]


@needs_postgresql
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # PostgreSQL refuses a data-modifying CTE in a cursor, and any write in a READ ONLY transaction.
        ("tests.reports.sql_cte_insert", "must not contain data-modifying statements"),
        ("tests.reports.sql_function_write", "cannot execute INSERT in a read-only transaction"),
    ],
)
def test_a_sql_report_that_tries_to_write_is_refused_by_the_read_only_transaction(orders_table, name, reason):
    run = running_run(name)

    with pytest.raises(QueryRefused, match="refused the report's query") as refused:
        run_report(REPORTS[name], run.pk, (), {})

    assert reason in str(refused.value)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM report_test_orders WHERE amount = -1")
        assert cursor.fetchone() == (0,)
    assert not ReportFile.objects.filter(run=run).exists()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE report_test_orders SET amount = 0", "must be a SELECT"),
        ("DELETE FROM report_test_orders", "must be a SELECT"),
        ("SELECT 1; SELECT 2", "exactly one statement, found 2"),
        ("WITH x AS (SELECT 1) DELETE FROM report_test_orders", "must be a SELECT"),
        ("SELECT %(nobody)s", "names nobody, which the report does not provide"),
    ],
)
def test_sql_that_is_not_one_select_is_refused_when_the_report_is_declared(sql, message):
    def body(window: Window):
        """A SQL report."""

    with pytest.raises(NotASelect, match=message):
        sql_report(f"tests.reports.refused.{uuid4()}", sql=sql)(body)


def test_a_report_cannot_take_a_window_parameter_of_its_own():
    def body(window: Window, window_hours: int = 1):
        """A report."""

    with pytest.raises(ValueError, match="window_hours"):
        report(f"tests.reports.refused.{uuid4()}", columns=["a"])(body)


def test_a_report_s_max_concurrency_is_its_job_s():
    def body(window: Window):
        """A report that reads a replica."""
        yield from ()

    name = f"tests.reports.capped.{uuid4()}"
    report(name, columns=["a"], max_concurrency=2)(body)

    assert JOB_SPECS[name].max_concurrency == 2


def test_a_report_stored_but_not_delivered_fails_its_run_and_keeps_its_files(settings):
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from reports.models import ReportDestination
    from reports.outputs import ReportDeliveryFailed
    from tests.support.processes import free_port

    settings.REPORT_DELIVERY_ATTEMPTS = 1
    publish_catalog(worker="tests")
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="7", day_of_week="1-5", timezone="Europe/Berlin"
    )
    schedule = PeriodicTask.objects.create(
        name="weekday squares", task="tests.reports.no_source", crontab=crontab
    )
    nobody_listens = f"http://127.0.0.1:{free_port()}/hook"
    ReportDestination.objects.create(
        schedule=schedule,
        kind="webhook",
        target=nobody_listens,
        secret="a signing secret, 32 characters",
        formats=["csv"],
    )
    run = running_run("tests.reports.no_source")
    JobRun.objects.filter(pk=run.pk).update(schedule=schedule)

    with pytest.raises(ReportDeliveryFailed) as failed:
        run_report(REPORTS["tests.reports.no_source"], run.pk, (), {})

    assert str(failed.value).startswith("report stored (1 file); delivery failed: ")
    assert csv_of(run)[0] == ["n", "square"]  # the file stays, for whoever fetches it


def test_an_oversized_report_fails_with_a_clear_message_and_stores_nothing(settings):
    from reports.storage import ReportTooLarge

    settings.REPORT_MAX_ROWS = 3
    run = running_run("tests.reports.no_source")

    with pytest.raises(ReportTooLarge, match="more than 3 rows"):
        run_report(REPORTS["tests.reports.no_source"], run.pk, (), {"upto": 5})

    assert not ReportFile.objects.filter(run=run).exists()
