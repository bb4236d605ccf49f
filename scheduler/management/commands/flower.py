"""Flower, Celery's live monitor, behind basic auth: ``python manage.py flower``.

Flower shows every task's arguments and offers buttons that revoke and
terminate runs, to anyone who reaches its port; it starts without any login
by default. This command refuses to start unless ``FLOWER_BASIC_AUTH`` holds
at least one ``user:password`` pair, then becomes Flower (``exec``: signals
and the exit code are Flower's own). The password stays in the environment,
which Flower reads itself, so it never shows in the process list.

Workers send task events (``CELERY_WORKER_SEND_TASK_EVENTS``), so its task
list shows our jobs under their stable names (``heartbeat``,
``reports.run_summary``).
"""

from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

DEFAULT_PORT = 5555


def basic_auth_problem(value: str) -> str | None:
    """Why ``value`` is not a usable FLOWER_BASIC_AUTH, or None when it is."""
    if not value.strip():
        return "FLOWER_BASIC_AUTH is not set"
    for pair in value.split(","):
        user, colon, password = pair.partition(":")
        if not colon or not user.strip() or not password:
            return f"FLOWER_BASIC_AUTH entry {user.strip()!r} is not user:password"
    return None


class Command(BaseCommand):
    help = "Run Flower (the Celery monitor) behind basic auth from FLOWER_BASIC_AUTH."

    def add_arguments(self, parser):
        parser.add_argument("--address", default=settings.RUN_HOST, help="Interface to listen on.")
        parser.add_argument("--port", type=int, default=settings.FLOWER_PORT or DEFAULT_PORT)

    def handle(self, *args, address: str, port: int, **options):
        problem = basic_auth_problem(settings.FLOWER_BASIC_AUTH)
        if problem:
            raise CommandError(
                f"{problem}: Flower would let anyone who reaches port {port} read task arguments "
                "and terminate runs. Set FLOWER_BASIC_AUTH=user:password (several: comma-separated)."
            )
        command = [sys.executable, "-m", "celery", "-A", "scheduler", "flower", f"--address={address}"]
        command.append(f"--port={port}")
        sys.stdout.flush()
        os.execv(sys.executable, command)
