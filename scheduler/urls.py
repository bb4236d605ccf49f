from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from scheduler.views import healthz

admin.site.site_header = "Scheduled jobs"
admin.site.site_title = "Scheduled jobs"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
