"""A schedule's page: its last runs, each linking to the run's page."""

from __future__ import annotations

from django.contrib import admin


class ScheduleHistoryMixin(admin.ModelAdmin):
    pass
