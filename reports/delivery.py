"""Sending a report run's files to its schedule's destinations, and every change of a delivery.

``deliver_report(run_id, files)`` is called by the report job inside its run,
once the files are stored. For each enabled ``ReportDestination`` of the
run's schedule it keeps one ``ReportDelivery`` row (created on first use) and
sends the files there, trying up to ``REPORT_DELIVERY_ATTEMPTS`` times (3)
with a pause of ``REPORT_DELIVERY_BACKOFF_SECONDS`` between tries (1 s, then
4 s; the last value repeats). It returns one line per destination that still
failed (empty: everything was delivered, or there was nowhere to deliver);
the caller fails the run with them, so a failed delivery is visible on the
run, retried with it and alerted on like any failure.

- A run without a schedule, or a schedule without enabled destinations,
  delivers nothing and returns ``[]``.
- A delivery already ``sent`` is not sent again when the run is retried; a
  ``failed`` one is reopened (its attempts keep counting). Delivery is at
  least once: a run killed between a receiver's taking the message and the
  ``sent`` write sends it again on retry (the webhook's delivery id is the
  same, for receivers that deduplicate).
- Which files: the destination's ``formats``, or all of them when empty. A
  destination asking only for renderings the run did not produce fails with
  a message saying which it did produce.
- **email**: one message to the addresses, subject ``"<report>: <window>"``,
  the body lists the window, the parameters and each file's rows and size;
  a file up to ``attach_up_to_bytes`` is attached, a larger one is a link.
- **slack**: an incoming-webhook message (a header, the same facts, one
  download button per file), escaped and cut to Slack's limits as alerts do.
- **webhook**: ``POST`` of ``{"event": "report.ready", "report", "run",
  "files": [{"format", "url", "size", "rows"}], ...}`` signed exactly like
  alerts' webhooks (``alerts.channels.sign_webhook``: the timestamp and
  HMAC-SHA256 headers), plus ``X-Beatplatform-Delivery`` (the delivery's id,
  the same on every try) for receivers that deduplicate.
- Links are signed and expire with the file (``reports.links``).

Destinations are sent to in parallel, one thread each doing only network
I/O; the run's thread records each step (``send_all``), so a destination
that hangs or keeps failing delays no other.

Sending reuses alerts' senders' parts (``post_json``, its timeouts and
answers, Slack's escaping, webhook signing), so a receiver's answer reads the
same in both places. Every network call is bounded by ``ALERT_SEND_TIMEOUT``:
a delivery takes at most attempts × timeout + the backoffs (35 s with the
defaults), however many destinations.

Each state change of a delivery is one guarded UPDATE below
(``record_attempt``, ``record_retry``, ``record_sent``, ``record_failed``,
``reopen_delivery``), allowed only from the state it names, and says whether
it won.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core import mail
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from alerts.channels import (
    SIGNATURE_HEADER,
    SLACK_HEADER_LIMIT,
    SLACK_SECTION_LIMIT,
    TIMESTAMP_HEADER,
    DeliveryError,
    _slack_escape,
    email_addresses,
    post_json,
    sign_webhook,
    timeout,
)
from jobs.models import JobRun
from reports.links import download_url
from reports.models import DeliveryStatus, DestinationKind, ReportDelivery, ReportDestination, ReportFile
from reports.storage import download_name, reports_storage

logger = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Beatplatform-Delivery"
EVENT = "report.ready"
ERROR_LIMIT = 2000  # characters of a receiver's answer kept on the delivery
SLACK_BUTTONS_LIMIT = 25  # Slack's limit of elements in one actions block


def attempts_allowed() -> int:
    return max(1, int(getattr(settings, "REPORT_DELIVERY_ATTEMPTS", 3)))


def backoff_seconds(after_attempt: int) -> float:
    """The pause after failed attempt ``after_attempt`` (1-based): 1 s, 4 s, then 4 s again."""
    steps: Sequence[float] = getattr(settings, "REPORT_DELIVERY_BACKOFF_SECONDS", (1.0, 4.0)) or (0.0,)
    return float(steps[min(after_attempt, len(steps)) - 1])


# --- the guarded writes of a delivery ---------------------------------------------------------


def open_delivery(run_id: Any, destination: ReportDestination) -> ReportDelivery:
    """The run's delivery to ``destination``: created pending, or the one an earlier attempt left."""
    delivery = ReportDelivery.objects.filter(run_id=run_id, destination=destination).order_by("id").first()
    if delivery is None:
        return ReportDelivery.objects.create(
            run_id=run_id, destination=destination, kind=destination.kind, target=destination.target
        )
    if delivery.status == DeliveryStatus.FAILED and reopen_delivery(delivery.pk):
        delivery.refresh_from_db()
    return delivery


