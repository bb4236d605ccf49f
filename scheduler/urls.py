from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from scheduler.dashboard import dashboard_view
from scheduler.metrics import metrics_view
from scheduler.views import healthz

admin.site.site_header = "Scheduled jobs"
admin.site.site_title = "Scheduled jobs"
# The index links to the dashboard at the top (django.contrib.admin precedes our app in
# INSTALLED_APPS, so a template named admin/index.html here would never be found).
admin.site.index_template = "admin/scheduler/index.html"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("api.urls")),
    path("reports/", include("reports.urls")),
    # Before the admin's own URLs, whose catch-all would take it for an app label.
    path("admin/dashboard/", dashboard_view, name="dashboard"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
