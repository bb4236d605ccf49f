"""runplatform supervises its children: a crashed one comes back, the others keep serving.

The first tests drive :class:`Supervisor` with real child processes and a
stepped clock (``check(now=...)``); the last two run ``manage.py
runplatform`` itself and SIGKILL its children by pid.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.management.commands.runplatform import Child, Supervisor
from tests.support.processes import ROOT, free_port, http_status, port_open

LOGGER = "scheduler.management.commands.runplatform"


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def crasher() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    supervisor = Supervisor()
    yield supervisor
    for _, process in supervisor.processes():
        if process.poll() is None:
            process.kill()
        process.wait()


def crash_seen_at(supervisor: Supervisor, child: Child, now: float) -> bool:
    """Let ``child``'s process end for real, then have the supervisor look at ``now``."""
    child.process.wait(timeout=30)
    return supervisor.check(now=now)


def test_it_restarts_a_killed_child_after_a_second_and_leaves_the_others_running(supervisor, caplog):
    web = supervisor.add("web", sleeper, now=0)
    beat = supervisor.add("beat", sleeper, now=0)
    web_process, killed = web.process, beat.process
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=10)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert supervisor.check(now=10)
        assert supervisor.check(now=10.9)
        assert beat.process is killed  # still waiting out its backoff
        assert supervisor.check(now=11)

    assert beat.process is not killed and beat.process.poll() is None
    assert web.process is web_process and web_process.poll() is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "beat exited with code -9 (SIGKILL); restarting it in 1 s"
        " (1 of 5 crashes within 60 s before giving up)"
    ]
    assert f"beat restarted (pid {beat.process.pid})" in caplog.text


def test_it_doubles_the_delay_up_to_30_s_while_a_child_keeps_crashing_and_resets_after_a_long_run(
    supervisor,
):
    child = supervisor.add("worker", crasher, now=0)
    delays = []
    now = 0.0
    for _ in range(7):
        now += 20  # up 20 s each time: never 5 crashes within a minute
        assert crash_seen_at(supervisor, child, now)
        delays.append(child.restart_at - now)
        now = child.restart_at
        assert supervisor.check(now=now)
        assert child.restart_at is None
    assert delays == [1, 2, 4, 8, 16, 30, 30]

    now += 60  # then it ran for a whole window before crashing
    assert crash_seen_at(supervisor, child, now)
    assert child.restart_at - now == 1


def test_it_gives_up_on_the_fifth_crash_of_one_child_within_a_minute(supervisor, caplog):
    steady = supervisor.add("web", sleeper, now=0)
    child = supervisor.add("beat", crasher, now=0)
    now = 0.0
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(4):
            now += 1
            assert crash_seen_at(supervisor, child, now)
            now = child.restart_at
            assert supervisor.check(now=now)
        assert not crash_seen_at(supervisor, child, now + 1)

    assert now + 1 < 60
    assert caplog.records[-1].getMessage() == (
        "beat exited with code 3: 5 crashes within 60 s, giving up; stopping the platform"
    )
    assert steady.process.poll() is None  # stopping them is the command's job


# --- The command itself ------------------------------------------------------------


def children_by_role(pid: int) -> dict[str, int]:
    """The platform's direct children, by what they run: web, worker, beat, alertd, redis."""
    roles = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            args = (stat.parent / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError, IndexError):
            continue
        for role, marker in (
            ("web", "gunicorn"),
            ("worker", "worker"),
            ("beat", "beat"),
            ("alertd", "alertd"),
        ):
            if marker in args:
                roles[role] = int(stat.parent.name)
        if "redis-server" in args[0]:  # it rewrites its title: "redis-server 127.0.0.1:PORT"
            roles["redis"] = int(stat.parent.name)
    return roles


