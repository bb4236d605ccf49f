"""The Celery application shared by web (send-only), worker and beat.

Beside the settings, as cookiecutter-django keeps it: every app may import it
(``jobs`` binds its tasks to it and publishes through it) without importing
another app. Configured from Django settings (``CELERY_*``). What only a
worker does at start (refusing pools that cannot enforce limits, announcing
its presence and the job catalog) is wired in ``scheduler.celery``, the
module ``celery -A scheduler`` loads.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

app = Celery("beatplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs", "reports"], related_name="tasks")
