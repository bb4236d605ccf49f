"""One sender per channel kind, and the check of a channel's target and secret.

``send(channel, notification_id, event, payload)`` delivers one rendered
message (``alerts.messages``) or raises ``DeliveryError`` saying why not; it
never writes the database (``alerts.delivery`` records the outcome). Every
network call has a bounded timeout (``ALERT_SEND_TIMEOUT`` seconds, default
10), so a channel that hangs costs at most that.

- **webhook**: ``POST`` of the JSON payload (plus ``notification_id``) to the
  target. Signed, so a receiver can tell it is ours and fresh::

      X-Beatplatform-Timestamp: <unix seconds, an integer>
      X-Signature-SHA256: hex(HMAC-SHA256(key=secret, msg=b"<timestamp>." + raw_body))

  The receiver recomputes the HMAC over the timestamp header, a dot and the
  body exactly as received (before parsing JSON), compares in constant time,
  and rejects a timestamp more than 5 minutes from its clock: a replayed
  request carries an old timestamp, and changing it breaks the signature
  (``verify_webhook_signature`` below does all three). Delivery is at least
  once: a receiver that must not act twice deduplicates on
  ``X-Beatplatform-Notification`` (the notification's id; a retry keeps it).
- **slack**: ``POST`` to the incoming-webhook URL of ``{"text", "blocks"}``:
  ``text`` is the notification fallback, ``blocks`` a header, the message as
  a section (mrkdwn, ``&<>`` escaped) and link buttons. Slack answers 200 ``ok``.
- **email**: Django's email backend (``EMAIL_*`` settings), one message to
  the comma-separated addresses; subject the title, body the text.
- **pagerduty**: Events API v2, ``POST`` to the target or
  ``https://events.pagerduty.com/v2/enqueue``: ``{routing_key, event_action,
  dedup_key, payload: {summary, source, severity, timestamp, custom_details},
  links}``. Trigger and reminder send ``trigger`` (PagerDuty deduplicates a
  repeated trigger by ``dedup_key``: the reminder re-pages nobody twice but
  keeps the alert open), a recovery sends ``resolve`` with the same
  ``dedup_key``. Success is 202. A test alert is a trigger (severity info)
  followed at once by its resolve, so it leaves no open alert behind.

Any other answer than a 2xx, a refused connection or a timeout is a
``DeliveryError`` whose message names the channel's answer (status and the
start of the body): ``alerts.delivery`` retries it with backoff.

``validate_channel(kind, target, secret)`` is the one check of a channel's
settings; the admin form and ``Channel.clean`` both call it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from django.conf import settings
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email

from alerts.models import ChannelKind, NotificationEvent

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SIGNATURE_HEADER = "X-Signature-SHA256"
TIMESTAMP_HEADER = "X-Beatplatform-Timestamp"
NOTIFICATION_HEADER = "X-Beatplatform-Notification"
# How far a webhook's timestamp may be from the receiver's clock (replay window).
SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_SECRET_MIN_LENGTH = 16
PAGERDUTY_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
USER_AGENT = "beatplatform-alerts/1"
# Slack's limits: header text 150 characters, section text 3000.
SLACK_HEADER_LIMIT = 150
SLACK_SECTION_LIMIT = 3000

# The text's link lines ("Run: https://..."): Slack shows them as buttons instead.
LINK_LINE = re.compile(r"^(Run|Schedule|Incident): https?://")

# The payload's links in the order people want them (a jsonb column does not keep key order).
LINK_ORDER = ("run", "schedule", "incident")

_http_url = URLValidator(schemes=["http", "https"])


class ChannelLike(Protocol):
    name: str
    kind: str
    target: str
    secret: str


class DeliveryError(Exception):
    """The channel did not take the message; the text says what it answered."""


def timeout() -> float:
    return float(settings.ALERT_SEND_TIMEOUT)


# --- validation ----------------------------------------------------------------------


def email_addresses(target: str) -> list[str]:
    return [part.strip() for part in target.split(",") if part.strip()]


def validate_channel(kind: str, target: str, secret: str) -> None:
    """Raise ``ValidationError`` (keyed by field) unless ``target`` and ``secret`` suit ``kind``.

    webhook: an http(s) URL and a secret of at least 16 characters; slack: an
    http(s) URL; email: one or more valid addresses, comma-separated;
    pagerduty: an http(s) URL or empty, and a 32-character integration key.
    """
    errors: dict[str, list[str]] = {}
    target = (target or "").strip()
    secret = secret or ""

    def url(required: bool) -> None:
        if not target:
            if required:
                errors.setdefault("target", []).append("A URL is required (http:// or https://).")
            return
        try:
            _http_url(target)
        except ValidationError:
            errors.setdefault("target", []).append(f"Not an http(s) URL: {target[:200]!r}.")

    if kind == ChannelKind.WEBHOOK:
        url(required=True)
        if len(secret) < WEBHOOK_SECRET_MIN_LENGTH:
            errors["secret"] = [
                f"A webhook needs a signing secret of at least {WEBHOOK_SECRET_MIN_LENGTH} characters "
                "(the receiver checks the HMAC-SHA256 signature with it)."
            ]
    elif kind == ChannelKind.SLACK:
        url(required=True)
    elif kind == ChannelKind.EMAIL:
        addresses = email_addresses(target)
        if not addresses:
            errors["target"] = ["At least one email address is required (comma-separated)."]
        bad = []
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                bad.append(address)
        if bad:
            errors["target"] = [f"Not an email address: {', '.join(repr(b[:100]) for b in bad)}."]
    elif kind == ChannelKind.PAGERDUTY:
        url(required=False)
        if not PAGERDUTY_KEY.match(secret):
            errors["secret"] = [
                "PagerDuty needs the integration's routing key: 32 letters and digits "
                f"(got {len(secret)} characters)."
            ]
    else:
        errors["kind"] = [f"Unknown channel kind {kind!r}."]
    if errors:
        raise ValidationError(errors)


# --- webhook signatures -------------------------------------------------------------------


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret``."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_webhook_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (not a replay)."""
    by_name = {name.lower(): value for name, value in headers.items()}  # header names ignore case
    try:
        timestamp = int(by_name[TIMESTAMP_HEADER.lower()])
        signature = by_name[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


# --- senders ----------------------------------------------------------------------------------


def post_json(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body``; the status and the start of the answer, or ``DeliveryError`` (not 2xx, timeout)."""
    request = urllib.request.Request(  # noqa: S310 (the URL was checked to be http(s))
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout()) as response:  # noqa: S310
            return response.status, response.read(2000)
    except urllib.error.HTTPError as exc:
        answer = exc.read(300).decode("utf-8", "replace").strip()
        raise DeliveryError(f"HTTP {exc.code} from {url}: {answer or exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach {url}: {reason}") from exc


def ordered_links(payload: dict[str, Any]) -> list[tuple[str, str]]:
    links = payload.get("links") or {}
    return [(name, links[name]) for name in LINK_ORDER if links.get(name)]


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True, default=str).encode()


def send_webhook(channel: ChannelLike, notification_id: int, event: str, payload: dict[str, Any]) -> None:
    body = _dumps({**payload, "event": event, "notification_id": notification_id})
    timestamp = int(time.time())
    post_json(
        channel.target,
        body,
        {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign_webhook(channel.secret, timestamp, body),
            NOTIFICATION_HEADER: str(notification_id),
        },
    )


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook body: ``text`` (the fallback) and Block Kit ``blocks``."""
    title = payload["title"]
    body = payload["text"].split("\n", 2)[-1] if "\n" in payload["text"] else payload["text"]
    body = "\n".join(line for line in body.splitlines() if not LINK_LINE.match(line)).strip()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:SLACK_HEADER_LIMIT]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _slack_escape(body)[:SLACK_SECTION_LIMIT] or "-"},
        },
    ]
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": f"Open {name}"}, "url": url}
        for name, url in ordered_links(payload)
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": _slack_escape(title), "blocks": blocks}


