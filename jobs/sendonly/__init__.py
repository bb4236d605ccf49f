"""The send-only client: dispatch jobs from another service with only celery/kombu (and redis) installed.

    from jobs.sendonly import Client
    client = Client("redis://broker:6379/0", service="billing-api")
    run_id = client.dispatch("reports.run_summary", kwargs={"window_hours": 24}).run_id

Nothing here imports Django, the models or job code (``tests/test_sendonly_client.py``
proves it in an interpreter where those cannot be imported). Follow a run on
the JSON API: ``GET /api/v1/runs/{run_id}``.

- ``client``: ``Client.dispatch`` and its errors (``DispatchError`` and subclasses);
- ``routing``: the job catalog the workers publish to Redis (the routing table);
- ``messages``: the platform's one task-message format;
- ``arguments``: a job's parameters as JSON and the checks that a call fits them;
- ``names``: the built-in jobs' names.
"""

from __future__ import annotations

from jobs.sendonly import names
from jobs.sendonly.client import (
    ArgumentsDoNotBind,
    Client,
    Dispatched,
    DispatchError,
    InvalidDispatchOption,
    UnknownJob,
    run_id_for,
)
from jobs.sendonly.routing import CATALOG_KEY, JobRoute

__all__ = [
    "CATALOG_KEY",
    "ArgumentsDoNotBind",
    "Client",
    "DispatchError",
    "Dispatched",
    "InvalidDispatchOption",
    "JobRoute",
    "UnknownJob",
    "names",
    "run_id_for",
]
