"""/healthz answers ok / failing per dependency and keeps the failure's detail in the log.

The view is public (load balancers and Docker call it without a login), so its
body must not tell a stranger where the broker or the database lives.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.broker import app_broker, closed_port_url

BROKER_PASSWORD = "hunter2-broker"  # noqa: S105 (a test value that must never be shown)


@pytest.fixture
def unreachable_broker():
    """Point the web process's Celery app at a port where nothing listens; yield the port."""
    with app_broker(closed_port_url(f"healthz-user:{BROKER_PASSWORD}@")) as url:
        yield int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.django_db
def test_it_answers_ok_per_dependency_when_both_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_it_says_only_failing_when_the_broker_is_down(client, unreachable_broker, caplog):
    with caplog.at_level(logging.WARNING, logger="scheduler.views"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "database": "ok", "broker": "failing"}
    body = response.content.decode()
    for detail in ("127.0.0.1", str(unreachable_broker), BROKER_PASSWORD, "Error", "refused"):
        assert detail not in body
    [record] = [r for r in caplog.records if r.name == "scheduler.views"]
    assert record.levelno == logging.WARNING
    assert "broker" in record.getMessage()
    assert str(unreachable_broker) in record.getMessage()
    assert BROKER_PASSWORD not in record.getMessage()
