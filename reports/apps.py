"""The reports app: a layer on top of jobs, scheduler and alerts; it plugs itself into their pages.

``ready`` connects what jobs and scheduler cannot import: the destination
check on every save, the destinations inline on the schedule page, the
report section on the run page.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import pre_save


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.admin_panels import register_run_panel
        from reports.admin_inlines import add_destinations_to_schedule_admin
        from reports.destinations import refuse_invalid_destination
        from reports.models import ReportDestination
        from reports.run_panel import report_panel

        pre_save.connect(
            refuse_invalid_destination, sender=ReportDestination, dispatch_uid="reports.validate_destination"
        )
        add_destinations_to_schedule_admin()
        register_run_panel(report_panel)
