"""A scheduled report on a real worker reaches a real SMTP server: the CSV attached, byte for byte.

What a team does ("Done means" in issue 12): a report written in a few lines
(``reports.example.failed_runs``) scheduled for 07:00 Europe/Berlin on
weekdays with an email destination. A run of that schedule (run now, as the
admin's button does) goes through the real prefork worker, which renders,
stores and delivers: the message arrives at a local aiosmtpd server with the
stored CSV attached and the XLSX (above the attachment limit) as a signed
link. The worker is one of this test's own, on a queue of its own, started
with the SMTP server's address and the public URL in its environment.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from django.core.files.storage import FileSystemStorage
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

import reports.tasks  # noqa: F401  # the reports, so the catalog the test publishes has them
from jobs.catalog import publish_catalog
from jobs.dispatch import dispatch
from jobs.models import JobRun, RunOrigin, RunStatus
from reports.models import ReportDelivery, ReportDestination, ReportFile
from tests.conftest import wait_for_run
from tests.support.alert_receivers import SmtpReceiver
from tests.support.processes import start_worker
from tests.support.queues import empty_queues

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

QUEUE = "report-delivery-e2e"  # only this test's worker serves it
PUBLIC_URL = "http://reports.example.test"
WINDOW_START = datetime(2022, 5, 2, tzinfo=UTC)


@pytest.fixture
def smtp():
    receiver = SmtpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def mailing_worker(service_env, logs_dir, smtp):
    empty_queues([QUEUE])
    env = {
        **service_env,
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp.port),
        "EMAIL_USE_TLS": "0",
        "DEFAULT_FROM_EMAIL": "reports@beatplatform.test",
        "PUBLIC_URL": PUBLIC_URL,
    }
    service = start_worker(env, logs_dir, name="mailing-worker", concurrency=1, queues=QUEUE)
    service.wait_for_log("ready.", timeout=120)
    yield service
    service.stop()
    empty_queues([QUEUE])


def test_a_weekday_report_schedule_emails_its_csv_from_the_real_worker(service_env, mailing_worker, smtp):
    publish_catalog(worker="tests")
    prefix = f"nightly-export-{uuid4().hex[:8]}"
    for hour in range(3):
        JobRun.objects.create(
            job=f"{prefix}.load", scheduled_for=WINDOW_START + timedelta(hours=hour), status=RunStatus.FAILED,
            error_message=f"upstream empty at {hour}:00",
        )  # fmt: skip
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="7", day_of_week="1-5", day_of_month="*", month_of_year="*", timezone="Europe/Berlin"
    )
    window = {
        "window_start": WINDOW_START.isoformat(),
        "window_end": (WINDOW_START + timedelta(days=1)).isoformat(),
    }
    schedule = PeriodicTask.objects.create(
        name="failed runs, weekdays 07:00 Berlin", task="reports.example.failed_runs", crontab=crontab,
        kwargs=f'{{"job_prefix": "{prefix}", "window_start": "{window["window_start"]}", '
        f'"window_end": "{window["window_end"]}"}}',
    )  # fmt: skip
    ReportDestination.objects.create(
        schedule=schedule,
        kind="email",
        target="team@example.com",
        formats=["csv", "xlsx"],
        attach_up_to_bytes=2048,
    )

    run = dispatch(
        schedule.task, kwargs={"job_prefix": prefix, **window}, schedule=schedule, queue=QUEUE,
        origin=RunOrigin.MANUAL, requested_by="alice",
    )  # fmt: skip
    done = wait_for_run(run.pk, timeout=90)

    assert done.status == RunStatus.SUCCEEDED, (
        done.error_type,
        done.error_message,
        mailing_worker.log[-3000:],
    )
    [message] = smtp.wait_for(1, timeout=10)
    assert smtp.handler.envelopes[0] == ("reports@beatplatform.test", ["team@example.com"])
    assert message["Subject"] == "reports.example.failed_runs: 2022-05-02 00:00 to 2022-05-03 00:00 UTC"
    storage = FileSystemStorage(location=Path(service_env["VAR_DIR"]) / "reports")  # the worker's
    csv = ReportFile.objects.get(run=done, format="csv")
    with storage.open(csv.storage_name, "rb") as stored:
        csv_bytes = stored.read()
    [attachment] = message.iter_attachments()
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == csv_bytes  # byte for byte what the worker stored
    assert csv.rows == 3 and csv_bytes.count(b"upstream empty at") == 3
    body = message.get_body(preferencelist=("plain",)).get_content()
    xlsx = ReportFile.objects.get(run=done, format="xlsx")
    assert xlsx.size_bytes > 2048 and f"too large to attach: {PUBLIC_URL}/reports/download/" in body
    assert f"  job_prefix: {prefix}" in body
    assert f"Run: {PUBLIC_URL}{reverse('admin:jobs_jobrun_change', args=[done.pk])}" in body
    delivery = ReportDelivery.objects.get(run=done)
    assert (delivery.kind, delivery.status, delivery.attempts) == ("email", "sent", 1)
