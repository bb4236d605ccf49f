"""A report run's files reach its schedule's destinations: email, Slack, webhook, through real receivers.

Receivers are the local servers alerts are tested with (a real aiosmtpd SMTP
server with Django's SMTP backend, a Slack stand-in that checks the
incoming-webhook body, a webhook receiver that verifies the HMAC-SHA256
signature from the documented scheme). Files are real files in a temporary
``STORAGES["reports"]``. Links go through the signed download view and give
back the same bytes; a forged or expired link is refused.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.catalog import publish_catalog
from jobs.models import JobRun, RunStatus
from reports import links
from reports.admin_inlines import ReportDestinationForm, ReportDestinationInline
from reports.delivery import deliver_report
from reports.models import DeliveryStatus, ReportDelivery, ReportDestination, ReportFile
from tests.support.alert_receivers import SlackReceiver, SmtpReceiver, WebhookReceiver

pytestmark = pytest.mark.django_db

SECRET = "report-signing-secret-0123456789"
PUBLIC_URL = "http://reports.example.test"
CSV = b"job,runs,success_rate\r\nheartbeat,96,0.99\r\nexport,4,0.5\r\n"
BIG = os.urandom(3000)  # a binary file above the destinations' attachment limit below


@pytest.fixture(autouse=True)
def delivery_settings(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "reports")},
        },
    }
    settings.PUBLIC_URL = PUBLIC_URL
    settings.REPORT_DELIVERY_ATTEMPTS = 3
    settings.REPORT_DELIVERY_BACKOFF_SECONDS = (0.05, 0.1)
    settings.ALERT_SEND_TIMEOUT = 5.0


@pytest.fixture
def schedule() -> PeriodicTask:
    publish_catalog(worker="tests")
    crontab = CrontabSchedule.objects.create(
        minute="0", hour="7", day_of_week="1-5", timezone="Europe/Berlin"
    )
    return PeriodicTask.objects.create(name="weekday run summary", task="heartbeat", crontab=crontab)


@pytest.fixture
def run(schedule) -> JobRun:
    now = timezone.now()
    return JobRun.objects.create(
        schedule=schedule, schedule_name=schedule.name, job="reports.run_summary", scheduled_for=now,
        status=RunStatus.RUNNING, attempt=1, worker="worker-a", started_at=now,
    )  # fmt: skip


def stored(run: JobRun, format: str, content: bytes, rows: int, *, retention=timedelta(days=7)) -> ReportFile:
    name = storages["reports"].save(f"reports.run_summary/{run.pk}.{format}", ContentFile(content))
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    return ReportFile.objects.create(
        run=run, report="reports.run_summary", format=format, storage_name=name, size_bytes=len(content),
        rows=rows, parameters={"job": "heartbeat", "min_runs": 2}, window_start=start,
        window_end=start + timedelta(days=1), expires_at=timezone.now() + retention,
    )  # fmt: skip


def download(url: str):
    assert url.startswith(PUBLIC_URL + "/reports/download/"), url
    response = Client().get(url.removeprefix(PUBLIC_URL))
    # Reading a streamed body to its end closes the response (the test client's wrapper).
    body = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
    return response.status_code, body


def serve(receiver):
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp(settings):
    receiver = SmtpReceiver().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", receiver.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.DEFAULT_FROM_EMAIL = "reports@beatplatform.test"
    yield receiver
    receiver.stop()


@pytest.fixture
def webhook():
    yield from serve(WebhookReceiver(SECRET))


@pytest.fixture
def slack():
    yield from serve(SlackReceiver())


def test_email_attaches_a_small_file_byte_for_byte_and_links_a_large_one_to_the_same_bytes(
    run, schedule, smtp
):
    ReportDestination.objects.create(
        schedule=schedule, kind="email", target="ops@example.com, lead@example.com", formats=["csv", "xlsx"],
        attach_up_to_bytes=2000,
    )  # fmt: skip
    csv = stored(run, "csv", CSV, rows=2)
    xlsx = stored(run, "xlsx", BIG, rows=2)
    stored(run, "json", b"[]", rows=0)  # not among the destination's formats

    assert deliver_report(run.pk, [csv, xlsx, ReportFile.objects.get(format="json")]) == []

    [message] = smtp.wait_for(1)
    assert smtp.handler.envelopes[0] == ("reports@beatplatform.test", ["ops@example.com", "lead@example.com"])
    window = f"{csv.window_start:%Y-%m-%d} 00:00 to {csv.window_end:%Y-%m-%d} 00:00 UTC"
    assert message["Subject"] == f"reports.run_summary: {window}"
    attachments = list(message.iter_attachments())
    assert [(part.get_filename(), part.get_content_type()) for part in attachments] == [
        (f"reports.run_summary-{csv.created_at:%Y%m%d-%H%M}.csv", "text/csv")
    ]
    assert attachments[0].get_payload(decode=True) == CSV  # byte for byte
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert f"Window: {window}" in body
    assert "  job: heartbeat" in body and "  min_runs: 2" in body
    assert f"CSV: 2 rows, {len(CSV)} bytes, attached as" in body
    link = next(line for line in body.splitlines() if "Excel (XLSX)" in line).split("too large to attach: ")[
        1
    ]
    assert download(link) == (200, BIG)  # the link gives the same bytes
    assert f"{PUBLIC_URL}/admin/jobs/jobrun/{run.pk}/change/" in body
    delivery = ReportDelivery.objects.get()
    assert (delivery.kind, delivery.status, delivery.attempts) == ("email", DeliveryStatus.SENT, 1)
    assert delivery.sent_at is not None and delivery.target == "ops@example.com, lead@example.com"


def test_a_webhook_answering_500_twice_is_delivered_on_the_third_attempt_signed(run, schedule, webhook):
    destination = ReportDestination.objects.create(
        schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET
    )
    csv = stored(run, "csv", CSV, rows=2)
    webhook.fail_next(2, 500)

    assert deliver_report(run.pk, [csv]) == []

    assert [r.answered for r in webhook.requests] == [500, 500, 200]
    [received] = webhook.accepted()
    assert received.verified  # the receiver recomputed the HMAC from the documented scheme
    delivery = ReportDelivery.objects.get()
    assert received.headers["x-beatplatform-delivery"] == str(delivery.pk)
    assert len({r.headers["x-beatplatform-delivery"] for r in webhook.requests}) == 1  # same id on every try
    document = received.json
    assert document["event"] == "report.ready" and document["report"] == "reports.run_summary"
    assert document["run"] == str(run.pk) and document["schedule"]["id"] == schedule.pk
    assert document["parameters"] == {"job": "heartbeat", "min_runs": 2}
    [file] = document["files"]
    assert (file["format"], file["size"], file["rows"]) == ("csv", len(CSV), 2)
    assert download(file["url"]) == (200, CSV)
    assert (delivery.destination_id, delivery.status, delivery.attempts) == (destination.pk, "sent", 3)
    assert "HTTP 500" in delivery.last_error  # what was retried stays visible


def test_a_receiver_that_always_fails_fails_the_delivery_with_its_answer(run, schedule, slack, webhook):
    ReportDestination.objects.create(schedule=schedule, kind="slack", target=slack.url)
    ReportDestination.objects.create(schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET)
    csv = stored(run, "csv", CSV, rows=2)
    slack.fail_next(100, 500)

    started = time.monotonic()
    errors = deliver_report(run.pk, [csv])

    assert len(errors) == 1 and errors[0].startswith(f"Slack to {slack.url}: HTTP 500 from {slack.url}")
    assert "receiver down (test)" in errors[0]
    assert time.monotonic() - started >= 0.15  # it waited the backoff between its three tries
    failed = ReportDelivery.objects.get(kind="slack")
    assert (failed.status, failed.attempts, failed.sent_at) == ("failed", 3, None)
    assert failed.last_error == errors[0].removeprefix(f"Slack to {slack.url}: ")
    assert len(slack.requests) == 3
    assert (
        ReportDelivery.objects.get(kind="webhook").status == "sent"
    )  # one failing destination stops no other

    # The run retried: what was sent is not sent again, what failed is tried again (attempts keep counting).
    slack.fail_next(0)
    assert deliver_report(run.pk, [csv]) == []
    assert len(webhook.accepted()) == 1
    again = ReportDelivery.objects.get(kind="slack")
    assert (again.status, again.attempts) == ("sent", 4)


def test_a_destination_that_hangs_delays_no_other(run, schedule, slack, webhook, settings):
    settings.ALERT_SEND_TIMEOUT = 0.5  # every call to a receiver gives up after this
    slack.delay = 1.0  # answers after the sender gave up: every try times out
    ReportDestination.objects.create(schedule=schedule, kind="slack", target=slack.url)  # first in order
    ReportDestination.objects.create(schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET)
    csv = stored(run, "csv", CSV, rows=2)

    [error] = deliver_report(run.pk, [csv])

    assert error.startswith(f"Slack to {slack.url}: cannot reach {slack.url}") and "timed out" in error
    [sent] = webhook.accepted()
    deadline = time.monotonic() + 5
    while len(slack.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the receiver keeps a request once its (late) answer is written
    slack_tries = sorted(r.at for r in slack.requests)
    assert len(slack_tries) == 3
    assert sent.at < slack_tries[1]  # sent while Slack's first try was still hanging, not after its three
    assert ReportDelivery.objects.get(kind="webhook").status == "sent"
    hung = ReportDelivery.objects.get(kind="slack")
    assert (hung.status, hung.attempts) == ("failed", 3)


def test_slack_gets_a_message_with_download_buttons(run, schedule, slack):
    ReportDestination.objects.create(schedule=schedule, kind="slack", target=slack.url, formats=["csv"])
    csv = stored(run, "csv", CSV, rows=2)

    assert deliver_report(run.pk, [csv]) == []

    [received] = slack.accepted()
    document = received.json
    assert document["text"].startswith("reports.run_summary: ")
    header, section, actions = document["blocks"]
    assert header["text"]["text"] == document["text"]
    assert "min_runs: 2" in section["text"]["text"] and "CSV: 2 rows" in section["text"]["text"]
    download_button, run_button = actions["elements"]
    assert download_button["text"]["text"] == "Download CSV"
    assert download(download_button["url"]) == (200, CSV)
    assert run_button["url"] == f"{PUBLIC_URL}/admin/jobs/jobrun/{run.pk}/change/"


def test_nothing_is_delivered_without_destinations_or_to_a_disabled_one(run, schedule, webhook):
    csv = stored(run, "csv", CSV, rows=2)
    assert deliver_report(run.pk, [csv]) == []
    ReportDestination.objects.create(
        schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET, enabled=False
    )
    assert deliver_report(run.pk, [csv]) == []
    unscheduled = JobRun.objects.create(job="reports.run_summary", scheduled_for=timezone.now())
    assert deliver_report(unscheduled.pk, [csv]) == []
    assert webhook.requests == [] and not ReportDelivery.objects.exists()


def test_a_destination_asking_for_a_rendering_the_run_did_not_make_fails_clearly(run, schedule, webhook):
    ReportDestination.objects.create(
        schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET, formats=["xlsx"]
    )
    csv = stored(run, "csv", CSV, rows=2)

    [error] = deliver_report(run.pk, [csv])

    assert error.endswith("this run produced csv; the destination takes only xlsx")
    assert ReportDelivery.objects.get().status == "failed" and webhook.requests == []


def test_a_forged_altered_or_expired_link_is_refused(run):
    csv = stored(run, "csv", CSV, rows=2)
    good = links.download_url(csv)
    assert download(good) == (200, CSV)
    token = good.rsplit("/", 1)[1]
    other = stored(run, "json", b"[1]", rows=1)

    def status(path_token: str) -> int:
        return Client().get(reverse("reports:download", args=[path_token])).status_code

    assert status(token[:-1] + ("A" if token[-1] != "A" else "B")) == 403  # a forged signature
    assert status(f"{other.pk}" + token[token.index(":") :]) == 403  # another file's id under this signature
    assert (
        status(signing.TimestampSigner(salt="elsewhere").sign(str(csv.pk))) == 403
    )  # signed for another use

    class SignedEightDaysAgo(signing.TimestampSigner):
        def timestamp(self) -> str:
            return signing.b62_encode(int(time.time()) - 8 * 86400)

    old = SignedEightDaysAgo(salt=links.SALT).sign(str(csv.pk))
    response = Client().get(reverse("reports:download", args=[old]))
    assert response.status_code == 410 and response.content == b"This download link has expired."

    ReportFile.objects.filter(pk=csv.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert status(token) == 410  # the file passed its retention
    ReportFile.objects.filter(pk=csv.pk).delete()
    assert status(token) == 404


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"kind": "email", "target": "ops@example.com, not-an-address"}, "target", "Not an email address"),
        ({"kind": "slack", "target": "ftp://hooks.example.com/x"}, "target", "Not an http(s) URL"),
        (
            {"kind": "webhook", "target": "https://example.com/h", "secret": "short"},
            "secret",
            "16 characters",
        ),
        ({"kind": "email", "target": "ops@example.com", "formats": ["csv", "pdf"]}, "formats", "'pdf'"),
        ({"kind": "email", "target": "ops@example.com", "formats": "csv"}, "formats", "a list of names"),
        ({"kind": "sms", "target": "+4912345"}, "kind", "Unknown destination kind"),
    ],
)
def test_a_destination_that_could_never_be_delivered_to_is_refused_with_a_field_error(
    schedule, values, field, says
):
    with pytest.raises(ValidationError) as refused:
        ReportDestination.objects.create(schedule=schedule, **values)
    assert says in " ".join(refused.value.message_dict[field])
    assert not ReportDestination.objects.exists()

    form = ReportDestinationForm(
        data={"kind": values["kind"], "target": values["target"], "secret": values.get("secret", ""),
              "formats": values.get("formats", []), "attach_up_to_bytes": 1000, "enabled": "on"},
    )  # fmt: skip
    assert not form.is_valid()
    assert field in form.errors, form.errors  # beside its field (kind and formats: the form's own choices)
    if field in ("target", "secret"):
        assert says in " ".join(str(error) for error in form.errors[field])


def test_the_schedule_page_edits_destinations_and_the_run_page_shows_files_and_deliveries(
    alices_client, run, schedule, webhook
):
    page = alices_client.get(reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk]))
    inlines = [formset.opts for formset in page.context["inline_admin_formsets"]]
    assert any(isinstance(inline, ReportDestinationInline) for inline in inlines)
    assert 'name="report_destinations-TOTAL_FORMS"' in page.content.decode()
    ReportDestination.objects.create(schedule=schedule, kind="webhook", target=webhook.url, secret=SECRET)
    csv = stored(run, "csv", CSV, rows=2)
    webhook.fail_next(1, 503)
    assert deliver_report(run.pk, [csv]) == []

    html = alices_client.get(reverse("admin:jobs_jobrun_change", args=[run.pk])).content.decode()

    report = html.split('<div class="module" id="run-report">')[1]
    file_row = report.split('<tr class="report-file format-csv">')[1].split("</tr>")[0]
    assert "<td>CSV</td>" in file_row and "<td>2</td>" in file_row and f"{len(CSV)} bytes" in file_row
    delivery_row = report.split('<tr class="report-delivery status-sent">')[1].split("</tr>")[0]
    assert "<td>webhook</td>" in delivery_row and webhook.url in delivery_row and "<td>2</td>" in delivery_row
    assert "HTTP 503" in delivery_row


def schedule_form_with_destination(**destination: str) -> dict:
    """The add-schedule form (as tests/test_admin_forms.py posts it) plus one report destination row."""
    data = {
        "name": "weekday export", "task": "heartbeat", "schedule_kind": "interval", "every": "5",
        "period": "minutes", "args": "[]", "kwargs": "{}", "enabled": "on",
        "policy-TOTAL_FORMS": "1", "policy-INITIAL_FORMS": "0", "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1", "policy-0-catchup": "latest", "policy-0-overlap": "skip",
        "policy-0-jitter": "0", "policy-0-grace": "60", "policy-0-failures_before_alert": "1",
        "policy-0-successes_before_recovery": "1",
        "report_destinations-TOTAL_FORMS": "1", "report_destinations-INITIAL_FORMS": "0",
        "report_destinations-MIN_NUM_FORMS": "0", "report_destinations-MAX_NUM_FORMS": "1000",
        "report_destinations-0-attach_up_to_bytes": "10485760", "report_destinations-0-enabled": "on",
    }  # fmt: skip
    data.update({f"report_destinations-0-{name}": value for name, value in destination.items()})
    return data


def test_the_schedule_form_saves_a_destination_and_shows_a_bad_one_beside_its_field(admin_client):
    publish_catalog(worker="tests")
    add = reverse("admin:django_celery_beat_periodictask_add")

    refused = admin_client.post(
        add, schedule_form_with_destination(kind="slack", target="hooks.example.com/x")
    )
    assert refused.status_code == 200
    assert "Not an http(s) URL: &#x27;hooks.example.com/x&#x27;." in refused.content.decode()
    assert not PeriodicTask.objects.filter(name="weekday export").exists()

    saved = admin_client.post(
        add,
        {
            **schedule_form_with_destination(kind="email", target="ops@example.com"),
            "report_destinations-0-formats": ["csv", "xlsx"],
        },
    )
    assert saved.status_code == 302, saved.content[:3000]
    destination = ReportDestination.objects.get(schedule__name="weekday export")
    assert (destination.kind, destination.target, destination.formats) == (
        "email",
        "ops@example.com",
        ["csv", "xlsx"],
    )
