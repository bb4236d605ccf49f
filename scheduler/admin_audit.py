"""A schedule's page: who changed what and when (before → after)."""

from __future__ import annotations

from django.contrib import admin


class ScheduleAuditMixin(admin.ModelAdmin):
    pass
