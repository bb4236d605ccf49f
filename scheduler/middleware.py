"""Requests carrying a NUL byte are answered 400 before any view runs.

PostgreSQL refuses NUL in text ("PostgreSQL text fields cannot contain NUL
(0x00) bytes"), so a NUL that reached a query, e.g. the admin filter
``?status__exact=%00``, was a 500. No legitimate request of this site carries
one, so every view is covered here rather than each form and filter.

Guarantee: no view, form, filter or session lookup sees ``"\\x00"`` coming from
the path, a query parameter (name or value), a posted form field (name or
value, url-encoded or multipart; uploaded file contents are left alone), or the
session and CSRF cookies. Other cookies are not ours to judge, so a stray one
set by another site on the domain cannot lock anyone out.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse, QueryDict

NUL = "\x00"
FORM_CONTENT_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}


def has_nul(data: QueryDict) -> bool:
    return any(NUL in key or any(NUL in value for value in values) for key, values in data.lists())


def nul_location(request: HttpRequest) -> str | None:
    """Where the request carries a NUL byte (for the log), or None."""
    if NUL in request.path:
        return "path"
    if has_nul(request.GET):
        return "query string"
    for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
        if NUL in request.COOKIES.get(name, ""):
            return f"cookie {name}"
    # request.POST is parsed here, before the view; CsrfViewMiddleware reads it
    # for every POST anyway, so no view loses the chance to change upload handlers.
    if request.method == "POST" and request.content_type in FORM_CONTENT_TYPES:
        if has_nul(request.POST) or any(NUL in name for name in request.FILES):
            return "form data"
    return None


class RefuseNulBytesMiddleware:
    """Raise ``BadRequest`` (a 400, logged by Django as a warning) for a request with a NUL byte."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        location = nul_location(request)
        if location is not None:
            raise BadRequest(f"NUL byte in the request's {location}")
        return self.get_response(request)
