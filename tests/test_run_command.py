"""The README's run command, from a fresh clone: starts, serves, runs a heartbeat, stops.

Runs ``python3 run.py`` in a ``git clone`` of this repository with no
``DATABASE_URL`` / ``REDIS_URL``, so it exercises the embedded set-up: a new
virtualenv from the lock file, SQLite in WAL mode and the embedded Redis.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import free_port, http_status, port_open

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def wait_until(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s; log tail:\n{log.read_text()[-5000:]}")


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that run from ``path`` (our clone only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def succeeded_heartbeats(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return conn.execute(
                "SELECT count(*) FROM jobs_jobrun WHERE job = 'heartbeat' AND status = 'succeeded'"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            return 0


class Platform:
    def __init__(self, clone: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [getattr(sys, "_base_executable", sys.executable), "run.py"],
            cwd=clone,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a terminal sends it."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def test_the_run_command_starts_the_platform_runs_a_heartbeat_and_stops_cleanly(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    web_port, redis_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL", "VIRTUAL_ENV", "SENTRY_DSN", "VAR_DIR"}
    }
    env.update(PORT=str(web_port), EMBEDDED_REDIS_PORT=str(redis_port), ADMIN_PASSWORD="s3cret-test")
    base = f"http://127.0.0.1:{web_port}"
    first_log = tmp_path / "first-start.log"

    platform = Platform(clone, env, first_log)
    try:
        wait_until(lambda: http_status(f"{base}/healthz") == 200, 300, "/healthz answering 200", first_log)
        assert http_status(f"{base}/admin/login/") == 200
        wait_until(
            lambda: succeeded_heartbeats(clone / "var" / "db.sqlite3") >= 1,
            150,
            "a succeeded heartbeat run",
            first_log,
        )
    finally:
        code = platform.interrupt()
    assert code == 0, first_log.read_text()[-3000:]
    assert "platform stopped" in first_log.read_text()
    assert not port_open(web_port) and not port_open(redis_port)
    assert processes_under(clone) == []
    journal = sqlite3.connect(clone / "var" / "db.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"

    # A second start reuses the data: no new admin user, no re-seeding.
    second_log = tmp_path / "second-start.log"
    platform = Platform(clone, env, second_log)
    try:
        wait_until(lambda: http_status(f"{base}/healthz") == 200, 120, "/healthz after restart", second_log)
    finally:
        code = platform.interrupt()
    assert code == 0
    text = second_log.read_text()
    assert "seeded schedule" not in text and "created" not in text
    assert succeeded_heartbeats(clone / "var" / "db.sqlite3") >= 1
    assert processes_under(clone) == []
