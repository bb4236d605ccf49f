"""Flower: optional, behind basic auth, and listing our jobs by their stable names.

Real parts: `manage.py flower` as a subprocess (which execs Celery's Flower)
against the real Redis broker and the session's real prefork worker.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.request

import pytest
from django.core.management import CommandError, call_command

from jobs.dispatch import dispatch
from scheduler.management.commands.flower import basic_auth_problem
from tests.support.processes import ROOT, Service, free_port, http_status, port_open

CREDENTIALS = "ops:s3cret"


def flower_get(url: str, credentials: str = CREDENTIALS):
    token = base64.b64encode(credentials.encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
        return response.status, response.read()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "FLOWER_BASIC_AUTH is not set"),
        ("ops", "FLOWER_BASIC_AUTH entry 'ops' is not user:password"),
        ("ops:", "FLOWER_BASIC_AUTH entry 'ops' is not user:password"),
        (":secret", "FLOWER_BASIC_AUTH entry '' is not user:password"),
        ("ops:a,dev", "FLOWER_BASIC_AUTH entry 'dev' is not user:password"),
        ("ops:a,dev:b", None),
    ],
)
def test_basic_auth_is_checked(value, problem):
    assert basic_auth_problem(value) == problem


def test_flower_refuses_to_start_without_basic_auth(settings):
    settings.FLOWER_BASIC_AUTH = ""
    with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH is not set: Flower would let anyone"):
        call_command("flower", "--port", "5999")


def test_run_command_refuses_flower_without_basic_auth_before_starting_anything(settings, tmp_path):
    settings.FLOWER_PORT = 5999
    settings.FLOWER_BASIC_AUTH = "ops"
    settings.VAR_DIR = tmp_path
    with pytest.raises(CommandError, match="FLOWER_PORT is set but FLOWER_BASIC_AUTH entry 'ops'"):
        call_command("runplatform")
    assert not (tmp_path / "redis").exists()  # the embedded Redis was not started either


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_flower_lists_our_jobs_by_name_behind_basic_auth(worker, catalog, service_env, logs_dir):
    port = free_port()
    env = {**service_env, "FLOWER_BASIC_AUTH": CREDENTIALS, "FLOWER_PORT": str(port)}
    flower = Service("flower", [sys.executable, str(ROOT / "manage.py"), "flower"], env, logs_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert flower.process.poll() is None, flower.log()
            assert time.monotonic() < deadline, flower.log()
            time.sleep(0.2)
        assert http_status(f"{base}/") == 401
        assert http_status(f"{base}/api/tasks") == 401
        with pytest.raises(urllib.error.HTTPError):
            flower_get(f"{base}/api/tasks", "ops:wrong")

        # Workers send task events (CELERY_WORKER_SEND_TASK_EVENTS); Flower lists
        # only those that arrive after it has subscribed, so send until one is.
        listed: dict = {}
        while not listed:
            assert time.monotonic() < deadline, f"no heartbeat listed by Flower:\n{flower.log()[-3000:]}"
            run = dispatch("heartbeat")
            time.sleep(1.0)
            status, body = flower_get(f"{base}/api/tasks?limit=100")
            assert status == 200
            listed = {task_id: task for task_id, task in json.loads(body).items() if task_id == str(run.pk)}
        (task,) = listed.values()
        assert task["name"] == "heartbeat"

        status, body = flower_get(f"{base}/tasks")
        assert status == 200 and b"Flower" in body
    finally:
        flower.stop()
