"""The one rule for a pair of time limits, wherever limits are given.

A job's defaults (``@job``, checked by ``scheduler.E006``), a schedule's
policy (judged on the effective pair: the policy's value, else the job's
default) and a call to ``dispatch`` all go through :func:`validate_time_limits`.
"""

from __future__ import annotations

from urllib.parse import urlparse

from django.conf import settings
from django.core.exceptions import ValidationError

# Redis redelivers a message its worker has not acknowledged within the
# visibility timeout. The clock starts when the worker reserves the message,
# which may be a while before a pool process starts it (prefetch), so a hard
# limit needs room below the timeout, not just to be under it.
VISIBILITY_SHARE = 0.75


def max_hard_time_limit() -> int | None:
    """The longest hard limit the broker allows, or ``None`` (RabbitMQ has no visibility timeout)."""
    if not urlparse(settings.CELERY_BROKER_URL).scheme.startswith("redis"):
        return None
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    return int(timeout * VISIBILITY_SHARE)


def validate_time_limits(soft: int | None, hard: int | None) -> None:
    """Reject limits that cannot both hold: zero, negative, hard before soft, or past the broker's redelivery.

    Given the *effective* pair (see :func:`effective_time_limits`), so a
    policy that sets one limit is judged against the job's other one.
    """
    errors: dict[str, str] = {}
    for field, value in (("soft_time_limit", soft), ("hard_time_limit", hard)):
        if value is not None and value <= 0:
            errors[field] = f"{value} is not a time limit: give a number of seconds above 0."
    if not errors and soft is not None and hard is not None and hard <= soft:
        errors["hard_time_limit"] = (
            f"The hard limit ({hard} s) must be longer than the soft limit ({soft} s): "
            "the soft limit lets the job clean up before the hard limit kills it."
        )
    ceiling = max_hard_time_limit()
    if not errors and hard is not None and ceiling is not None and hard > ceiling:
        timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
        errors["hard_time_limit"] = (
            f"The hard limit ({hard} s) is too close to the broker's visibility timeout "
            f"(BROKER_VISIBILITY_TIMEOUT = {timeout} s): Redis would hand the message to another "
            f"worker while this one still runs it. Keep hard limits at or below {ceiling} s "
            f"({VISIBILITY_SHARE:.0%} of the timeout), or raise BROKER_VISIBILITY_TIMEOUT to at least "
            f"{-(-hard * 4 // 3)} s."
        )
    if errors:
        raise ValidationError(errors)