def reopen_delivery(delivery_id: int) -> bool:
    """failed → pending: the run is being retried, so is its delivery."""
    return _update(delivery_id, DeliveryStatus.FAILED, status=DeliveryStatus.PENDING)


def record_attempt(delivery_id: int) -> bool:
    """One more try begins (pending only)."""
    return _update(delivery_id, DeliveryStatus.PENDING, attempts=F("attempts") + 1)


def record_retry(delivery_id: int, error: str) -> bool:
    """A try failed and another follows: keep the receiver's answer, stay pending."""
    return _update(delivery_id, DeliveryStatus.PENDING, last_error=error[:ERROR_LIMIT])


def record_sent(delivery_id: int, now: datetime | None = None) -> bool:
    """pending → sent (an earlier try's error stays, to show what was retried)."""
    return _update(
        delivery_id, DeliveryStatus.PENDING, status=DeliveryStatus.SENT, sent_at=now or timezone.now()
    )


def record_failed(delivery_id: int, error: str) -> bool:
    """pending → failed, with why: the last try's answer."""
    return _update(
        delivery_id, DeliveryStatus.PENDING, status=DeliveryStatus.FAILED, last_error=error[:ERROR_LIMIT]
    )


def _update(delivery_id: int, from_status: str, **values: Any) -> bool:
    return ReportDelivery.objects.filter(pk=delivery_id, status=from_status).update(**values) == 1


# --- what is sent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileLink:
    file: ReportFile
    name: str  # the file's own name, for an attachment
    url: str

    @property
    def label(self) -> str:
        return self.file.get_format_display()


@dataclass(frozen=True)
class ReportMessage:
    """What every kind of destination says about one report run."""

    report: str
    run_id: str
    run_url: str
    schedule_id: int | None
    schedule_name: str
    window: str
    window_start: datetime | None
    window_end: datetime | None
    parameters: dict[str, Any]
    files: list[FileLink]

    @property
    def title(self) -> str:
        return f"{self.report}: {self.window}"

    def fact_lines(self) -> list[str]:
        lines = [f"Window: {self.window}", "Parameters:"]
        lines += [f"  {key}: {_plain(value)}" for key, value in sorted(self.parameters.items())] or [
            "  (none)"
        ]
        return lines


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def format_window(start: datetime | None, end: datetime | None, fallback: datetime) -> str:
    if start and end:
        return f"{utc(start)} to {utc(end)} UTC"  # ASCII: a subject with an en dash gets encoded-words
    if end:
        return f"until {utc(end)} UTC"
    if start:
        return f"since {utc(start)} UTC"
    return f"as of {utc(fallback)} UTC"


def report_message(run: JobRun, files: Sequence[ReportFile]) -> ReportMessage:
    first = files[0]
    return ReportMessage(
        report=first.report or run.job,
        run_id=str(run.pk),
        run_url=settings.PUBLIC_URL + reverse("admin:jobs_jobrun_change", args=[run.pk]),
        schedule_id=run.schedule_id,
        schedule_name=run.schedule_name,
        window=format_window(first.window_start, first.window_end, run.scheduled_for),
        window_start=first.window_start,
        window_end=first.window_end,
        parameters=dict(first.parameters or {}),
        files=[FileLink(file, download_name(file), download_url(file)) for file in files],
    )


def chosen_files(destination: ReportDestination, files: Sequence[ReportFile]) -> list[ReportFile]:
    wanted = destination.formats or []
    return [file for file in files if not wanted or file.format in wanted]


# --- the senders (no database writes; DeliveryError says why not) -------------------------------


