"""Service functions for schedules.

``update_schedules`` is the one way to bulk-edit ``PeriodicTask`` rows:
django-celery-beat's footgun is that ``QuerySet.update()`` skips the change
signal, so beat never hears of the edit. This function updates and records
the change in one transaction.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django_celery_beat.models import PeriodicTask

from scheduler.changes import record_changes


def update_schedules(queryset: QuerySet[PeriodicTask], **fields: Any) -> int:
    """``queryset.update(**fields)`` plus a change-log row per task; returns the count.

    Validation of job names and arguments still applies: use it for fields
    such as ``enabled``, ``queue``, ``crontab`` or ``interval``, not to bypass
    the checks that ``save()`` runs.
    """
    forbidden = {"task", "args", "kwargs"} & fields.keys()
    if forbidden:
        raise ValueError(
            f"update_schedules cannot change {sorted(forbidden)}: save each task so its "
            "job and arguments are validated"
        )
    with transaction.atomic():
        ids = list(queryset.select_for_update().values_list("pk", flat=True))
        updated = PeriodicTask.objects.filter(pk__in=ids).update(**fields)
        record_changes(ids)
    return updated
