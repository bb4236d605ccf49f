"""The Docker image, built from the Dockerfile unchanged and run the way docker-compose.yml runs it.

There is no Docker engine here and Docker Hub is out of reach, so the image is
built by podman (chroot isolation, vfs storage) on a stand-in base image
(``tests/image/make_base_image.sh``: Debian bookworm's Python under the
official image's name), and its processes run with ``buildah run`` on the
host's network, against the machine's PostgreSQL (a database of their own)
and Redis (a database number of its own). The commands are docker-compose.yml's
own, read from the file; only the bind address (127.0.0.1, not 0.0.0.0) and
the web port (a free one) are changed, so nothing listens beyond this machine.

What it proves: the image builds; migrate and seed run; web answers /healthz
and renders the admin login page with its static files; a worker and beat
from the image run a heartbeat to success; the Dockerfile's HEALTHCHECK
passes while web serves and fails when it does not; the process runs as uid
10001 and cannot write its code.

Skipped, with the reason, where podman cannot work (not root, podman or
debootstrap missing); in CI (``CI=true``) that is a failure instead:
``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.support.processes import free_port, http_status

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/beatplatform:test"
STORAGE = ["--storage-driver", "vfs"]
BUILD_TIMEOUT = 900
DATABASE = "beatplatform_image"
REDIS_DB = 12

pytestmark = [pytest.mark.slow, pytest.mark.image, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


def cannot_build() -> str | None:
    if os.geteuid() != 0:
        return "podman with chroot isolation and vfs storage needs root here"
    for tool in ("podman", "buildah", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman buildah debootstrap)"
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return "the image's processes need the machine's PostgreSQL: set DATABASE_URL=postgres://…"
    return None


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def compose_command(service: str) -> list[str]:
    """docker-compose.yml's command for ``service``, bound to loopback."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return [part.replace("0.0.0.0", "127.0.0.1") for part in services[service]["command"]]


def dockerfile_healthcheck() -> list[str]:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("CMD [") and "healthz" in line:
            return json.loads(line.strip().removeprefix("CMD "))
    raise AssertionError("no HEALTHCHECK CMD [...] in the Dockerfile")


class Container:
    """A working container of the image; commands run in it with ``buildah run``."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.env = env
        self.logs = logs
        self.background: list[tuple[subprocess.Popen, Path]] = []

    def argv(self, command: list[str], env: dict[str, str] | None = None) -> list[str]:
        settings = [f"--env={key}={value}" for key, value in {**self.env, **(env or {})}.items()]
        return [
            "buildah",
            *STORAGE,
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            *settings,
            self.name,
            "--",
            *command,
        ]

    def run(self, command: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        return run(self.argv(command, env), timeout)

    def start(self, label: str, command: list[str], **env: str) -> subprocess.Popen:
        log = self.logs / f"{label}.log"
        process = subprocess.Popen(
            self.argv(command, env),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole, by our pid
        )
        self.background.append((process, log))
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for process, _ in reversed(self.background):
            self.stop(process)

    def tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.background
        )


def fresh_database(url: str) -> str:
    """Create an empty database of our own next to DATABASE_URL's; return its URL."""
    parts = urllib.parse.urlsplit(url)
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return parts._replace(path=f"/{DATABASE}").geturl()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[str]:
    reason = cannot_build()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the image test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    base = run(["bash", str(ROOT / "tests/image/make_base_image.sh")], timeout=600)
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    started = time.monotonic()
    build = run(
        [
            "podman",
            *STORAGE,
            "build",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--pull=never",
            "--format",
            "docker",
            "--tag",
            IMAGE,
            str(ROOT),
        ],
        timeout=BUILD_TIMEOUT,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-3000:]
    print(f"image built in {time.monotonic() - started:.0f} s")
    yield IMAGE
    # Keep the layers (the next build reuses them); drop the dangling ones.
    run(["podman", *STORAGE, "image", "prune", "--force"], timeout=300)


@pytest.fixture(scope="module")
def container(image, tmp_path_factory) -> Iterator[Container]:
    name = f"beatplatform-test-{os.getpid()}"
    created = run(["buildah", *STORAGE, "from", "--name", name, "--pull-never", image], timeout=300)
    assert created.returncode == 0, created.stderr
    redis_base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    env = {
        "DATABASE_URL": fresh_database(os.environ["DATABASE_URL"]),
        "REDIS_URL": f"{redis_base}/{REDIS_DB}",
        "SECRET_KEY": "image-test-" + "x" * 50,
        "REQUIRE_SECRET_KEY": "1",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ADMIN_PASSWORD": "image-test-password",
        "BEAT_MAX_LOOP_INTERVAL": "1",
    }
    box = Container(name, env, tmp_path_factory.mktemp("image-logs"))
    try:
        yield box
    finally:
        box.stop_all()
        run(["buildah", *STORAGE, "rm", name], timeout=300)


def wait_for(condition, timeout: float, what: str, box: Container) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{box.tails()}")


def test_it_runs_as_uid_10001_and_cannot_write_its_code(container):
    who = container.run(["id", "-u"])
    assert who.stdout.strip() == "10001", who.stderr
    write = container.run(["sh", "-c", "echo x >> /app/manage.py"])
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert container.run(["sh", "-c", "touch /app/var/ok && rm /app/var/ok"]).returncode == 0


def test_the_platform_runs_from_the_image(container):
    port = free_port()
    web = compose_command("web")
    web = [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in web]
    container.start("web", web, PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_status(f"{base}/healthz") == 200, 180, "web's /healthz answering 200", container)

    assert http_status(f"{base}/admin/login/") == 200
    assert http_status(f"{base}/static/admin/css/base.css") == 200  # built in, served by whitenoise

    healthcheck = dockerfile_healthcheck()
    assert container.run(healthcheck, timeout=60, PORT=str(port)).returncode == 0

    container.start("worker", compose_command("worker"))
    container.start("beat", compose_command("beat"))
    url = container.env["DATABASE_URL"]

    def heartbeat_succeeded() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs_jobrun WHERE job = 'heartbeat' AND status = 'succeeded'"
            ).fetchone()
        return bool(row and row[0])

    # The seeded "heartbeat every minute" schedule: its first slot within a minute.
    wait_for(heartbeat_succeeded, 150, "a heartbeat run from the image's beat and worker", container)

    web_process = container.background[0][0]
    container.stop(web_process)
    assert container.run(healthcheck, timeout=60, PORT=str(port)).returncode != 0
