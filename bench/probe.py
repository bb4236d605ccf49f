"""The Celery app of the lateness test's worker: the platform's app plus one probe task.

``bench.probe`` records when it started, and the scheduled time when the
message carries one (our engine's ``scheduled_for`` header; DatabaseScheduler's
messages carry none), in a Redis list of the bench's Redis database.

    celery -A bench.probe worker -Q bench_lateness ...
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery import signals  # noqa: E402
from common import LATENESS_LIST, redis_client  # noqa: E402

from scheduler.celery import app  # noqa: E402

READY_KEY = "bench:lateness:ready"
_client = None


def client():
    global _client
    if _client is None:
        _client = redis_client()
    return _client


@app.task(name="bench.probe", bind=True, ignore_result=True)
def probe(self, *args, **kwargs) -> None:
    started = time.time()
    request = self.request
    headers = getattr(request, "headers", None) or {}
    record = {
        "start": started,
        "scheduled_for": getattr(request, "scheduled_for", None) or headers.get("scheduled_for"),
        "name": getattr(request, "periodic_task_name", None) or headers.get("periodic_task_name"),
        "schedule": getattr(request, "schedule", None) or headers.get("schedule"),
        "pid": __import__("os").getpid(),
    }
    client().rpush(LATENESS_LIST, json.dumps(record))


@signals.worker_ready.connect
def _ready(sender=None, **_kwargs) -> None:
    client().set(READY_KEY, str(time.time()))
