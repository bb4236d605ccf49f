"""The send-only client runs where Django cannot even be imported, and its runs reach the history.

A fresh interpreter with Django, the models, job code and the database
drivers blocked (a ``sys.meta_path`` finder that refuses them) imports
``jobs.sendonly`` and dispatches with the README's three lines, over the real
Redis, to the real worker; this process then sees the run succeed in the
database, recorded with origin ``client`` and the limits the message carried.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings

from jobs.models import JobRun, RunOrigin, RunStatus
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

REPOSITORY = Path(__file__).resolve().parent.parent

# What a service using the client must not need: Django, our apps' Django
# code, job code, database drivers.
BLOCKED = [
    "django",
    "django_celery_beat",
    "psycopg",
    "psycopg2",
    "scheduler",
    "alerts",
    "settings",
    "api",
    "jobs.models",
    "jobs.framework",
    "jobs.builtin",
    "jobs.tasks",
    "jobs.catalog",
    "jobs.dispatch",
    "jobs.publishing",
    "jobs.runs",
]

BLOCKER = """
import sys

sys.path.insert(0, {repository!r})  # the repository's jobs/ only: -I ignores PYTHONPATH
BLOCKED = {blocked!r}


class RefuseBlocked:
    '''Refuses every module a send-only service does not have.'''

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is not installed in this service (blocked by the test)")
        return None


sys.meta_path.insert(0, RefuseBlocked())
try:
    import django  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker does not block django")
"""


def run_without_django(code: str, broker_url: str) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter with the blocked modules refused."""
    script = (
        BLOCKER.format(blocked=BLOCKED, repository=str(REPOSITORY))
        + textwrap.dedent(code)
        + "\nimport json\n"
        + "loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in BLOCKED))\n"
        + "print(json.dumps({'result': result, 'loaded': loaded}))\n"
    )
    # CATALOG: the Redis workers publish the catalog to (the broker itself on Redis).
    catalog = settings.REDIS_URL
    env = {"PATH": "/usr/bin:/bin", "BROKER": broker_url, "CATALOG": catalog, "PYTHONDONTWRITEBYTECODE": "1"}
    # -I: isolated, no user site, no PYTHON* variables, not the current directory.
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0, f"the send-only process failed:\n{done.stdout}\n{done.stderr}"
    output = json.loads(done.stdout.strip().splitlines()[-1])
    assert output["loaded"] == [], f"blocked modules were imported: {output['loaded']}"
    return output["result"]


def test_a_service_without_django_dispatches_with_three_lines_and_the_worker_records_the_run(
    worker, catalog, clean_queues
):
    result = run_without_django(
        """
        import os

        # The README's three lines (catalog_url: what RabbitMQ needs, the broker itself on Redis):
        from jobs.sendonly import Client
        client = Client(os.environ["BROKER"], service="billing-api", catalog_url=os.environ["CATALOG"])
        run_id = client.dispatch("reports.run_summary", kwargs={"window_hours": 24}).run_id

        result = run_id
        """,
        settings.CELERY_BROKER_URL,
    )

    run = wait_for_run(result)
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.error_message)
    assert (run.origin, run.requested_by, run.job, run.kwargs) == (
        RunOrigin.CLIENT,
        "billing-api",
        "reports.run_summary",
        {"window_hours": 24},
    )
    # The job's published queue and limits, carried by the message, recorded by the worker.
    assert (run.queue, run.soft_time_limit, run.hard_time_limit) == ("reports", 240, 300)
    assert run.attempt == 1
    assert run.result is not None


def test_the_client_refuses_an_unknown_job_without_django_too(worker, catalog):
    result = run_without_django(
        """
        import os
        from jobs.sendonly import Client, UnknownJob

        client = Client(os.environ["BROKER"], catalog_url=os.environ["CATALOG"])
        try:
            client.dispatch("reports.no_such_job")
        except UnknownJob as exc:
            result = {"message": str(exc), "value_error": isinstance(exc, ValueError)}
        else:
            result = None
        """,
        settings.CELERY_BROKER_URL,
    )

    assert result is not None, "an unknown job was sent"
    assert result["value_error"]
    assert "Unknown job 'reports.no_such_job'" in result["message"]
    assert "reports.run_summary" in result["message"]  # names the jobs it knows
    assert not JobRun.objects.exists()
