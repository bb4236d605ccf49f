"""What an alert says: rendered once when it is queued, the same words on every channel.

``render(incident, event)`` returns a JSON-safe dict (stored as the
notification's ``payload``; ``alerts.channels`` shapes it for each kind):

- ``title``: one line, ``[FAILED] nightly-report: ...``;
- ``text``: plain text, several lines: what an on-call engineer needs at
  3 a.m. without opening anything: the schedule and its job, the slot in the
  schedule's time zone and in UTC, what happened (the error, how late, how
  long it has run, which limit), the consecutive failures, the last good run,
  and for a recovery how long it was down (and, for a system incident, how
  many schedules recovered with it);
- ``severity``: PagerDuty's words: ``critical`` (down), ``warning`` (late,
  overrun), ``info`` (recovery, test);
- ``links``: ``{"run", "schedule", "incident"}``: the admin pages, absolute
  (``settings.PUBLIC_URL``); ``None`` where there is nothing to link;
- facts for machines: ``event``, ``incident_id``, ``dedup_key``, ``kind``,
  ``scope``, ``schedule``, ``job``, ``slot``, ``opened_at``, ``resolved_at``,
  ``summary``, ``details``.

Every ``Incident.details`` key is optional (a system incident has no slot, a
missed run no error): a missing one leaves its line out, never fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.dateparse import parse_datetime

from alerts.models import Incident, IncidentKind, NotificationEvent

# Kinds that mean "it is late or slow" rather than "it is broken".
WARNING_KINDS = frozenset({IncidentKind.LATE, IncidentKind.OVERRUN})


def admin_url(view: str, object_id: Any) -> str | None:
    """The admin page's absolute address; None if the admin has no such page (never fails a page)."""
    try:
        return settings.PUBLIC_URL + reverse(f"admin:{view}", args=[object_id])
    except NoReverseMatch:
        return None


def duration(seconds: float) -> str:
    """``42 s``, ``5 min 3 s``, ``2 h 5 min``, ``3 d 4 h``: the two largest units."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    parts: list[tuple[int, str]] = []
    for name, size in units:
        count, total = divmod(total, size)
        if count or parts:
            parts.append((count, name))
    first, second = parts[0], parts[1]
    return f"{first[0]} {first[1]}" + (f" {second[0]} {second[1]}" if second[0] else "")


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        parsed = parse_datetime(value)
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def slot_line(slot: datetime, tz_name: str | None) -> str:
    """The slot in the schedule's zone and in UTC: ``03:00 Europe/Paris (02:00 UTC)``."""
    utc = _utc(slot)
    if not tz_name or tz_name == "UTC":
        return utc
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{utc} (time zone {tz_name!r} unknown)"
    return f"{slot.astimezone(zone):%Y-%m-%d %H:%M:%S} {tz_name} ({utc})"


def what_happened(incident: Incident) -> list[str]:
    """The cause in words, from the details the detector recorded."""
    d = incident.details or {}
    lines = []
    if d.get("error_type"):
        error = ": ".join(str(x) for x in (d.get("error_type"), d.get("error_message")) if x)
        lines.append(f"Error: {error}")
    elif d.get("error_message"):
        lines.append(f"Cause: {d['error_message']}")  # e.g. a missed run: not started, still queued
    if d.get("timeout"):
        lines.append(f"Limit hit: the {d['timeout']} time limit")
    if d.get("late_by_s") is not None:
        late = f"Started {duration(float(d['late_by_s']))} late"
        if d.get("late_after_s") is not None:
            late += f" (threshold {duration(float(d['late_after_s']))})"
        lines.append(late)
    if d.get("running_for_s") is not None:
        running = f"Running for {duration(float(d['running_for_s']))}"
        if d.get("expected_duration_s") is not None:
            running += f", expected at most {duration(float(d['expected_duration_s']))}"
        lines.append(running)
    if d.get("queue") and d.get("waiting_runs") is not None:
        lines.append(f"Queue {d['queue']!r}: {d['waiting_runs']} runs waiting, no live worker serves it")
    if incident.kind == IncidentKind.BEAT_DOWN:
        if d.get("last_tick_at"):
            lines.append(f"Last leader tick: {d['last_tick_at']}")
        if d.get("lease_holder"):
            lines.append(f"Last lease holder: {d['lease_holder']}")
    if d.get("failures") and int(d["failures"]) > 1:
        lines.append(f"Consecutive failures: {d['failures']}")
    return lines


def severity(incident: Incident, event: str) -> str:
    if event == NotificationEvent.RESOLVE:
        return "info"
    return "warning" if incident.kind in WARNING_KINDS else "critical"


