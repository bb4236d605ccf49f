"""``manage.py jobs`` and ``manage.py runs`` against a real worker, Redis and PostgreSQL.

``jobs run --wait`` exits 0 when the run succeeds and non-zero when it fails;
``runs list`` / ``runs show`` show what the worker recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.management.commands.jobs import parse_arg
from jobs.models import JobRun, RunStatus
from tests.conftest import database_url_for_subprocesses

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_arguments_are_json_when_they_parse_else_text():
    assert parse_arg("days=7") == ("days", 7)
    assert parse_arg("flag=true") == ("flag", True)
    assert parse_arg("names=[1, 2]") == ("names", [1, 2])
    assert parse_arg("message=it broke") == ("message", "it broke")
    assert parse_arg("empty=") == ("empty", "")
    with pytest.raises(CommandError):
        parse_arg("novalue")


def test_jobs_list_shows_the_catalog(catalog):
    out, _ = run_command("jobs", "list")
    line = next(line for line in out.splitlines() if line.startswith("diagnostics.fail "))
    assert "queue=default" in line and "soft=30s" in line and "hard=45s" in line


def test_an_unknown_job_is_a_usage_error_and_records_nothing(catalog):
    with pytest.raises(CommandError) as caught:
        run_command("jobs", "run", "no.such.job")
    assert caught.value.returncode == 2
    assert "Unknown job" in str(caught.value)
    assert not JobRun.objects.exists()


@pytest.mark.slow
class TestAgainstTheWorker:
    def test_wait_exits_zero_on_success_and_runs_show_it(self, catalog, worker, clean_queues):
        out, _ = run_command(
            "jobs", "run", "diagnostics.sleep", "--arg", "seconds=0.2", "--wait", "--timeout", "60"
        )
        lines = out.splitlines()
        run = JobRun.objects.get(pk=uuid.UUID(lines[0]))
        assert run.status == RunStatus.SUCCEEDED
        assert run.origin == "client" and run.requested_by.startswith("cli:")
        assert lines[-1] == "succeeded"

        listed, _ = run_command("runs", "list", "--job", "diagnostics.sleep", "--status", "succeeded")
        assert str(run.pk) in listed
        shown, _ = run_command("runs", "show", str(run.pk))
        assert "status:        succeeded" in shown and '"seconds": 0.2' in shown

    def test_wait_exits_non_zero_when_the_job_fails(self, catalog, worker, clean_queues):
        with pytest.raises(CommandError) as caught:
            run_command(
                "jobs", "run", "diagnostics.fail", "--arg", "message=on purpose", "--wait", "--timeout", "60"
            )
        assert caught.value.returncode == 1
        assert "failed" in str(caught.value) and "on purpose" in str(caught.value)
        assert JobRun.objects.get(job="diagnostics.fail").status == RunStatus.FAILED

    def test_the_exit_code_of_a_real_process(self, catalog, worker, clean_queues):
        env = {**os.environ, "DATABASE_URL": database_url_for_subprocesses()}
        failing = subprocess.run(
            [sys.executable, "manage.py", "jobs", "run", "diagnostics.fail", "--wait", "--timeout", "60"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert failing.returncode == 1, failing.stderr
        assert "failed" in failing.stdout


def test_runs_show_refuses_what_is_not_a_run(catalog):
    with pytest.raises(CommandError, match="not a run id"):
        run_command("runs", "show", "42")
    with pytest.raises(CommandError, match="There is no run"):
        run_command("runs", "show", str(uuid.uuid4()))
    out, _ = run_command("runs", "list")
    assert out.strip() == "No runs."
