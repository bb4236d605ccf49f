"""Bearer tokens and the admin's permissions.

``Authorization: Bearer <token>``: a live token (not revoked, its user
active) authenticates its user; anything else is a 401. Each operation then
requires the permissions the admin requires for the same act (``require``):
a token carries its user's permissions, no more.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from ninja.security import HttpBearer

from api.errors import ApiError
from api.models import ApiToken

# The admin's permissions, by what the API does.
VIEW_SCHEDULES = "django_celery_beat.view_periodictask"
VIEW_RUNS = "jobs.view_jobrun"
VIEW_JOBS = "jobs.view_jobdefinition"
RUN = "scheduler.run_schedule"
ADD_SCHEDULES = "django_celery_beat.add_periodictask"
CHANGE_SCHEDULES = "django_celery_beat.change_periodictask"
DELETE_SCHEDULES = "django_celery_beat.delete_periodictask"
PAUSE = "scheduler.pause_schedule"


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return ApiToken.authenticate(token)


def user_of(request: HttpRequest) -> User:
    """The user of the request's token (authentication has run: every operation needs a token)."""
    token: ApiToken = getattr(request, "auth")  # noqa: B009 (set by ninja; HttpRequest does not declare it)
    return token.user


def require(request: HttpRequest, *permissions: str) -> None:
    """403 unless the token's user has every one of ``permissions``."""
    user = user_of(request)
    missing = [perm for perm in permissions if not user.has_perm(perm)]
    if missing:
        raise ApiError(403, f"This token's user lacks the permission {', '.join(missing)}.")


def username(request: HttpRequest) -> str:
    return user_of(request).get_username()
