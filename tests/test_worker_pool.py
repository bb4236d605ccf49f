"""A worker refuses pools that cannot enforce hard time limits."""

from __future__ import annotations

import pytest

from scheduler.celery import PoolCannotEnforceTimeLimits, check_pool_enforces_time_limits
from tests.support.processes import exit_code, start_worker


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_it_refuses_to_start_a_worker_whose_pool_cannot_enforce_limits(pool, service_env, logs_dir):
    service = start_worker(service_env, logs_dir, name=f"refused-{pool}", pool=pool)
    assert exit_code(service) != 0
    assert "cannot enforce hard time limits" in service.log()
    assert "--pool=prefork" in service.log()


def test_it_accepts_the_prefork_pool():
    from celery.concurrency.prefork import TaskPool

    check_pool_enforces_time_limits(TaskPool)  # does not raise


def test_it_names_the_refused_pool():
    from celery.concurrency.solo import TaskPool

    with pytest.raises(PoolCannotEnforceTimeLimits, match="celery.concurrency.solo"):
        check_pool_enforces_time_limits(TaskPool)
