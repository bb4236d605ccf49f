"""Point the in-process Celery app at another broker for a while (a broker that is down)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobs.limits import broker_is_redis
from tests.support.processes import free_port

_URL_KEYS = ("broker_url", "broker_write_url")


@contextmanager
def app_broker(url: str) -> Iterator[str]:
    """Publish (and check) through ``url`` inside the block; the app's own configuration after.

    Both the read and the write URL are set, and both are put back exactly
    as they were (a key that was not set is removed again, so a later test
    sees the write URL follow the broker URL as usual).
    """
    from scheduler.celery import app

    changes = app.conf.changes
    saved = {key: changes[key] for key in _URL_KEYS if key in changes}
    for key in _URL_KEYS:
        app.conf[key] = url
    try:
        yield url
    finally:
        for key in _URL_KEYS:
            if key in saved:
                app.conf[key] = saved[key]
            else:
                changes.pop(key, None)


def closed_port_url(credentials: str = "", scheme: str = "redis") -> str:
    """A broker URL on a loopback port where nothing listens, as when the broker is down."""
    path = "/0" if scheme == "redis" else "//"
    return f"{scheme}://{credentials}127.0.0.1:{free_port()}{path}"


def redis_broker_only(reason: str) -> pytest.MarkDecorator:
    """Skip a test (or, as ``pytestmark``, a module) unless Redis is the broker; ``reason`` says why.

    For tests of Redis-transport behaviour; the reason names what covers RabbitMQ.
    """
    return pytest.mark.skipif(not broker_is_redis(), reason=reason)