def send_email(destination: ReportDestination, delivery_id: int, message: ReportMessage) -> None:
    attached: list[tuple[str, bytes]] = []
    lines = [f"{message.report} is ready.", "", *message.fact_lines(), "", "Files:"]
    for link in message.files:
        facts = f"{link.file.rows:,} rows, {format_size(link.file.size_bytes)}"
        if link.file.size_bytes <= destination.attach_up_to_bytes:
            with reports_storage().open(link.file.storage_name, "rb") as stored:
                attached.append((link.name, stored.read()))
            lines.append(f"  {link.label}: {facts}, attached as {link.name}")
        else:
            lines.append(f"  {link.label}: {facts}, too large to attach: {link.url}")
    expiry = min(link.file.expires_at for link in message.files)
    lines += ["", f"Links work until {utc(expiry)} UTC.", f"Run: {message.run_url}"]
    email = mail.EmailMessage(
        subject=message.title[:200],
        body="\n".join(lines) + "\n",
        to=email_addresses(destination.target),
        connection=mail.get_connection(timeout=timeout()),
        headers={DELIVERY_HEADER: str(delivery_id)},
    )
    for name, content in attached:
        email.attach(name, content)  # the type is guessed from the name (text/csv, ...)
    try:
        email.send(fail_silently=False)
    except Exception as exc:  # the SMTP backend raises smtplib/socket errors of many kinds
        raise DeliveryError(f"email to {destination.target}: {type(exc).__name__}: {exc}") from exc


def slack_body(message: ReportMessage) -> dict[str, Any]:
    lines = [*message.fact_lines(), "Files:"]
    lines += [
        f"  {link.label}: {link.file.rows:,} rows, {format_size(link.file.size_bytes)}"
        for link in message.files
    ]
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": f"Download {link.label}"}, "url": link.url}
        for link in message.files
    ][: SLACK_BUTTONS_LIMIT - 1]
    buttons.append(
        {"type": "button", "text": {"type": "plain_text", "text": "Open run"}, "url": message.run_url}
    )
    return {
        "text": _slack_escape(message.title),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message.title[:SLACK_HEADER_LIMIT]}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _slack_escape("\n".join(lines))[:SLACK_SECTION_LIMIT]},
            },
            {"type": "actions", "elements": buttons},
        ],
    }


def send_slack(destination: ReportDestination, delivery_id: int, message: ReportMessage) -> None:
    post_json(destination.target, _dumps(slack_body(message)), {})


def webhook_body(message: ReportMessage, delivery_id: int) -> dict[str, Any]:
    return {
        "event": EVENT,
        "delivery_id": delivery_id,
        "report": message.report,
        "run": message.run_id,
        "run_url": message.run_url,
        "schedule": {"id": message.schedule_id, "name": message.schedule_name},
        "window": {"start": message.window_start, "end": message.window_end},
        "parameters": message.parameters,
        "files": [
            {
                "format": link.file.format,
                "url": link.url,
                "size": link.file.size_bytes,
                "rows": link.file.rows,
                "expires_at": link.file.expires_at,
            }
            for link in message.files
        ],
    }


def send_webhook(destination: ReportDestination, delivery_id: int, message: ReportMessage) -> None:
    body = _dumps(webhook_body(message, delivery_id))
    timestamp = int(time.time())
    post_json(
        destination.target,
        body,
        {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(destination.secret, timestamp, body),
            DELIVERY_HEADER: str(delivery_id),
        },
    )


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True, default=str).encode()


Sender = Callable[[ReportDestination, int, ReportMessage], None]
SENDERS: dict[str, Sender] = {
    DestinationKind.EMAIL: send_email,
    DestinationKind.SLACK: send_slack,
    DestinationKind.WEBHOOK: send_webhook,
}


# --- delivering ----------------------------------------------------------------------------------


