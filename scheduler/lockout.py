"""The page a locked-out login gets (django-axes' ``AXES_LOCKOUT_CALLABLE``).

Guarantee: a login refused for too many failures answers 429 with the admin's
look, saying why and for how long, never a 500 or the login form's plain
"wrong password" (which would send the user on guessing and extend the lock).
"""

from __future__ import annotations

import math

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKOUT_STATUS = 429  # Too Many Requests


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    context = {
        **admin.site.each_context(request),
        "title": "Login locked",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "lockout_minutes": minutes,
    }
    return render(request, "scheduler/lockout.html", context, status=LOCKOUT_STATUS)
