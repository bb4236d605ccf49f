"""What a worker does at start and stop, around the Celery app (``settings.celery_app``).

``celery -A scheduler`` loads this module (through ``scheduler/__init__``),
so its signal handlers are connected in every worker and beat. A worker
refuses to start with a pool that cannot enforce hard time limits: Celery
enforces ``time_limit`` only in the prefork pool, and a job that can run
forever breaks the platform's guarantee that every run ends. It refuses job
defaults whose limits cannot hold (check ``scheduler.E006``), publishes the
job catalog and its presence, and withdraws its presence on shutdown.
"""

from __future__ import annotations

import threading

from celery import signals

from settings.celery_app import app

__all__ = ["app"]

LIMIT_ENFORCING_POOLS = ("celery.concurrency.prefork",)


class PoolCannotEnforceTimeLimits(SystemExit):
    """Raised at worker start when the pool ignores hard time limits."""


def check_pool_enforces_time_limits(pool_cls: object) -> None:
    """Refuse pools other than prefork, with the fix in the message."""
    module = getattr(pool_cls, "__module__", "") or ""
    if isinstance(pool_cls, str):
        module = pool_cls
    if not module.startswith(LIMIT_ENFORCING_POOLS):
        name = getattr(pool_cls, "__name__", pool_cls)
        raise PoolCannotEnforceTimeLimits(
            f"refusing to start: the worker pool {module}.{name} cannot enforce hard time "
            "limits, so a hung job would never end. Start the worker with --pool=prefork "
            "(the default); scale with --concurrency, not threads/gevent/eventlet/solo."
        )


@signals.worker_init.connect
def _refuse_pools_without_time_limits(sender=None, **_kwargs) -> None:
    check_pool_enforces_time_limits(sender.pool_cls)


class JobLimitsCannotHold(SystemExit):
    """Raised at worker start when a job's default time limits cannot hold (check scheduler.E006)."""


@signals.worker_init.connect
def _refuse_job_limits_that_cannot_hold(sender=None, **_kwargs) -> None:
    from settings.checks import check_job_time_limits

    problems = check_job_time_limits()
    if problems:
        raise JobLimitsCannotHold(
            "refusing to start: " + "; ".join(f"{p.msg} ({p.id}; {p.hint})" for p in problems)
        )


@signals.worker_process_init.connect
def _fresh_sentry_client_in_each_child(**_kwargs) -> None:
    """A forked child must not reuse the parent's Sentry transport.

    Its background thread and locks were copied mid-state by fork(); a child
    forked while the parent was sending (e.g. a hard-timeout event) could block
    or drop its own events. A new client gives it its own thread and queue.
    """
    from django.conf import settings

    from lib.sentry import init_sentry

    if settings.SENTRY_DSN:
        init_sentry(
            settings.SENTRY_DSN,
            environment=settings.SENTRY_ENVIRONMENT,
            traces_sample_rate=settings.SENTRY_TRACES_SAMPLE_RATE,
        )


_presence_stop = threading.Event()


@signals.worker_ready.connect
def _announce_worker(sender=None, **_kwargs) -> None:
    """Publish the job catalog and this worker's presence (refreshed in the background)."""
    from jobs.catalog import publish_catalog
    from jobs.framework import JOB_SPECS
    from jobs.runs import record_abandoned_attempts
    from jobs.workers import keep_presence_fresh, record_worker

    hostname = sender.hostname
    publish_catalog(worker=hostname)
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender.task_consumer else []
    jobs = sorted(JOB_SPECS)
    record_worker(hostname, queues, jobs)
    threading.Thread(
        target=keep_presence_fresh,
        args=(hostname, queues, jobs, _presence_stop, record_abandoned_attempts),
        daemon=True,
    ).start()


@signals.worker_shutdown.connect
def _withdraw_worker(sender=None, **_kwargs) -> None:
    from jobs.workers import forget_worker

    _presence_stop.set()
    if sender is not None:
        forget_worker(sender.hostname)
