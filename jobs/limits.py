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
# visibility timeout; RabbitMQ closes the channel of a delivery left
# unacknowledged past its consumer_timeout, which gives the message back too.
# Either clock starts when the worker reserves the message, which may be a
# while before a pool process starts it (prefetch), so a hard limit needs room
# below the timeout, not just to be under it.
VISIBILITY_SHARE = 0.75


def broker_is_redis() -> bool:
    """Whether the configured broker is Redis (``redis://``, ``rediss://``, ``redis+socket://``)."""
    return urlparse(str(settings.CELERY_BROKER_URL)).scheme.startswith("redis")


def broker_redelivery_timeout() -> tuple[int, str] | None:
    """(seconds, the setting that holds them) after which the broker hands an unacked message out again.

    ``None`` when the broker never does while its worker's connection lives
    (RabbitMQ with ``consumer_timeout`` off: ``BROKER_CONSUMER_TIMEOUT=0``).
    """
    if broker_is_redis():
        return settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"], "BROKER_VISIBILITY_TIMEOUT"
    if settings.BROKER_CONSUMER_TIMEOUT:
        return settings.BROKER_CONSUMER_TIMEOUT, "BROKER_CONSUMER_TIMEOUT"
    return None


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
    redelivery = broker_redelivery_timeout()
    if not errors and hard is not None and redelivery is not None:
        timeout, setting = redelivery
        ceiling = int(timeout * VISIBILITY_SHARE)
        if hard > ceiling:
            on_redis = setting == "BROKER_VISIBILITY_TIMEOUT"
            errors["hard_time_limit"] = (
                f"The hard limit ({hard} s) is too close to the broker's "
                f"{'visibility' if on_redis else 'consumer'} timeout ({setting} = {timeout} s): "
                f"{'Redis' if on_redis else 'RabbitMQ'} would hand the message to another worker while "
                f"this one still runs it. Keep hard limits at or below {ceiling} s ({VISIBILITY_SHARE:.0%} "
                f"of the timeout), or raise {setting} to at least {-(-hard * 4 // 3)} s"
                + ("." if on_redis else " (and the server's consumer_timeout with it).")
            )
    if errors:
        raise ValidationError(errors)
