"""Real worker and beat subprocesses for integration tests.

Each process writes its log to a file (shown when a test fails) and is
stopped by its own pid: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUEUES = "default,heartbeat,reports"


class Service:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {text!r} not logged within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, grace: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def exit_code(service: Service, timeout: float = 60.0) -> int:
    """Wait for a service that must exit on its own (a refused start); stop it if it does not."""
    try:
        return service.process.wait(timeout=timeout)
    finally:
        service.stop()


def run_dev_tool(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool of the virtualenv (mypy, lint-imports) from the repository root."""
    tool = Path(sys.executable).with_name(name)
    return subprocess.run([str(tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "scheduler", *args]


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    name: str = "worker",
    concurrency: int = 2,
    pool: str = "prefork",
    queues: str = QUEUES,
) -> Service:
    service = Service(
        name,
        celery(
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--queues",
            queues,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            f"{name}-{os.getpid()}@%h",
        ),
        env,
        log_dir,
    )
    return service


def start_beat(env: dict[str, str], log_dir: Path, name: str = "beat") -> Service:
    return Service(name, celery("beat", "--loglevel", "INFO"), env, log_dir)


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a worker's pool processes), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
