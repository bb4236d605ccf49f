"""Local stand-ins for the places alerts go: a webhook receiver, Slack, PagerDuty, an SMTP server.

Each HTTP receiver is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 and an
ephemeral port, keeping every request it got (headers, raw body, parsed JSON,
when). Each checks what the real service checks and answers as it does:

- ``WebhookReceiver(secret)``: verifies ``X-Signature-SHA256`` the way a
  customer's receiver would, from the documented scheme (HMAC-SHA256 over
  ``<timestamp>.<raw body>``, timestamp within 5 minutes), written out
  here rather than imported, so a drift of the sender from its docstring
  fails; a bad signature is answered 401.
- ``SlackReceiver``: Slack's incoming webhook: 200 ``ok``; a body without
  ``text`` or with malformed ``blocks`` is 400 ``invalid_payload``.
- ``PagerDutyReceiver``: Events API v2 at ``/v2/enqueue``: 202
  ``{"status": "success", "dedup_key": ...}``; a bad routing key, action or
  trigger payload is 400 ``invalid event``.
- ``SmtpReceiver``: a real aiosmtpd server keeping each message it accepted.

``fail_next(n, status)`` makes the next ``n`` requests answer ``status``
(a receiver that is down); ``delay`` makes every answer wait (one that hangs).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float
    answered: int = 0
    verified: bool | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Keeps every POST; subclasses decide the answer (``answer``)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.failures_left = 0
        self.failure_status = 500
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {
                    name.lower(): value for name, value in self.headers.items()
                }  # names are case-insensitive
                item = Received(self.path, headers, body, time.monotonic())
                if outer.delay:
                    time.sleep(outer.delay)
                with outer.lock:
                    if outer.failures_left:
                        outer.failures_left -= 1
                        status, answer = outer.failure_status, b"receiver down (test)"
                    else:
                        status, answer = outer.answer(item)
                    item.answered = status
                    outer.requests.append(item)
                try:
                    self.send_response(status)
                    self.send_header(
                        "Content-Type", "application/json" if answer[:1] in b"{[" else "text/plain"
                    )
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender timed out and went away

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, item: Received) -> tuple[int, bytes]:
        return 200, b"ok"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> HttpReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.failures_left, self.failure_status = count, status

    def accepted(self) -> list[Received]:
        """The requests it answered with success."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted()
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{type(self).__name__}: {len(self.accepted())} accepted, expected {count}")


class WebhookReceiver(HttpReceiver):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def verify(self, headers: dict[str, str], body: bytes, secret: str | None = None) -> bool:
        """The documented check: HMAC-SHA256(secret, "<timestamp>." + raw body), a recent timestamp."""
        timestamp = headers.get("x-beatplatform-timestamp", "")
        signature = headers.get("x-signature-sha256", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        key = (secret if secret is not None else self.secret).encode()
        expected = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    def answer(self, item: Received) -> tuple[int, bytes]:
        item.verified = self.verify(item.headers, item.body)
        return (200, b"ok") if item.verified else (401, b"bad signature")


class SlackReceiver(HttpReceiver):
    def answer(self, item: Received) -> tuple[int, bytes]:
        try:
            document = item.json
        except ValueError:
            return 400, b"invalid_payload"
        blocks = document.get("blocks", [])
        well_formed = isinstance(document.get("text"), str) and document["text"]
        well_formed = well_formed and isinstance(blocks, list) and len(blocks) <= 50
        for block in blocks if isinstance(blocks, list) else []:
            if block.get("type") == "header" and len(block["text"]["text"]) > 150:
                well_formed = False
            if block.get("type") == "section" and len(block["text"]["text"]) > 3000:
                well_formed = False
        return (200, b"ok") if well_formed else (400, b"invalid_payload")


class PagerDutyReceiver(HttpReceiver):
    SEVERITIES = {"critical", "error", "warning", "info"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2/enqueue"

    def answer(self, item: Received) -> tuple[int, bytes]:
        errors = []
        try:
            event = item.json
        except ValueError:
            event = {}
            errors.append("body is not JSON")
        if len(str(event.get("routing_key", ""))) != 32:
            errors.append("routing_key must be 32 characters")
        action = event.get("event_action")
        if action not in {"trigger", "acknowledge", "resolve"}:
            errors.append(f"event_action {action!r} is invalid")
        if action == "trigger":
            payload = event.get("payload") or {}
            for key in ("summary", "source", "severity"):
                if not payload.get(key):
                    errors.append(f"payload.{key} is missing")
            if payload.get("severity") not in self.SEVERITIES:
                errors.append("payload.severity is invalid")
        elif not event.get("dedup_key"):
            errors.append("dedup_key is required to resolve")
        if errors:
            body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return 400, json.dumps(body).encode()
        answer = {"status": "success", "message": "Event processed", "dedup_key": event.get("dedup_key")}
        return 202, json.dumps(answer).encode()


@dataclass
class SmtpHandler:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpReceiver:
    def __init__(self) -> None:
        self.handler = SmtpHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port())

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < count:
            time.sleep(0.02)
        assert len(self.messages) >= count, f"{len(self.messages)} emails, expected {count}"
        return list(self.messages)


def failed_incident(schedule: Any, *, opened_at: Any, **fields: Any) -> Any:
    """An open incident of ``schedule`` as the detector records a failed run (``alerts.detector``)."""
    from alerts.models import Incident

    details = {
        "error_type": "builtins.ValueError",
        "error_message": "the upstream export is empty",
        "slot": "2026-11-30T02:00:00+00:00",
        "timezone": "Europe/Paris",
        "failures": 3,
        "last_good_run_at": "2026-11-29T02:00:04+00:00",
        "last_good_run_id": "4f7d8a39-0000-4000-8000-000000000001",
        **fields.pop("details", {}),
    }
    values = {
        "scope": f"schedule:{schedule.pk}",
        "kind": "failed",
        "schedule": schedule,
        "schedule_name": schedule.name,
        "job": schedule.task,
        "queue": "default",
        "summary": f"{schedule.name}: failed after its last retry (ValueError)",
        "opened_at": opened_at,
        "alerted_at": opened_at,
        "details": details,
        **fields,
    }
    return Incident.objects.create(**values)
