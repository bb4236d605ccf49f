#!/usr/bin/env python3
"""The two commands of this repository, needing nothing but Python 3.11+.

    python3 run.py          run the platform (web, worker, beat; embedded SQLite/Redis)
    python3 run.py test     run the whole test suite (extra arguments go to pytest)

Both first make ``.venv`` and install the locked dependencies (``uv.lock``)
with uv, which is itself installed from PyPI into the virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
UV = VENV / "bin" / "uv"
UV_VERSION = "0.13.9"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not UV.exists():
        has_pip = subprocess.run([str(PYTHON), "-m", "pip", "--version"], capture_output=True)
        if has_pip.returncode != 0:
            subprocess.run([str(PYTHON), "-m", "ensurepip", "--upgrade"], check=True)
        subprocess.run(
            [str(PYTHON), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"], check=True
        )
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(VENV), "UV_PYTHON_DOWNLOADS": "never"}
    # --inexact keeps uv itself (installed above, not part of the lock).
    subprocess.run(
        [str(UV), "sync", "--frozen", "--inexact", "--quiet", "--python", str(PYTHON)],
        cwd=ROOT, env=env, check=True,
    )


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    ensure_environment()
    os.chdir(ROOT)
    if command == "up":
        args = [str(PYTHON), "manage.py", "runplatform", *argv[1:]]
    elif command == "test":
        args = [str(PYTHON), "-m", "pytest", *argv[1:]]
    else:
        print(__doc__)
        return 2
    os.execv(args[0], args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
