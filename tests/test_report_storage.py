"""Stored reports on a real filesystem storage: names, records, all or nothing, retention, the admin.

Each test points ``STORAGES["reports"]`` at its own temporary directory
(``tests.support.report_storage``) and looks at what is really there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.db import DataError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.models import JobRun, RunStatus
from reports import cleanup
from reports.cleanup import FilesNotDeleted, delete_expired_reports, delete_stray_parts
from reports.models import ReportFile
from reports.storage import ReportMeta, reports_storage, store_report
from tests.support import report_storage
from tests.support.report_storage import StorageFull, stored_files
from tests.support.s3_server import moto_server_command, s3_server

reports_dir = report_storage.reports_dir  # a fixture: the reports storage in a temporary directory

pytestmark = pytest.mark.django_db

REPORT = "reports.orders"
COLUMNS = ["customer", "orders"]
ROWS = [["Ada", 3], ["Grace", 5]]
META = ReportMeta(
    title="Orders",
    parameters={"min_amount": 10},
    window_start=datetime(2026, 11, 29, 7, 0, tzinfo=UTC),
    window_end=datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
    generated_at=datetime(2026, 11, 30, 7, 3, tzinfo=UTC),
)


@pytest.fixture
def run() -> JobRun:
    return JobRun.objects.create(job=REPORT, status=RunStatus.RUNNING, scheduled_for=timezone.now())


def store(run, formats=("csv", "json", "html", "xlsx"), rows=ROWS, report=REPORT) -> list[ReportFile]:
    return store_report(run_id=run.pk, report=report, columns=COLUMNS, rows=rows, formats=formats, meta=META)


def rows_then_failure(good: int) -> Iterator[list]:
    for i in range(good):
        yield [f"c{i}", i]
    raise RuntimeError("the source database went away")


# --- storing -------------------------------------------------------------------------------


def test_each_rendering_is_saved_by_report_month_and_run_and_recorded(reports_dir, run, settings):
    settings.REPORT_RETENTION_DAYS = 7
    before = timezone.now()

    files = store(run)

    after = timezone.now()
    month = f"{before:%Y/%m}"
    assert [f.format for f in files] == ["csv", "json", "html", "xlsx"]
    assert stored_files(reports_dir) == sorted(
        f"reports.orders/{month}/{run.pk}.{ext}" for ext in ("csv", "json", "html", "xlsx")
    )
    for report_file in ReportFile.objects.filter(run=run):
        assert report_file.storage_name == f"reports.orders/{month}/{run.pk}.{report_file.format}"
        assert report_file.report == REPORT and report_file.rows == 2
        assert report_file.size_bytes == (reports_dir / report_file.storage_name).stat().st_size > 0
        assert report_file.parameters == {"min_amount": 10}
        assert (report_file.window_start, report_file.window_end) == (META.window_start, META.window_end)
        assert before + timedelta(days=7) <= report_file.expires_at <= after + timedelta(days=7)
    assert (
        reports_dir / f"reports.orders/{month}/{run.pk}.csv"
    ).read_bytes() == b"customer,orders\r\nAda,3\r\nGrace,5\r\n"


def test_a_report_whose_rows_fail_midway_leaves_no_file_and_no_row(reports_dir, run):
    with pytest.raises(RuntimeError, match="the source database went away"):
        store(run, rows=rows_then_failure(500))

    assert stored_files(reports_dir) == []
    assert not ReportFile.objects.exists()


def test_a_storage_failing_after_some_files_were_saved_leaves_none_of_them(settings, tmp_path, run):
    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {
            "BACKEND": "tests.support.report_storage.FillingUpStorage",
            "OPTIONS": {"location": str(tmp_path), "room_for": 2},
        },
    }

    with pytest.raises(StorageFull):
        store(run)  # csv and json are saved, html is not

    assert stored_files(tmp_path) == []
    assert not ReportFile.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite does not enforce a column's length")
def test_a_failure_after_the_files_were_saved_deletes_them(reports_dir, run):
    # A name longer than ReportFile.report holds: the files save, then the insert fails.
    too_long = "reports." + "x" * 240

    with pytest.raises(DataError, match="value too long"):  # the insert, after the saves
        store(run, report=too_long)

    assert stored_files(reports_dir) == []
    assert not ReportFile.objects.exists()


def test_storing_a_run_again_replaces_its_earlier_files(reports_dir, run, django_capture_on_commit_callbacks):
    first = {f.format: f for f in store(run, formats=["csv", "json"])}

    with django_capture_on_commit_callbacks(execute=True):
        second = {f.format: f for f in store(run, formats=["csv"], rows=[["Ada", 4]])}

    assert set(ReportFile.objects.values_list("pk", flat=True)) == {second["csv"].pk, first["json"].pk}
    assert not (reports_dir / first["csv"].storage_name).exists()  # the replaced file is gone
    assert (reports_dir / second["csv"].storage_name).read_bytes() == b"customer,orders\r\nAda,4\r\n"
    assert (reports_dir / first["json"].storage_name).exists()  # a format not stored again stays


def test_bad_formats_and_rows_of_the_wrong_width_are_refused(reports_dir, run):
    read = []

    def rows():
        read.append(1)
        yield ["Ada", 3]

    with pytest.raises(ValueError, match="unknown report format 'pdf'; known: csv, json, html, xlsx"):
        store(run, formats=["csv", "pdf"], rows=rows())
    with pytest.raises(ValueError, match="no format asked for"):
        store(run, formats=[], rows=rows())
    assert read == []  # refused before any row was read
    with pytest.raises(ValueError, match=r"report reports.orders: row 2 has 3 values for 2 columns"):
        store(run, rows=[["Ada", 3], ["Grace", 5, "extra"]])
    with pytest.raises(TypeError, match="a row is a dict; rows are lists or tuples"):
        store(run, rows=[{"customer": "Ada", "orders": 3}])
    assert stored_files(reports_dir) == [] and not ReportFile.objects.exists()


def test_the_reports_storage_is_a_directory_under_var_dir_unless_configured(settings, tmp_path):
    default = reports_storage()
    assert isinstance(default, FileSystemStorage)
    assert default.location == str(Path(settings.VAR_DIR) / "reports")

    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    configured = reports_storage()
    assert isinstance(configured, FileSystemStorage) and configured.location == str(tmp_path)


# --- retention -----------------------------------------------------------------------------


def test_cleanup_deletes_expired_files_and_their_rows_and_keeps_fresh_ones(reports_dir, settings):
    now = timezone.now()
    kept = store(
        JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now), formats=["csv"]
    )
    expired: list[list[ReportFile]] = []
    for days_ago in (1, 3, 2):
        old_run = JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now)
        files = store(old_run, formats=["csv", "json"])
        ReportFile.objects.filter(run=old_run).update(expires_at=now - timedelta(days=days_ago))
        expired.append(files)
    gone_already = expired[1][0]
    (reports_dir / gone_already.storage_name).unlink()  # deleted by hand: not an error

    assert delete_expired_reports(now=now, limit=2) == 2  # a batch at a time, oldest first
    assert not ReportFile.objects.filter(run=expired[1][0].run_id).exists()
    assert delete_expired_reports(now=now) == 4

    assert list(ReportFile.objects.values_list("pk", flat=True)) == [kept[0].pk]
    assert stored_files(reports_dir) == [kept[0].storage_name]
    assert delete_expired_reports(now=now) == 0


def test_a_file_the_storage_refuses_to_delete_keeps_its_row_and_fails_the_cleanup(reports_dir):
    now = timezone.now()
    files = [
        store(
            JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now), formats=["csv"]
        )[0]
        for _ in range(3)
    ]
    ReportFile.objects.update(expires_at=now - timedelta(days=1))
    stuck = files[1]
    # The storage cannot delete this name: it became a directory with something in it.
    (reports_dir / stuck.storage_name).unlink()
    (reports_dir / stuck.storage_name).mkdir()
    (reports_dir / stuck.storage_name / "something").write_bytes(b"x")

    with pytest.raises(FilesNotDeleted, match=r"1 of 3 report files could not be deleted .*2 deleted"):
        delete_expired_reports(now=now)

    assert list(ReportFile.objects.values_list("pk", flat=True)) == [stuck.pk]
    assert stored_files(reports_dir) == [f"{stuck.storage_name}/something"]


def test_cleanup_deletes_part_directories_of_crashed_reports_after_a_day(reports_dir):
    storage = reports_storage()
    now = timezone.now()
    for run_id in ("crashed", "running"):
        for index in range(3):
            storage.save(f"parts/{run_id}/{index}.csv", ContentFile(b"a,b\r\n"))
    two_days_ago = (now - timedelta(days=2)).timestamp()
    for part in (reports_dir / "parts" / "crashed").iterdir():
        os.utime(part, (two_days_ago, two_days_ago))
    (reports_dir / "parts" / "empty").mkdir()
    os.utime(reports_dir / "parts" / "empty", (two_days_ago, two_days_ago))

    assert delete_stray_parts(now) == 2

    assert sorted(p.name for p in (reports_dir / "parts").iterdir()) == ["running"]
    assert stored_files(reports_dir) == [f"parts/running/{i}.csv" for i in range(3)]


def test_cleanup_of_a_storage_without_parts_does_nothing(reports_dir):
    assert delete_stray_parts(timezone.now()) == 0


def test_the_cleanup_job_deletes_batches_until_nothing_expired_is_left(reports_dir):
    now = timezone.now()
    for _ in range(5):
        store(
            JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now), formats=["csv"]
        )
    ReportFile.objects.update(expires_at=now - timedelta(minutes=1))

    assert cleanup.cleanup.run(batch_size=2) == {"files_deleted": 5, "part_directories_deleted": 0}

    assert not ReportFile.objects.exists() and stored_files(reports_dir) == []
    with pytest.raises(ValueError, match="batch_size must be 1 or more"):
        cleanup.cleanup.run(batch_size=0)


# --- the admin -----------------------------------------------------------------------------

LIST = "/admin/reports/reportfile/"


def download(report_file: ReportFile) -> str:
    return f"{LIST}{report_file.pk}/download/"


@pytest.fixture
def stored(reports_dir, run) -> dict[str, ReportFile]:
    return {f.format: f for f in store(run)}


@pytest.fixture
def staff(django_user_model, client):
    """``staff(*codenames)``: the test client logged in as staff (not superuser) with just those."""

    def login(*codenames: str):
        user = django_user_model.objects.create_user(
            f"staff{django_user_model.objects.count()}", is_staff=True
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="reports", codename__in=codenames)
        )
        client.force_login(user)
        return client

    return login


def streamed(response) -> bytes:
    return b"".join(response.streaming_content)


def test_the_admin_lists_a_runs_files_and_downloads_each_with_its_content_type(
    alices_client, stored, run, reports_dir
):
    other_run = JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=timezone.now())
    store(other_run, formats=["csv"])

    page = alices_client.get(LIST, {"run": str(run.pk)})

    assert page.status_code == 200
    listed = page.context["cl"].result_list
    assert sorted(f.pk for f in listed) == sorted(f.pk for f in stored.values())
    for report_file in stored.values():
        assert download(report_file) in page.content.decode()
    expected = {
        "csv": "text/csv; charset=utf-8",
        "json": "application/json",
        "html": "text/html; charset=utf-8",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    }
    for fmt, report_file in stored.items():
        response = alices_client.get(download(report_file))
        assert response.status_code == 200
        assert response["Content-Type"] == expected[fmt]
        assert response["Content-Disposition"].startswith('attachment; filename="reports.orders-')
        assert response["Content-Disposition"].endswith(f'.{fmt}"')
        assert streamed(response) == (reports_dir / report_file.storage_name).read_bytes()
    assert alices_client.get(LIST, {"run": "not-a-run"}).context["cl"].result_count == 0


def test_staff_with_the_view_permission_download_others_are_refused(staff, client, stored, reports_dir):
    csv_file = stored["csv"]

    anonymous = client.get(download(csv_file))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]

    assert staff().get(download(csv_file)).status_code == 403  # staff, no permission on report files
    assert staff("view_jobrun").get(download(csv_file)).status_code == 403

    viewer = staff("view_reportfile")
    response = viewer.get(download(csv_file))
    assert response.status_code == 200
    assert streamed(response) == b"customer,orders\r\nAda,3\r\nGrace,5\r\n"
    assert viewer.get(LIST).status_code == 200
    assert viewer.get(f"{LIST}add/").status_code == 403  # files are made by runs only


def test_a_file_gone_from_the_storage_is_a_404(alices_client, stored, reports_dir):
    (reports_dir / stored["json"].storage_name).unlink()

    assert alices_client.get(download(stored["json"])).status_code == 404
    assert alices_client.get(f"{LIST}999999/download/").status_code == 404


def test_deleting_a_file_in_the_admin_deletes_it_from_the_storage(alices_client, stored, reports_dir):
    html_file = stored["html"]

    response = alices_client.post(f"{LIST}{html_file.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not ReportFile.objects.filter(pk=html_file.pk).exists()
    assert html_file.storage_name not in stored_files(reports_dir)
    assert len(stored_files(reports_dir)) == 3


# --- an S3-compatible storage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    if moto_server_command() is None:
        pytest.skip("no S3-compatible server on this machine (moto_server)")
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint, settings) -> Iterator[Any]:
    """A fresh bucket on the local S3 server, configured as the reports storage the way settings do it."""
    name = f"reports-{uuid.uuid4().hex[:12]}"
    options = {
        "bucket_name": name,
        "endpoint_url": s3_endpoint,
        "region_name": "us-east-1",
        "access_key": "test",
        "secret_key": "test",
        "file_overwrite": False,
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=name)
    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
    }
    yield client, name


def bucket_keys(client, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_on_an_s3_storage_reports_are_stored_served_and_cleaned_up(s3_bucket, run, alices_client):
    client, bucket = s3_bucket
    files = {f.format: f for f in store(run)}

    assert bucket_keys(client, bucket) == sorted(f.storage_name for f in files.values())
    csv_object = client.get_object(Bucket=bucket, Key=files["csv"].storage_name)
    assert csv_object["Body"].read() == b"customer,orders\r\nAda,3\r\nGrace,5\r\n"
    response = alices_client.get(download(files["xlsx"]))
    assert response.status_code == 200
    assert (
        streamed(response) == client.get_object(Bucket=bucket, Key=files["xlsx"].storage_name)["Body"].read()
    )

    reports_storage().save("parts/crashed-run/0.csv", ContentFile(b"a\r\n"))
    ReportFile.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert delete_expired_reports(now=timezone.now() + timedelta(days=2)) == 4

    assert bucket_keys(client, bucket) == []
    assert not ReportFile.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite does not enforce a column's length")
def test_on_an_s3_storage_a_failed_report_leaves_no_object(s3_bucket, run):
    client, bucket = s3_bucket

    with pytest.raises(DataError, match="value too long"):
        store(run, report="reports." + "x" * 240)

    assert bucket_keys(client, bucket) == []


def test_the_file_list_costs_the_same_queries_at_any_size(alices_client, reports_dir):
    def page_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert alices_client.get(LIST).status_code == 200
        return len(queries)

    now = timezone.now()
    for _ in range(2):
        store(
            JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now), formats=["csv"]
        )
    small = page_queries()
    for index in range(40):
        run = JobRun.objects.create(job=REPORT, status=RunStatus.SUCCEEDED, scheduled_for=now)
        store(run, formats=["csv", "json"], report=f"reports.r{index % 5}")

    assert page_queries() == small


def test_deleting_files_from_the_list_deletes_them_from_the_storage(alices_client, stored, reports_dir):
    chosen = [stored["csv"], stored["xlsx"]]

    response = alices_client.post(
        LIST, {"action": "delete_selected", "_selected_action": [f.pk for f in chosen], "post": "yes"}
    )

    assert response.status_code == 302
    assert set(ReportFile.objects.values_list("format", flat=True)) == {"json", "html"}
    assert stored_files(reports_dir) == sorted([stored["json"].storage_name, stored["html"].storage_name])
