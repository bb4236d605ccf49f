"""The built-in reports on the real worker: dispatched by name, run through the framework, stored."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage

from jobs.catalog import publish_catalog
from jobs.dispatch import dispatch
from jobs.models import JobRun, RunStatus
from reports.builtin.alert_digest import COLUMNS as DIGEST_COLUMNS
from reports.builtin.run_summary import COLUMNS as SUMMARY_COLUMNS
from reports.builtin.schedule_audit import COLUMNS as AUDIT_COLUMNS
from reports.models import ReportFile
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

START = datetime(2021, 5, 1, tzinfo=UTC)
WINDOW = {"window_start": START.isoformat(), "window_end": (START + timedelta(days=1)).isoformat()}


@pytest.fixture
def report_storage(service_env) -> FileSystemStorage:
    """The worker's reports storage (its VAR_DIR is not this process's)."""
    return FileSystemStorage(location=Path(service_env["VAR_DIR"]) / "reports")


def stored_csv(run: JobRun, storage: FileSystemStorage) -> list[list[str]]:
    file = ReportFile.objects.get(run=run, format="csv")
    with storage.open(file.storage_name, "rb") as fh:
        return list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


@pytest.mark.parametrize(
    ("name", "kwargs", "columns"),
    [
        ("reports.run_summary", WINDOW, SUMMARY_COLUMNS),
        ("reports.schedule_audit", {}, AUDIT_COLUMNS),
        ("reports.alert_digest", WINDOW, DIGEST_COLUMNS),
    ],
)
def test_each_builtin_report_runs_on_the_worker_and_stores_its_csv(
    worker, clean_queues, report_storage, name, kwargs, columns
):
    publish_catalog(worker="tests")
    JobRun.objects.bulk_create(
        [
            JobRun(
                job="worker-summary-input",
                status=status,
                scheduled_for=START + timedelta(minutes=i),
                duration_ms=10,
            )
            for i, status in enumerate([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.FAILED])
        ]
    )

    run = wait_for_run(dispatch(name, kwargs=kwargs).pk, timeout=90)

    assert run.status == RunStatus.SUCCEEDED, (run.error_type, run.error_message)
    rows = stored_csv(run, report_storage)
    assert rows[0] == columns
    if name == "reports.run_summary":
        (summary,) = [r for r in rows[1:] if r[1] == "worker-summary-input"]
        assert summary[SUMMARY_COLUMNS.index("longest_failure_streak")] == "2"