def links(incident: Incident) -> dict[str, str | None]:
    run_id = incident.run_id or (incident.details or {}).get("run_id")
    return {
        "run": admin_url("jobs_jobrun_change", run_id) if run_id else None,
        "schedule": admin_url("django_celery_beat_periodictask_change", incident.schedule_id)
        if incident.schedule_id
        else None,
        "incident": admin_url("alerts_incident_change", incident.pk),
    }


def _title(incident: Incident, event: str, sequence: int, now: datetime) -> str:
    what = incident.schedule_name or incident.scope
    if event == NotificationEvent.RESOLVE:
        down = duration(((incident.resolved_at or now) - incident.opened_at).total_seconds())
        return f"[RESOLVED] {what}: back after {down} ({incident.get_kind_display()})"
    label = incident.kind.upper().replace("_", " ")
    title = f"[{label}] {incident.summary}"
    if event == NotificationEvent.REMIND:
        open_for = duration((now - incident.opened_at).total_seconds())
        title = f"[STILL {label} after {open_for}, reminder {sequence}] {incident.summary}"
    return title[:300]


def render(incident: Incident, event: str, sequence: int = 0, now: datetime | None = None) -> dict[str, Any]:
    """The message of ``event`` (trigger, remind, resolve) about ``incident``; see the module doc."""
    now = now or datetime.now(UTC)
    d = incident.details or {}
    slot = _moment(d.get("slot"))
    lines = [_title(incident, event, sequence, now), ""]
    if incident.schedule_id or incident.schedule_name:
        lines.append(f"Schedule: {incident.schedule_name or '?'} (#{incident.schedule_id})")
    if incident.job:
        lines.append(f"Job: {incident.job}")
    if incident.queue:
        lines.append(f"Queue: {incident.queue}")
    if slot is not None:
        lines.append(f"Slot: {slot_line(slot, d.get('timezone'))}")
    lines.append(f"Incident: #{incident.pk} {incident.get_kind_display()}, opened {_utc(incident.opened_at)}")
    if event == NotificationEvent.RESOLVE:
        resolved = incident.resolved_at or now
        down_for = duration((resolved - incident.opened_at).total_seconds())
        lines.append(f"Resolved: {_utc(resolved)}, down for {down_for}")
        if incident.resolution:
            lines.append(f"How: {incident.resolution}")
        if d.get("effects"):
            lines.append(f"Schedules that recovered with it: {d['effects']}")
    else:
        lines.append(f"What happened: {incident.summary}")
        lines.extend(what_happened(incident))
        if d.get("effects"):
            lines.append(f"Schedules affected (grouped under this incident): {d['effects']}")
    if incident.schedule_id or "last_good_run_at" in d:
        last_good = _moment(d.get("last_good_run_at"))
        lines.append(f"Last good run: {_utc(last_good) if last_good else 'none recorded'}")
    urls = links(incident)
    lines.append("")
    lines.extend(f"{name.capitalize()}: {url}" for name, url in urls.items() if url)
    return {
        "event": event,
        "sequence": sequence,
        "title": lines[0],
        "text": "\n".join(lines),
        "severity": severity(incident, event),
        "links": urls,
        "incident_id": incident.pk,
        "dedup_key": incident.dedup_key,
        "kind": incident.kind,
        "scope": incident.scope,
        "schedule": incident.schedule_name or None,
        "schedule_id": incident.schedule_id,
        "job": incident.job or None,
        "slot": slot.isoformat() if slot else None,
        "timezone": d.get("timezone"),
        "opened_at": incident.opened_at.isoformat(),
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "summary": incident.summary,
        "details": d,
    }


def render_test(channel_name: str, *, now: datetime | None = None) -> dict[str, Any]:
    """A test alert: says it is one, so nobody acts on it."""
    now = now or datetime.now(UTC)
    title = f"[TEST] Test alert to channel {channel_name!r}"
    text = (
        f"{title}\n\nThis is a test alert sent from the admin at {_utc(now)}.\n"
        "If you can read it, this channel delivers. Nothing is down."
    )
    return {
        "event": NotificationEvent.TEST.value,
        "sequence": 0,
        "title": title,
        "text": text,
        "severity": "info",
        "links": {"run": None, "schedule": None, "incident": None},
        "incident_id": None,
        "dedup_key": f"beatplatform-test-{channel_name}-{now.timestamp():.0f}",
        "kind": "test",
        "scope": "test",
        "schedule": None,
        "schedule_id": None,
        "job": None,
        "slot": None,
        "timezone": None,
        "opened_at": now.isoformat(),
        "resolved_at": None,
        "summary": "test alert",
        "details": {},
    }
