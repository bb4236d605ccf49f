"""Settings as a fresh process computes them from a given environment.

Settings are read from the environment once, at import; a test that wants to
see what ``SECURE_SSL_REDIRECT=0`` or ``REVERSE_PROXY_COUNT=1`` does imports
them in a child process with that environment, the way web starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Variables of the developer's or CI's shell that would change what the settings decide.
CLEARED = (
    "DEBUG",
    "ALLOWED_HOSTS",
    "HTTPS",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_PROXY_SSL_HEADER",
    "REVERSE_PROXY_COUNT",
    "LOGIN_FAILURE_LIMIT",
    "LOGIN_LOCKOUT_MINUTES",
    "SENTRY_DSN",
    # Set by the browser tests' session fixture; check --deploy refuses it (async.E001).
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**base, "DJANGO_SETTINGS_MODULE": "settings", **env}


def settings_from_env(env: dict[str, str], names: list[str]) -> dict:
    """The named settings, JSON-decoded (tuples become lists, timedeltas strings)."""
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}, default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=child_env(env), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
