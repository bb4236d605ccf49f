"""Keep beat's view and the policy rows in step with every ORM write.

- ``pre_save`` validation refuses bad schedules on any save path, not only
  the admin (django-celery-beat validates only in its forms).
- Every ``PeriodicTask`` gets its ``SchedulePolicy`` row.
- Every write to a task, its policy, or the crontab/interval/clocked row it
  uses appends to the change log that beat tails (``scheduler.changes``); an
  edit of one crontab shared by many tasks records each of them.

A task save that changes no field defining its schedule (django-celery-beat's
scheduler storing ``last_run_at`` / ``total_run_count`` after a dispatch) is
neither validated nor recorded: see ``validate_periodic_task_save``. Legacy
rows without a policy get theirs from beat's ``ensure_policies``.
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from scheduler.changes import record_changes
from scheduler.models import SchedulePolicy
from scheduler.validation import (
    validate_crontab,
    validate_interval,
    validate_periodic_task_save,
    validate_policy,
)

SCHEDULE_FIELDS = {CrontabSchedule: "crontab", IntervalSchedule: "interval", ClockedSchedule: "clocked"}

# Set on the instance by pre_save, read (and removed) by post_save of the same save.
_CHANGES_SCHEDULE = "_scheduler_save_changes_schedule"


@receiver(pre_save, sender=PeriodicTask, dispatch_uid="scheduler.validate_task")
def _validate_task(
    sender, instance: PeriodicTask, raw: bool = False, update_fields=None, using=None, **kwargs
) -> None:
    if not raw:
        # Decided here, before the row is overwritten: post_save can no longer compare.
        setattr(instance, _CHANGES_SCHEDULE, validate_periodic_task_save(instance, update_fields, using))


@receiver(pre_save, sender=CrontabSchedule, dispatch_uid="scheduler.validate_crontab")
def _validate_crontab(sender, instance: CrontabSchedule, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_crontab(instance)


@receiver(pre_save, sender=SchedulePolicy, dispatch_uid="scheduler.validate_policy")
def _validate_policy(sender, instance: SchedulePolicy, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_policy(instance)


@receiver(pre_save, sender=IntervalSchedule, dispatch_uid="scheduler.validate_interval")
def _validate_interval(sender, instance: IntervalSchedule, raw: bool = False, **kwargs) -> None:
    if not raw:
        validate_interval(instance.every, instance.period)


@receiver(post_save, sender=PeriodicTask, dispatch_uid="scheduler.task_saved")
def _task_saved(sender, instance: PeriodicTask, raw: bool = False, **kwargs) -> None:
    # Popped so it cannot leak into a later save. Absent only when post_save is
    # sent without our pre_save; recording a change then is the safe choice.
    changes_schedule = instance.__dict__.pop(_CHANGES_SCHEDULE, True)
    if raw or not changes_schedule:
        return
    SchedulePolicy.objects.get_or_create(
        task=instance, defaults={"anchor": instance.start_time or instance.date_changed}
    )
    record_changes([instance.pk])


@receiver(post_delete, sender=PeriodicTask, dispatch_uid="scheduler.task_deleted")
def _task_deleted(sender, instance: PeriodicTask, **kwargs) -> None:
    record_changes([instance.pk])


@receiver(post_save, sender=SchedulePolicy, dispatch_uid="scheduler.policy_saved")
def _policy_saved(sender, instance: SchedulePolicy, raw: bool = False, **kwargs) -> None:
    if not raw:
        record_changes([instance.task_id])


def _schedule_changed(sender, instance, raw: bool = False, **kwargs) -> None:
    if raw:
        return
    field = SCHEDULE_FIELDS[sender]
    record_changes(PeriodicTask.objects.filter(**{field: instance}).values_list("pk", flat=True))


for _model in SCHEDULE_FIELDS:
    post_save.connect(_schedule_changed, sender=_model, dispatch_uid=f"scheduler.changed.{_model.__name__}")
    # pre_delete: the tasks still point at the row (deleting it cascades to them).
    pre_delete.connect(_schedule_changed, sender=_model, dispatch_uid=f"scheduler.deleted.{_model.__name__}")
