"""The code passes the linters the project pins (ruff: pyflakes, bugbear, bandit, Django rules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [
    "scheduler",
    "jobs",
    "alerts",
    "reports",
    "api",
    "lib",
    "settings",
    "tests",
    "bench",
    "run.py",
    "manage.py",
]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *CHECKED], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_finds_no_problems():
    result = ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted():
    result = ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
