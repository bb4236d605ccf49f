"""Configuration invariants as Django system checks (``manage.py check``).

Each one guards a platform guarantee: UTC storage (slots are compared in UTC),
JSON-only messages (a pickle on the broker is code execution), and a broker URL
that a worker can actually use, named without its password.
"""

from __future__ import annotations

from urllib.parse import urlparse

from django.conf import settings
from django.core.checks import Error, Warning, register

SUPPORTED_BROKER_SCHEMES = {"redis", "rediss", "redis+socket", "amqp", "amqps", "pyamqp"}


@register()
def check_time_zone_is_utc(app_configs=None, **kwargs):
    errors = []
    if settings.TIME_ZONE != "UTC" or not settings.USE_TZ:
        errors.append(
            Error(
                "TIME_ZONE must be 'UTC' and USE_TZ must be True",
                hint="Times are stored in UTC; give each schedule its own time zone instead.",
                id="scheduler.E001",
            )
        )
    if getattr(settings, "CELERY_TIMEZONE", "UTC") != "UTC":
        errors.append(
            Error(
                "CELERY_TIMEZONE must be 'UTC'",
                hint="Schedules carry their own IANA time zone; beat works in UTC.",
                id="scheduler.E002",
            )
        )
    return errors


@register()
def check_json_only_serializers(app_configs=None, **kwargs):
    errors = []
    accept = list(getattr(settings, "CELERY_ACCEPT_CONTENT", []))
    if accept != ["json"]:
        errors.append(
            Error(
                f"CELERY_ACCEPT_CONTENT must be ['json'], not {accept!r}",
                hint="Jobs take primary keys and JSON; other serializers can execute code.",
                id="scheduler.E003",
            )
        )
    for name in ("CELERY_TASK_SERIALIZER", "CELERY_RESULT_SERIALIZER", "CELERY_EVENT_SERIALIZER"):
        value = getattr(settings, name, "json")
        if value != "json":
            errors.append(Error(f"{name} must be 'json', not {value!r}", id="scheduler.E004"))
    return errors


@register()
def check_broker_url(app_configs=None, **kwargs):
    url = getattr(settings, "CELERY_BROKER_URL", "")
    # Only the scheme is shown: the rest of the URL may hold a password.
    scheme = urlparse(url).scheme if "://" in url else ""
    if scheme not in SUPPORTED_BROKER_SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme (no '://')"
        return [
            Error(
                f"the broker URL has {shown}, not a Redis or RabbitMQ one",
                hint="Set REDIS_URL=redis://host:6379/0 or BROKER_URL=amqp://user:pass@host//",
                id="scheduler.E005",
            )
        ]
    return []


@register(deploy=True)
def check_secret_key_is_set(app_configs=None, **kwargs):
    if settings.SECRET_KEY.startswith("dev-insecure-key"):
        return [
            Warning(
                "SECRET_KEY is the development default",
                hint="Set SECRET_KEY (or SECRET_KEY_FILE) in production.",
                id="scheduler.W001",
            )
        ]
    return []


@register(deploy=True)
def check_proxy_tells_https(app_configs=None, **kwargs):
    if settings.SECURE_SSL_REDIRECT and settings.REVERSE_PROXY_COUNT and not settings.SECURE_PROXY_SSL_HEADER:
        return [
            Warning(
                "web is behind a proxy (REVERSE_PROXY_COUNT) and redirects to HTTPS, "
                "but SECURE_PROXY_SSL_HEADER is not set",
                hint="A proxy that ends TLS forwards plain HTTP, so every request would redirect again: "
                "set SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto (the header your proxy sets).",
                id="scheduler.W002",
            )
        ]
    return []


@register()
def check_job_time_limits(app_configs=None, **kwargs):
    """Every job's default limits must hold: hard above soft, and below the broker's redelivery.

    The same rule as a schedule's policy (``validate_time_limits``), applied
    to the defaults each ``@job`` declares, so a job whose default hard limit
    outlives the broker's redelivery timeout (Redis's visibility timeout,
    RabbitMQ's consumer_timeout) is refused before any run of it is
    redelivered to a second worker while the first still runs it. Workers
    run this check at start (``scheduler.celery``).
    """
    from django.core.exceptions import ValidationError

    from jobs.catalog import load_job_modules
    from jobs.framework import JOB_SPECS
    from scheduler.validation import validate_time_limits

    load_job_modules()
    errors = []
    for spec in JOB_SPECS.values():
        try:
            validate_time_limits(spec.soft_time_limit, spec.hard_time_limit)
        except ValidationError as exc:
            errors.append(
                Error(
                    f"job {spec.name!r}: default limits soft {spec.soft_time_limit} s / "
                    f"hard {spec.hard_time_limit} s: {' '.join(exc.messages)}",
                    hint="Lower the job's hard_time_limit in its @job(...), or raise "
                    "BROKER_VISIBILITY_TIMEOUT (Redis) or BROKER_CONSUMER_TIMEOUT (RabbitMQ, with "
                    "the server's consumer_timeout) above it with room to spare.",
                    id="scheduler.E006",
                )
            )
    return errors
