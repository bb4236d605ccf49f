"""A job's default limits must hold too: the system check and the worker refuse ones Redis would cut short."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ValidationError
from django.test import override_settings

from jobs.dispatch import dispatch
from jobs.framework import JOB_SPECS
from tests.support.processes import exit_code, start_worker

SHORT_VISIBILITY = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}


@override_settings(**SHORT_VISIBILITY, CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 100})
def test_the_system_check_names_each_job_whose_hard_limit_outlives_the_visibility_timeout():
    errors = [e for e in run_checks() if e.id == "scheduler.E006"]

    by_job = {e.msg.split("'")[1]: e for e in errors}
    too_long = {name for name, spec in JOB_SPECS.items() if spec.hard_time_limit > 75}  # 75 % of 100 s
    assert set(by_job) == too_long
    assert {"diagnostics.sleep", "reports.run_summary"} <= too_long  # hard 90 s and 300 s
    assert "BROKER_VISIBILITY_TIMEOUT = 100 s" in by_job["reports.run_summary"].msg
    assert "raise BROKER_VISIBILITY_TIMEOUT" in by_job["reports.run_summary"].hint


def test_the_default_configuration_passes_the_check():
    assert not [e for e in run_checks() if e.id == "scheduler.E006"]


@pytest.mark.django_db
@override_settings(**SHORT_VISIBILITY, CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 600})
def test_dispatch_refuses_a_hard_limit_the_broker_would_cut_short(catalog):
    with pytest.raises(ValidationError, match=r"hard limit \(500 s\).*at or below 450 s"):
        dispatch("diagnostics.sleep", [1], soft_time_limit=400, hard_time_limit=500)


@pytest.mark.slow
def test_a_worker_refuses_to_start_when_a_jobs_default_limits_cannot_hold(service_env, logs_dir):
    service = start_worker(
        {**service_env, "BROKER_VISIBILITY_TIMEOUT": "100"}, logs_dir, name="short-visibility"
    )
    assert exit_code(service) != 0
    assert "refusing to start" in service.log()
    assert "scheduler.E006" in service.log()
