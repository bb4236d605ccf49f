"""The Dockerfile and docker-compose.yml describe a stack that can actually start.

Checked without a Docker engine: the compose services exist, only web migrates,
the worker uses the only pool that enforces time limits, every dependency is
health-gated, every program and every ``celery -A scheduler`` subcommand in a
command exists here (options included), and the image's HEALTHCHECK one-liner
really passes on 200 from /healthz and fails on 503. No database is used.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
APP_SERVICES = ("web", "worker", "beat", "alertd", "flower")


def load_compose() -> dict:
    """The compose file as data: PyYAML if installed, else `docker compose config`."""
    path = ROOT / "docker-compose.yml"
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        return yaml.safe_load(path.read_text())
    docker = shutil.which("docker")
    has_compose = (
        docker is not None
        and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0
    )
    if not has_compose:
        pytest.skip(
            "cannot parse docker-compose.yml: PyYAML is not installed in .venv and "
            "there is no `docker compose` (client or plugin missing)"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SECRET_KEY": "x"},
    )
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[:1]
        pytest.skip(
            f"cannot parse docker-compose.yml: PyYAML is not installed and "
            f"`docker compose config` failed ({' '.join(reason)})"
        )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services() -> dict:
    return load_compose()["services"]


def programs(command: str | list[str]) -> list[list[str]]:
    """Each program's argv in a command; ``sh -c "a && b"`` yields a and b."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    steps = [shlex.split(step) for step in argv[2].split("&&")]
    return [step[1:] if step[0] == "exec" else step for step in steps]


def dockerfile() -> str:
    return re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())


def healthcheck_argv() -> list[str]:
    match = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", dockerfile(), re.MULTILINE)
    assert match, "Dockerfile has no exec-form HEALTHCHECK ... CMD [...]"
    return json.loads(match.group(1))


def test_it_defines_every_service(services):
    assert {"web", "worker", "beat", "alertd", "redis", "postgres", "flower"} <= set(services)


def test_it_migrates_only_in_web(services):
    migrating = {name for name in APP_SERVICES if "migrate" in str(services[name]["command"])}
    assert migrating == {"web"}


def test_it_runs_the_worker_with_the_prefork_pool(services):
    (argv,) = programs(services["worker"]["command"])
    assert argv[argv.index("--pool") + 1] == "prefork"


def test_it_runs_flower_only_on_request_and_behind_its_login(services):
    flower = services["flower"]
    assert flower["profiles"] == ["monitoring"]
    (argv,) = programs(flower["command"])
    assert argv[:3] == ["python", "manage.py", "flower"]  # refuses to start without FLOWER_BASIC_AUTH
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    result = subprocess.run(
        [str(VENV_BIN / "python"), *argv[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_it_gates_every_dependency_on_health(services):
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] == "service_healthy", (name, dependency)
    for name in ("worker", "beat", "alertd"):
        assert "web" in services[name]["depends_on"], name


def test_it_publishes_ports_on_loopback_only(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_it_starts_only_programs_that_exist_in_the_virtualenv(services):
    for name in APP_SERVICES:
        for argv in programs(services[name]["command"]):
            assert argv[0] in ("gunicorn", "celery", "python"), (name, argv)
            assert os.access(VENV_BIN / argv[0], os.X_OK), f"{name}: .venv/bin/{argv[0]} missing"


def celery_invocations(services: dict) -> Iterator[list[str]]:
    for name in APP_SERVICES:
        service = services[name]
        commands = [service["command"]]
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD-SHELL"]:
            commands.append(test[1].replace("$$", "$"))
        for command in commands:
            for argv in programs(command):
                if argv[:3] == ["celery", "-A", "scheduler"]:
                    yield argv


def test_it_uses_only_celery_subcommands_and_options_that_exist(services):
    invocations = list(celery_invocations(services))
    assert {argv[3] for argv in invocations} >= {"worker", "beat"}
    for argv in invocations:
        # --help is eager but parsed last, so a misspelt option still fails.
        result = subprocess.run(
            [str(VENV_BIN / "celery"), *argv[1:], "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (argv, result.stderr[-2000:])


def test_it_builds_in_two_stages_and_runs_as_a_non_root_user():
    text = dockerfile()
    assert len(re.findall(r"^FROM\s", text, re.MULTILINE)) == 2
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "Dockerfile has no USER line"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_it_keeps_the_local_virtualenv_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored  # it would overwrite the builder's venv


def test_it_checks_health_through_healthz_in_image_and_compose(services):
    argv = healthcheck_argv()
    assert argv[0] == "python" and "/healthz" in argv[-1]
    assert services["web"]["healthcheck"]["test"] == ["CMD", *argv]


def serve(status: int) -> tuple[ThreadingHTTPServer, list[str]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_it_runs_the_healthcheck_one_liner_against_a_server(status, healthy):
    server, seen = serve(status)
    try:
        argv = healthcheck_argv()
        result = subprocess.run(
            [sys.executable, *argv[1:]],
            capture_output=True,
            timeout=30,
            env={**os.environ, "PORT": str(server.server_address[1])},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/healthz"]
    assert (result.returncode == 0) is healthy, result.stderr
