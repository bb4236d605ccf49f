"""The site's URLs plus the reports' (until ``scheduler/urls.py`` includes them), for report tests."""

from __future__ import annotations

from django.urls import URLResolver, include, path

from scheduler.urls import urlpatterns as site_urlpatterns

included = any(isinstance(p, URLResolver) and p.namespace == "reports" for p in site_urlpatterns)
urlpatterns = site_urlpatterns if included else [path("reports/", include("reports.urls")), *site_urlpatterns]
