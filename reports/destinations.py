"""The one check of a report destination: where it goes, how it is signed, which renderings it takes.

``validate_destination(kind, target, secret, formats, attach_up_to_bytes)``
raises ``ValidationError`` keyed by field (``target``, ``secret``,
``formats``, ``attach_up_to_bytes``, ``kind``), so a form shows each error
beside its field. Target and secret follow alerts' rules for the same kinds
(``alerts.channels.validate_channel``): email is one or more valid addresses,
comma-separated; Slack an http(s) URL; a webhook an http(s) URL and a signing
secret of at least 16 characters. ``formats`` is a list of known renderings
(``ReportFormat``), without repeats; an empty list means every rendering the
report produced.

Every save is checked, not only the admin's: ``refuse_invalid_destination``
is a ``pre_save`` receiver (connected in ``ReportsConfig.ready``), so a bad
row written through the ORM raises before it reaches the database.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from alerts.channels import validate_channel
from reports.models import DestinationKind, ReportDestination, ReportFormat


def validate_destination(
    kind: str, target: str, secret: str, formats: Any, attach_up_to_bytes: int | None = None
) -> None:
    """Raise ``ValidationError`` (a dict by field) unless the destination can be delivered to."""
    errors: dict[str, list[str]] = {}
    if kind not in DestinationKind.values:
        errors["kind"] = [f"Unknown destination kind {kind!r}: one of {', '.join(DestinationKind.values)}."]
    else:
        try:
            validate_channel(kind, target, secret)  # the kinds share alerts' names and rules
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    format_errors = check_formats(formats)
    if format_errors:
        errors["formats"] = format_errors
    if attach_up_to_bytes is not None and attach_up_to_bytes < 0:
        errors["attach_up_to_bytes"] = ["The attachment limit cannot be negative (0: always send a link)."]
    if errors:
        raise ValidationError(errors)


def check_formats(formats: Any) -> list[str]:
    """What is wrong with ``formats`` (a JSON list of rendering names), or nothing."""
    if not isinstance(formats, list) or not all(isinstance(name, str) for name in formats):
        return [f'Formats must be a list of names, e.g. ["csv"]; got {formats!r:.100}.']
    unknown = [name for name in formats if name not in ReportFormat.values]
    if unknown:
        known = ", ".join(ReportFormat.values)
        named = ", ".join(map(repr, unknown))
        return [f"Unknown format{'s' if len(unknown) > 1 else ''} {named}: one of {known}."]
    if len(set(formats)) != len(formats):
        return ["Each format once, please."]
    return []


def refuse_invalid_destination(sender: Any, instance: ReportDestination, **kwargs: Any) -> None:
    """``pre_save``: a destination that could never be delivered to is not saved."""
    validate_destination(
        instance.kind, instance.target, instance.secret, instance.formats, instance.attach_up_to_bytes
    )
