"""The reports' public URLs; ``scheduler/urls.py`` includes them under ``reports/`` (by name, no import)."""

from __future__ import annotations

from django.urls import path

from reports.views import download

app_name = "reports"

urlpatterns = [
    path("download/<str:token>", download, name="download"),
]
