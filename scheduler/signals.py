"""Keep beat's view and the policy rows in step with every ORM write.

- ``pre_save`` validation refuses bad schedules on any save path, not only
  the admin (django-celery-beat validates only in its forms).
- Every ``PeriodicTask`` gets its ``SchedulePolicy`` row.
- A policy edit bumps django-celery-beat's change marker, so beat sees it.
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from scheduler.models import SchedulePolicy, validate_time_limits
from scheduler.validation import validate_crontab, validate_periodic_task


@receiver(pre_save, sender=PeriodicTask, dispatch_uid="scheduler.validate_task")
def _validate_task(sender, instance: PeriodicTask, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_periodic_task(instance)


@receiver(pre_save, sender=CrontabSchedule, dispatch_uid="scheduler.validate_crontab")
def _validate_crontab(sender, instance: CrontabSchedule, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_crontab(instance)


@receiver(pre_save, sender=SchedulePolicy, dispatch_uid="scheduler.validate_policy")
def _validate_policy(sender, instance: SchedulePolicy, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_time_limits(instance.soft_time_limit, instance.hard_time_limit)


@receiver(post_save, sender=PeriodicTask, dispatch_uid="scheduler.ensure_policy")
def _ensure_policy(sender, instance: PeriodicTask, created: bool, raw: bool = False, **kwargs) -> None:
    if not raw:
        SchedulePolicy.objects.get_or_create(
            task=instance, defaults={"anchor": instance.start_time or instance.date_changed}
        )


@receiver(post_save, sender=SchedulePolicy, dispatch_uid="scheduler.policy_changed")
@receiver(post_delete, sender=SchedulePolicy, dispatch_uid="scheduler.policy_deleted")
def _policy_changed(sender, **kwargs) -> None:
    PeriodicTasks.update_changed()
