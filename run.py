#!/usr/bin/env python3
"""The two commands of this repository, needing nothing but Python 3.11+.

    python3 run.py          run the platform (web, worker, beat; embedded SQLite/Redis)
    python3 run.py test     run the whole test suite (extra arguments go to pytest)

Both first make ``.venv`` and install the locked dependencies (``uv.lock``)
with uv, which is itself installed from PyPI into the virtualenv.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
UV = VENV / "bin" / "uv"
UV_VERSION = "0.13.9"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (run.py runs under any system python)
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not UV.exists():
        has_pip = subprocess.run([str(PYTHON), "-m", "pip", "--version"], capture_output=True)
        if has_pip.returncode != 0:
            subprocess.run([str(PYTHON), "-m", "ensurepip", "--upgrade"], check=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"], check=True)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(VENV), "UV_PYTHON_DOWNLOADS": "never"}
    # --inexact keeps uv itself (installed above, not part of the lock).
    subprocess.run(
        [str(UV), "sync", "--frozen", "--inexact", "--quiet", "--python", str(PYTHON)],
        cwd=ROOT,
        env=env,
        check=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tests(pytest_args: list[str]) -> int:
    """pytest, with an embedded Redis on a free port when ``REDIS_URL`` is unset."""
    env = dict(os.environ)
    redis_process = None
    if not env.get("REDIS_URL"):
        port = free_port()
        data_dir = tempfile.mkdtemp(prefix="test-redis-")
        redis_process = subprocess.Popen(
            [str(PYTHON), "-m", "scheduler.embedded_redis", str(port), data_dir], cwd=ROOT
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        return subprocess.call([str(PYTHON), "-m", "pytest", *pytest_args], cwd=ROOT, env=env)
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    ensure_environment()
    os.chdir(ROOT)
    if command == "up":
        args = [str(PYTHON), "manage.py", "runplatform", *argv[1:]]
    elif command == "test":
        return run_tests(argv[1:])
    else:
        print(__doc__)
        return 2
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
