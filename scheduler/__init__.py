"""When things run: the Celery app, the beat engine, schedule policies and admin."""

from __future__ import annotations

from scheduler.celery import app as celery_app

__all__ = ["celery_app"]