class Platform:
    """``manage.py runplatform`` on free ports, its data in ``tmp_path``, its output in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.web_port, self.redis_port = free_port(), free_port()
        self.log_path = tmp_path / "runplatform.log"
        unset = {"DATABASE_URL", "REDIS_URL", "BROKER_URL", "SENTRY_DSN", "VAR_DIR"}
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env.update(
            PORT=str(self.web_port),
            EMBEDDED_REDIS_PORT=str(self.redis_port),
            VAR_DIR=str(tmp_path / "var"),
            ADMIN_PASSWORD="s3cret-test",
            WORKER_CONCURRENCY="1",
            PYTHONUNBUFFERED="1",
        )
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runplatform"],
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self) -> int | None:
        return http_status(f"http://127.0.0.1:{self.web_port}/healthz")

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout:.0f} s; log tail:\n{self.log()[-5000:]}")
            time.sleep(0.2)

    def wait_for_child(self, role: str, other_than: int | None = None, timeout: float = 30) -> int:
        self.wait_until(
            lambda: children_by_role(self.process.pid).get(role, other_than) != other_than,
            timeout,
            f"a new {role} process",
        )
        return children_by_role(self.process.pid)[role]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def platform(tmp_path) -> Iterator[Platform]:
    platform = Platform(tmp_path)
    try:
        platform.wait_until(lambda: platform.healthz() == 200, 240, "/healthz answering 200")
        for role in ("web", "worker", "beat", "alertd", "redis"):
            platform.wait_for_child(role)
        yield platform
    finally:
        leftovers = children_by_role(platform.process.pid)
        platform.stop()
        for pid in leftovers.values():  # only if the command failed to stop them
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.mark.slow
def test_the_command_restarts_a_killed_worker_beat_and_redis_while_web_keeps_serving(platform):
    for role, up in (("worker", "ready."), ("beat", "beat engine loaded")):
        old = children_by_role(platform.process.pid)[role]
        started = platform.log().count(up)
        if role == "worker":  # its whole process group, so its pool child does not outlive it
            os.killpg(old, signal.SIGKILL)
        else:
            os.kill(old, signal.SIGKILL)
        assert platform.healthz() == 200
        new = platform.wait_for_child(role, other_than=old)
        platform.wait_until(
            lambda up=up, started=started: platform.log().count(up) > started, 90, f"{role} up"
        )
        assert platform.healthz() == 200
        assert f"{role} exited with code -9 (SIGKILL); restarting it in 1 s" in platform.log()
        assert f"{role} restarted (pid {new})" in platform.log()

    old = children_by_role(platform.process.pid)["redis"]
    os.kill(old, signal.SIGKILL)
    platform.wait_for_child("redis", other_than=old)
    platform.wait_until(lambda: platform.healthz() == 200, 30, "/healthz after Redis came back")
    assert "redis exited with code -9 (SIGKILL); restarting it in 1 s" in platform.log()
    assert platform.process.poll() is None

    assert platform.stop() == 0
    assert "platform stopped" in platform.log()
    assert platform.healthz() is None
    assert not port_open(platform.redis_port)


@pytest.mark.slow
def test_the_command_gives_up_and_exits_non_zero_when_beat_keeps_crashing(platform):
    kills = 0
    deadline = time.monotonic() + 90
    while platform.process.poll() is None and time.monotonic() < deadline:
        beat = children_by_role(platform.process.pid).get("beat")
        if beat is not None:
            os.kill(beat, signal.SIGKILL)
            kills += 1
            platform.wait_until(
                lambda beat=beat: (
                    children_by_role(platform.process.pid).get("beat") != beat
                    or platform.process.poll() is not None
                ),
                60,
                "beat restarted or the platform stopped",
            )
        time.sleep(0.1)

    assert platform.process.wait(timeout=60) == 1, platform.log()[-5000:]
    assert kills == 5
    log = platform.log()
    assert "beat exited with code -9 (SIGKILL): 5 crashes within 60 s, giving up" in log
    assert "platform stopped" in log
    assert platform.healthz() is None
    assert not port_open(platform.redis_port)
