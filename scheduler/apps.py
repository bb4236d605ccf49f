from __future__ import annotations

from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    name = "scheduler"
    verbose_name = "Schedules"

    def ready(self) -> None:
        from scheduler import audit, signals  # noqa: F401  (signals connects change tracking)
        from settings import checks  # noqa: F401  (registers system checks)

        audit.register()  # who changed a schedule: auditlog on tasks and policies