def send_slack(channel: ChannelLike, notification_id: int, event: str, payload: dict[str, Any]) -> None:
    post_json(channel.target, _dumps(slack_message(payload)), {})


def send_email(channel: ChannelLike, notification_id: int, event: str, payload: dict[str, Any]) -> None:
    message = mail.EmailMessage(
        subject=payload["title"][:200],
        body=payload["text"],
        to=email_addresses(channel.target),
        connection=mail.get_connection(timeout=timeout()),
        headers={NOTIFICATION_HEADER: str(notification_id)},
    )
    try:
        message.send(fail_silently=False)
    except Exception as exc:  # the SMTP backend raises smtplib/socket errors of many kinds
        raise DeliveryError(f"email to {channel.target}: {type(exc).__name__}: {exc}") from exc


def pagerduty_event(channel: ChannelLike, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The Events API v2 body: trigger (trigger, remind, test) or resolve, keyed by the incident."""
    action = "resolve" if event == NotificationEvent.RESOLVE else "trigger"
    document: dict[str, Any] = {
        "routing_key": channel.secret,
        "event_action": action,
        "dedup_key": payload["dedup_key"],
    }
    if action == "trigger":
        document["payload"] = {
            "summary": payload["title"][:1024],
            "source": payload.get("schedule") or payload.get("scope") or "beatplatform",
            "severity": payload["severity"],
            "timestamp": payload["opened_at"],
            "component": payload.get("job") or payload.get("scope"),
            "class": payload.get("kind"),
            "custom_details": {"text": payload["text"], **(payload.get("details") or {})},
        }
        document["links"] = [
            {"href": url, "text": f"{name} in the admin"} for name, url in ordered_links(payload)
        ]
    return document


def send_pagerduty(channel: ChannelLike, notification_id: int, event: str, payload: dict[str, Any]) -> None:
    """One event; a test alert is a trigger resolved at once (seen in PagerDuty, left open nowhere)."""
    actions = [event, NotificationEvent.RESOLVE.value] if event == NotificationEvent.TEST else [event]
    for action in actions:
        status, answer = post_json(
            channel.target or PAGERDUTY_EVENTS_URL, _dumps(pagerduty_event(channel, action, payload)), {}
        )
        if status != 202:
            raise DeliveryError(f"PagerDuty answered {status} to {action}, not 202: {answer[:300]!r}")


SENDERS = {
    ChannelKind.WEBHOOK: send_webhook,
    ChannelKind.SLACK: send_slack,
    ChannelKind.EMAIL: send_email,
    ChannelKind.PAGERDUTY: send_pagerduty,
}


def send(channel: ChannelLike, notification_id: int, event: str, payload: dict[str, Any]) -> None:
    """Deliver one message through ``channel`` or raise ``DeliveryError``."""
    sender = SENDERS.get(ChannelKind(channel.kind)) if channel.kind in ChannelKind.values else None
    if sender is None:
        raise DeliveryError(f"unknown channel kind {channel.kind!r}")
    sender(channel, notification_id, event, payload)
