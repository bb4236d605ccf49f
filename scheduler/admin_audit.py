"""A schedule's page: who changed what and when (before → after).

The entries are django-auditlog's (``scheduler.audit`` registers the task and
its policy, and records the bulk edits): the task's and its policy's, under
the same object id (the policy's key is the task's), newest first, at most
``HISTORY_LIMIT`` of them, read with one query whatever the schedule's age.
Older entries are in auditlog's own list, linked filtered to this schedule
for whoever may view it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from urllib.parse import urlencode

from auditlog.models import LogEntry
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.text import capfirst
from django_celery_beat.models import PeriodicTask

from scheduler.audit import EMPTY
from scheduler.describe import describe_cron
from scheduler.models import SchedulePolicy

HISTORY_LIMIT = 50
PART_LABELS: dict[type[models.Model], str] = {PeriodicTask: "schedule", SchedulePolicy: "run policy"}
ACTION_LABELS = {
    LogEntry.Action.CREATE: "created",
    LogEntry.Action.UPDATE: "changed",
    LogEntry.Action.DELETE: "deleted",
}


@dataclass
class FieldChange:
    label: str
    before: str
    after: str


@dataclass
class AuditEntry:
    when: datetime
    who: str  # "" when no person made it (a command, beat, a script)
    action: str
    part: str  # "schedule" or "run policy"
    changes: list[FieldChange] = field(default_factory=list)


@dataclass
class ScheduleAudit:
    entries: list[AuditEntry]
    more: bool  # older entries exist beyond HISTORY_LIMIT
    full_log_url: str  # auditlog's list filtered to this schedule; "" if the user may not see it


def shown_value(model: type[models.Model], name: str, value: object) -> str:
    """A stored value as a person reads it: a choice's label, yes/no, a UTC time, "—" for empty."""
    text = "" if value is None else str(value)
    if text in (EMPTY, ""):
        return "—"
    try:
        model_field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return text
    if model is PeriodicTask and name == "crontab":
        return cron_in_words(text)
    choices = dict(getattr(model_field, "flatchoices", None) or ())
    if text in choices:
        return str(choices[text])
    if isinstance(model_field, models.BooleanField):
        return {"True": "yes", "False": "no"}.get(text, text)
    if isinstance(model_field, models.DateTimeField):
        try:  # auditlog stores a datetime as naive UTC
            return f"{datetime.fromisoformat(text):%Y-%m-%d %H:%M:%S} UTC"
        except ValueError:
            return text
    return text


def cron_in_words(stored: str) -> str:
    """A stored crontab ("0 9 * * 1-5 Europe/Berlin", see ``scheduler.audit``) with its words after it."""
    parts = stored.split()
    if len(parts) != 6:  # "crontab #3 (deleted)", or an entry written before the audit stored rows as text
        return stored
    expression = " ".join(parts[:5])
    words = describe_cron(expression)
    return stored if words == expression else f"{stored} ({words})"


def field_label(model: type[models.Model], name: str) -> str:
    try:
        model_field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return name
    return capfirst(str(getattr(model_field, "verbose_name", name)))


def field_changes(model: type[models.Model], changes: object, action: int) -> list[FieldChange]:
    """The entry's changed fields in the model's field order; a creation lists only the values it set."""
    if not isinstance(changes, dict):
        return []
    order = {f.name: i for i, f in enumerate(model._meta.fields)}
    result = []
    for name in sorted(changes, key=lambda n: (order.get(n, len(order)), n)):
        pair = changes[name]
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            continue  # auditlog's m2m shape: none of our fields
        before, after = shown_value(model, name, pair[0]), shown_value(model, name, pair[1])
        if before == after or (action == LogEntry.Action.CREATE and after == "—"):
            continue
        result.append(FieldChange(field_label(model, name), before, after))
    return result


def schedule_audit(task_id: int, request: HttpRequest) -> ScheduleAudit:
    """The last ``HISTORY_LIMIT`` changes of the schedule and its policy, newest first (one query)."""
    types = ContentType.objects.get_for_models(*PART_LABELS)  # cached after the first call
    models_by_type = {content_type.pk: model for model, content_type in types.items()}
    rows = list(
        LogEntry.objects.filter(content_type_id__in=list(models_by_type), object_id=task_id)
        .select_related("actor")
        .order_by("-timestamp", "-pk")[: HISTORY_LIMIT + 1]
    )
    entries = []
    for row in rows[:HISTORY_LIMIT]:
        model = models_by_type[row.content_type_id]
        who = row.actor.get_username() if row.actor else (row.actor_email or "")
        entries.append(
            AuditEntry(
                when=row.timestamp,
                who=who,
                action=ACTION_LABELS.get(row.action, "logged"),
                part=PART_LABELS[model],
                changes=field_changes(model, row.changes, row.action),
            )
        )
    return ScheduleAudit(entries, more=len(rows) > HISTORY_LIMIT, full_log_url=full_log_url(task_id, request))


def full_log_url(task_id: int, request: HttpRequest) -> str:
    """auditlog's admin list of this schedule's entries, if it is installed and the user may view it."""
    if not request.user.has_perm("auditlog.view_logentry"):
        return ""
    try:
        url = reverse("admin:auditlog_logentry_changelist")
    except NoReverseMatch:  # auditlog's admin not registered
        return ""
    types = ContentType.objects.get_for_models(*PART_LABELS).values()
    query = {"object_id": task_id, "content_type__id__in": ",".join(str(t.pk) for t in types)}
    return f"{url}?{urlencode(query)}"


class ScheduleAuditMixin(admin.ModelAdmin):
    """Adds ``schedule_audit`` to the schedule page's context: a callable returning its ``ScheduleAudit``."""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        if object_id and str(object_id).isdigit():  # else Django's own view says the page does not exist
            # Read when the page renders (the template calls it once), not for a save that redirects.
            audit = cache(partial(schedule_audit, int(object_id), request))
            extra_context = {**extra_context, "schedule_audit": audit}
        return super().change_view(request, object_id, form_url, extra_context)