def deliver_report(run_id: Any, files: Sequence[ReportFile]) -> list[str]:
    """Send ``files`` to every enabled destination of the run's schedule; the errors (empty: all went).

    Destinations are sent to at the same time, one thread each (network only:
    threads never touch the database), so one that hangs or keeps failing never
    delays another; this thread records each step as the senders report it.
    """
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None or run.schedule_id is None:
        return []
    errors: dict[int, str] = {}  # by delivery, in the destinations' order
    labels: dict[int, str] = {}
    sends: list[tuple[ReportDestination, int, ReportMessage]] = []
    destinations = ReportDestination.objects.filter(schedule_id=run.schedule_id, enabled=True).order_by("id")
    for destination in destinations:
        delivery = open_delivery(run.pk, destination)
        if delivery.status != DeliveryStatus.PENDING:
            continue  # sent by an earlier attempt of this run
        labels[delivery.pk] = f"{destination.get_kind_display().split(' ')[0]} to {destination.target}"
        errors[delivery.pk] = ""
        prepared = prepare_message(destination, run, files)
        if isinstance(prepared, str):  # nothing to send: no retry would change that
            record_attempt(delivery.pk)
            record_failed(delivery.pk, prepared)
            errors[delivery.pk] = prepared
        else:
            sends.append((destination, delivery.pk, prepared))
    for outcome in send_all(sends):
        if outcome.step == "failed":
            errors[outcome.delivery_id] = outcome.error
    return [f"{labels[delivery_id]}: {error}" for delivery_id, error in errors.items() if error]


def prepare_message(
    destination: ReportDestination, run: JobRun, files: Sequence[ReportFile]
) -> ReportMessage | str:
    """What to send to ``destination``, or why there is nothing to send."""
    chosen = chosen_files(destination, files)
    if not chosen:
        produced = ", ".join(sorted({file.format for file in files})) or "no file"
        return f"this run produced {produced}; the destination takes only {', '.join(destination.formats)}"
    try:
        return report_message(run, chosen)
    except Exception as exc:  # e.g. the download view's URL is not configured: a clear line, not a crash
        return f"cannot build the message: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Outcome:
    """One step of one delivery, as its sending thread reports it."""

    delivery_id: int
    step: str  # "attempt", "retry", "sent" or "failed" (the last two end the delivery)
    error: str = ""


RECORDERS: dict[str, Callable[[Outcome], bool]] = {
    "attempt": lambda outcome: record_attempt(outcome.delivery_id),
    "retry": lambda outcome: record_retry(outcome.delivery_id, outcome.error),
    "sent": lambda outcome: record_sent(outcome.delivery_id),
    "failed": lambda outcome: record_failed(outcome.delivery_id, outcome.error),
}


def send_all(sends: Sequence[tuple[ReportDestination, int, ReportMessage]]) -> list[Outcome]:
    """Run ``attempt_delivery`` for each in its own thread; record every step here; the final outcomes."""
    steps: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    threads = [
        threading.Thread(
            target=attempt_delivery,
            args=(destination, delivery_id, message, steps.put),
            name=f"report-delivery-{delivery_id}",
            daemon=True,  # a run ended by its hard limit does not wait for a hanging receiver
        )
        for destination, delivery_id, message in sends
    ]
    for thread in threads:
        thread.start()
    finals: list[Outcome] = []
    while len(finals) < len(threads):
        outcome = steps.get()
        RECORDERS[outcome.step](outcome)
        if outcome.step in ("sent", "failed"):
            finals.append(outcome)
    for thread in threads:
        thread.join()
    return finals


def attempt_delivery(
    destination: ReportDestination,
    delivery_id: int,
    message: ReportMessage,
    report: Callable[[Outcome], None],
) -> None:
    """Try one destination up to ``attempts_allowed()`` times; ``report`` each step (no database here).

    Always reports exactly one final step ("sent" or "failed"), whatever happens.
    """
    error = "the sender stopped unexpectedly"
    try:
        sender = SENDERS[destination.kind]
        allowed = attempts_allowed()
        for attempt in range(1, allowed + 1):
            report(Outcome(delivery_id, "attempt"))
            try:
                sender(destination, delivery_id, message)
            except DeliveryError as exc:
                error = str(exc)
            except Exception as exc:  # not the receiver's answer (a stored file missing, ...): no retry helps
                error = f"{type(exc).__name__}: {exc}"
                logger.exception("report delivery %s failed", delivery_id)
                break
            else:
                report(Outcome(delivery_id, "sent"))
                return
            if attempt < allowed:
                report(Outcome(delivery_id, "retry", error))
                time.sleep(backoff_seconds(attempt))
    except BaseException as exc:  # never leave the recording thread waiting
        error = f"{type(exc).__name__}: {exc}"
    report(Outcome(delivery_id, "failed", error))
