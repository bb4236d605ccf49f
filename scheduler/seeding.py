"""The default schedules and admin user of a fresh installation.

Idempotent: a second start finds them and changes nothing, including edits
an operator made to the seeded schedules.
"""

from __future__ import annotations

import json
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.catalog import publish_catalog

HEARTBEAT = "heartbeat every minute"
DAILY_SUMMARY = "daily run-summary report"
REPORT_CLEANUP = "delete expired report files daily"


@transaction.atomic
def seed_default_schedules() -> list[str]:
    """Create the seeded schedules that do not exist yet; return their names."""
    publish_catalog(worker="seed")
    created = []
    if not PeriodicTask.objects.filter(name=HEARTBEAT).exists():
        every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
        PeriodicTask.objects.create(name=HEARTBEAT, task="heartbeat", interval=every_minute)
        created.append(HEARTBEAT)
    if not PeriodicTask.objects.filter(name=DAILY_SUMMARY).exists():
        six_am, _ = CrontabSchedule.objects.get_or_create(
            minute="0", hour="6", day_of_month="*", month_of_year="*", day_of_week="*", timezone="UTC"
        )
        PeriodicTask.objects.create(
            name=DAILY_SUMMARY,
            task="reports.run_summary",
            crontab=six_am,
            kwargs=json.dumps({"window_hours": 24}),
        )
        created.append(DAILY_SUMMARY)
    if not PeriodicTask.objects.filter(name=REPORT_CLEANUP).exists():
        half_past_three, _ = CrontabSchedule.objects.get_or_create(
            minute="30", hour="3", day_of_month="*", month_of_year="*", day_of_week="*", timezone="UTC"
        )
        # By job name: the reports app sits above the scheduler (reports.cleanup).
        PeriodicTask.objects.create(name=REPORT_CLEANUP, task="reports.cleanup", crontab=half_past_three)
        created.append(REPORT_CLEANUP)
    return created


def ensure_admin_user() -> str | None:
    """Create the admin user if missing; return a generated password to print once.

    ``ADMIN_PASSWORD`` set: that password is used and nothing is returned.
    """
    user_model = get_user_model()
    if user_model.objects.filter(username=settings.ADMIN_USERNAME).exists():
        return None
    password = settings.ADMIN_PASSWORD or secrets.token_urlsafe(12)
    user_model.objects.create_superuser(settings.ADMIN_USERNAME, settings.ADMIN_EMAIL, password)
    return None if settings.ADMIN_PASSWORD else password
