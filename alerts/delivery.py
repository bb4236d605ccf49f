"""The alert outbox: queueing notifications (``enqueue``) and delivering them (``deliver_due``).

Guarantees:

- **Queued once.** ``enqueue`` inserts one ``Notification`` per routed
  channel with ``ON CONFLICT DO NOTHING`` against the unique
  (incident, channel, event, sequence): a second call for the same event
  queues nothing. It runs inside the caller's transaction (``alerts.incidents``
  calls it in the transaction of the guarded UPDATE that won the right to
  page), so the page is queued if and only if that change commits.
- **Delivered at least once, sent once per claim.** ``deliver_due`` claims a
  due notification with one guarded UPDATE (pending, or sending with an
  expired claim; due: ``next_attempt_at <= now``) that also pushes
  ``next_attempt_at`` to the claim's end, so a second process running
  ``deliver_due`` at the same moment sees 0 rows and steps aside. A process
  that dies mid-send leaves the row ``sending`` until its claim expires;
  then another claims it again (the receiver may see that message twice: the
  webhook's ``X-Beatplatform-Notification`` header lets it tell).
- **Not lost.** A failed send (any non-2xx answer, a refused connection, a
  timeout) goes back to pending with exponential backoff and jitter
  (``ALERT_RETRY_BASE_SECONDS`` 10 s doubling, at most
  ``ALERT_RETRY_MAX_SECONDS`` 15 min); after ``ALERT_MAX_ATTEMPTS`` (10,
  about 50 minutes of trying) it is ``failed`` with its last error, and the
  admin's "retry now" sends it again. ``attempts`` counts tries begun (it is
  raised by the claim), so a message that kills its sender still gives up.
- **One channel never holds up another.** Each channel's notifications go
  out in their own thread, one after another, every call bounded by
  ``ALERT_SEND_TIMEOUT``. When a channel fails, the rest of its batch is not
  tried in this round: it waits as long as the failed one (the channel backs
  off as a whole), while the other channels' messages are already out.
- A channel's ``last_sent_at`` is set on each success, ``last_error`` and
  ``last_error_at`` on each failure and cleared by the next success.
- Notifications of a disabled channel are not sent: ``deliver_due`` marks
  them failed ("channel disabled"). The admin's test alert and "retry now"
  send to a disabled channel too: that is how one checks it before enabling.

Every change of a notification's ``status`` is a guarded UPDATE in this
module: pending -> sending (claim), sending -> sent | pending (retry) |
failed (last attempt) | pending (released, its channel failed first),
pending | failed -> pending due now (``retry_now``), pending -> failed
(channel disabled), sending with an expired claim and every try used -> failed.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, F, PositiveSmallIntegerField, Q, Value, When

from alerts.channels import DeliveryError, send, timeout
from alerts.messages import render, render_test
from alerts.models import Channel, Incident, Notification, NotificationEvent, NotificationStatus
from jobs.models import JobDefinition

logger = logging.getLogger(__name__)

PENDING, SENDING = NotificationStatus.PENDING, NotificationStatus.SENDING
SENT, FAILED = NotificationStatus.SENT, NotificationStatus.FAILED
# Threads sending at once (one per channel with due notifications).
MAX_PARALLEL_CHANNELS = 16


def max_attempts() -> int:
    return int(settings.ALERT_MAX_ATTEMPTS)


def backoff(attempts: int) -> timedelta:
    """The wait after failed try number ``attempts``: 10 s, 20 s, 40 s, ... at most 15 min, ±20 %."""
    base = float(settings.ALERT_RETRY_BASE_SECONDS)
    cap = float(settings.ALERT_RETRY_MAX_SECONDS)
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    # Jitter spreads the retries of many notifications that failed together.
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))  # noqa: S311 (not cryptographic)


# --- queueing ----------------------------------------------------------------------------


def routed_channel_ids(incident: Incident) -> list[int]:
    """Enabled channels for ``incident``: default ones, and those listing its schedule or its job.

    A ``queue:<name>`` incident (no worker) also goes to channels routed for
    the jobs of that queue (the catalog's ``JobDefinition.queue``); ``beat``
    goes to default channels only.
    """
    enabled = Channel.objects.filter(enabled=True)
    ids = set(enabled.filter(is_default=True).values_list("pk", flat=True))
    if incident.schedule_id is not None:
        ids.update(enabled.filter(schedules=incident.schedule_id).values_list("pk", flat=True))
    jobs = {incident.job} if incident.job else set()
    if incident.scope.startswith("queue:"):
        queue = incident.scope.removeprefix("queue:")
        jobs.update(JobDefinition.objects.filter(queue=queue).values_list("name", flat=True))
    if jobs:
        # Channels are few; their job lists are compared here, the same on every database.
        for pk, names in enabled.values_list("pk", "jobs"):
            if isinstance(names, list) and jobs.intersection(names):
                ids.add(pk)
    return sorted(ids)


def enqueue(incident: Incident, event: str, sequence: int = 0, *, now: datetime | None = None) -> int:
    """Queue ``event`` of ``incident`` to each routed channel; how many were queued.

    The message is rendered once for all channels. A (incident, channel,
    event, sequence) already queued is left alone (``ON CONFLICT DO NOTHING``);
    it is not counted when it was there before this call.
    """
    now = now or datetime.now(UTC)
    channel_ids = routed_channel_ids(incident)
    if not channel_ids:
        logger.warning("incident %s: no enabled channel routes it; %s not sent", incident.pk, event)
        return 0
    already = set(
        Notification.objects.filter(
            incident=incident, event=event, sequence=sequence, channel_id__in=channel_ids
        ).values_list("channel_id", flat=True)
    )
    new = [pk for pk in channel_ids if pk not in already]
    if not new:
        return 0
    payload = render(incident, event, sequence, now=now)
    Notification.objects.bulk_create(
        [
            Notification(
                incident=incident,
                channel_id=pk,
                event=event,
                sequence=sequence,
                payload=payload,
                next_attempt_at=now,
            )
            for pk in new
        ],
        ignore_conflicts=True,
    )
    return len(new)


def enqueue_test(channel: Channel, *, now: datetime | None = None) -> Notification:
    """Queue a test alert (no incident) to ``channel``, due now."""
    now = now or datetime.now(UTC)
    return Notification.objects.create(
        incident=None,
        channel=channel,
        event=NotificationEvent.TEST,
        payload=render_test(channel.name, now=now),
        next_attempt_at=now,
    )


# --- delivering ----------------------------------------------------------------------------


@dataclass
class Claimed:
    pk: int
    channel_id: int
    event: str
    payload: dict[str, Any]
    attempts: int  # after this claim
    until: datetime


@dataclass
class Outcome:
    claimed: Claimed
    error: str | None  # None: sent; for a skipped one: why


def _due(now: datetime) -> Q:
    return Q(status__in=(PENDING, SENDING), next_attempt_at__lte=now)


def _claim(row: dict[str, Any], now: datetime, until: datetime) -> Claimed | None:
    """pending (or sending, claim expired), due -> sending until ``until``; None if another process won."""
    won = Notification.objects.filter(_due(now), pk=row["pk"], attempts=row["attempts"]).update(
        status=SENDING, claimed_until=until, next_attempt_at=until, attempts=row["attempts"] + 1
    )
    if not won:
        return None
    return Claimed(row["pk"], row["channel_id"], row["event"], row["payload"], row["attempts"] + 1, until)


def _send_batch(channel: Channel, batch: list[Claimed]) -> list[Outcome]:
    """Send one channel's notifications in order; after its first failure, the rest are skipped."""
    outcomes: list[Outcome] = []
    for index, item in enumerate(batch):
        try:
            send(channel, item.pk, item.event, item.payload)
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a sender must cost one message, not the loop
            logger.exception("notification %s: sending through %s failed", item.pk, channel)
            error = f"{type(exc).__name__}: {exc}"
        else:
            outcomes.append(Outcome(item, None))
            continue
        outcomes.append(Outcome(item, error[:1000]))
        outcomes.extend(Outcome(rest, "skipped: its channel failed first") for rest in batch[index + 1 :])
        break
    return outcomes


def _mine(item: Claimed) -> Q:
    """The row while it is still this claim's (no other process took it over after expiry)."""
    return Q(pk=item.pk, status=SENDING, claimed_until=item.until, attempts=item.attempts)


def _record(outcomes: list[Outcome], now: datetime) -> int:
    """Write each outcome with a guarded UPDATE on the claim; the channel's last success or error.

    ``now`` is when the sends ended: a retry waits its backoff from then.
    """
    sent = 0
    retry_at: dict[int, datetime] = {}
    delivered: set[int] = set()  # channels with a success this round
    errors: dict[int, str] = {}  # channels with a failure this round (after their successes)
    for outcome in outcomes:
        item = outcome.claimed
        if outcome.error is None:
            won = Notification.objects.filter(_mine(item)).update(
                status=SENT, sent_at=now, claimed_until=None, last_error=""
            )
            sent += won
            delivered.add(item.channel_id)
        elif outcome.error.startswith("skipped:"):
            # Never tried: its try is given back; it waits as long as its channel's failed one.
            Notification.objects.filter(_mine(item)).update(
                status=PENDING,
                claimed_until=None,
                attempts=item.attempts - 1,
                next_attempt_at=retry_at.get(item.channel_id, now),
            )
        else:
            last = item.attempts >= max_attempts()
            next_at = now + backoff(item.attempts)
            retry_at[item.channel_id] = next_at
            Notification.objects.filter(_mine(item)).update(
                status=FAILED if last else PENDING,
                claimed_until=None,
                next_attempt_at=now if last else next_at,
                last_error=outcome.error,
            )
            errors[item.channel_id] = outcome.error
            logger.warning(
                "notification %s (%s) to channel %s, try %s: %s%s",
                item.pk,
                item.event,
                item.channel_id,
                item.attempts,
                outcome.error,
                " (gave up)" if last else "",
            )
    # A channel's batch is sequential: its successes came before its failure, if any.
    if delivered:
        Channel.objects.filter(pk__in=delivered).update(last_sent_at=now, last_error="", last_error_at=None)
    for channel_id, error in errors.items():
        Channel.objects.filter(pk=channel_id).update(last_error=error[:1000], last_error_at=now)
    return sent


def _deliver(rows: list[dict[str, Any]], now: datetime, clock_given: bool) -> list[Outcome]:
    """Claim ``rows``, send them (a thread per channel), record the outcomes.

    Outcomes are dated when the sends end (a timeout takes seconds), or at
    ``now`` when the caller gave the time (tests move it themselves).
    """
    by_channel: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_channel[row["channel_id"]].append(row)
    channels = Channel.objects.in_bulk(list(by_channel))
    batches: list[tuple[Channel, list[Claimed]]] = []
    for channel_id, channel_rows in by_channel.items():
        # The claim outlasts every send of the batch at its timeout, and some.
        until = now + timedelta(seconds=timeout() * (len(channel_rows) + 1) + 30)
        claimed = [c for c in (_claim(row, now, until) for row in channel_rows) if c is not None]
        if claimed and channel_id in channels:
            batches.append((channels[channel_id], claimed))
    if not batches:
        return []
    if len(batches) == 1:
        outcomes = _send_batch(*batches[0])
    else:
        # Threads only send (no database): each channel waits on its own network.
        with ThreadPoolExecutor(max_workers=min(len(batches), MAX_PARALLEL_CHANNELS)) as pool:
            outcomes = [o for result in pool.map(lambda b: _send_batch(*b), batches) for o in result]
    _record(outcomes, now if clock_given else datetime.now(UTC))
    return outcomes


ROW_FIELDS = ("pk", "channel_id", "event", "payload", "attempts")


def deliver_due(now: datetime | None = None, limit: int = 100) -> int:
    """Send up to ``limit`` due notifications (oldest due first); how many were sent."""
    clock_given = now is not None
    now = now or datetime.now(UTC)
    disabled = Notification.objects.filter(status=PENDING, next_attempt_at__lte=now, channel__enabled=False)
    disabled.update(status=FAILED, last_error="not sent: its channel was disabled")
    # sending, claim expired, every try used: its senders died each time (a message that kills them?).
    Notification.objects.filter(
        status=SENDING, next_attempt_at__lte=now, attempts__gte=max_attempts()
    ).update(
        status=FAILED,
        claimed_until=None,
        last_error="gave up: its sender never reported back from its last try",
    )
    rows = list(
        Notification.objects.filter(_due(now), channel__enabled=True)
        .order_by("next_attempt_at")
        .values(*ROW_FIELDS)[:limit]
    )
    return sum(1 for outcome in _deliver(rows, now, clock_given) if outcome.error is None)


def deliver_now(ids: list[int], now: datetime | None = None) -> dict[int, str | None]:
    """Send these notifications now (the admin's test alert, "retry now"); error or None per id.

    Only notifications that are due and not claimed by another process are
    sent; ``retry_now`` makes pending and failed ones due first.
    """
    clock_given = now is not None
    now = now or datetime.now(UTC)
    rows = list(Notification.objects.filter(_due(now), pk__in=ids).values(*ROW_FIELDS))
    return {outcome.claimed.pk: outcome.error for outcome in _deliver(rows, now, clock_given)}


def retry_now(ids: list[int], now: datetime | None = None) -> int:
    """pending | failed -> pending, due now (a failed one gets its full set of tries again)."""
    now = now or datetime.now(UTC)
    return Notification.objects.filter(pk__in=ids, status__in=(PENDING, FAILED)).update(
        status=PENDING,
        next_attempt_at=now,
        attempts=Case(
            When(status=FAILED, then=Value(0)),
            default=F("attempts"),
            output_field=PositiveSmallIntegerField(),
        ),
    )
