"""Every module that defines jobs; Celery's autodiscovery imports this one."""

from __future__ import annotations

from jobs.builtin import diagnostics, heartbeat  # noqa: F401
