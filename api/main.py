"""The API object: version 1 under ``/api/v1/``, its OpenAPI document at ``/api/v1/openapi.json``.

Every operation needs a bearer token (``api.auth``); errors have one
shape (``api.errors``). The interactive docs are at ``/api/v1/docs``.
"""

from __future__ import annotations

from ninja import NinjaAPI

from api import health, run_now, runs, schedules
from api.auth import BearerToken
from api.errors import StrictJsonParser, install_handlers

api = NinjaAPI(
    title="Scheduled jobs API",
    version="1",
    description=(
        "Run jobs and schedules, follow runs, manage schedules. Authenticate with "
        "`Authorization: Bearer <token>` (tokens are created in the admin). Errors are JSON: "
        "`{message, field, errors: [{field, message}]}`."
    ),
    auth=BearerToken(),
    urls_namespace="api",
    parser=StrictJsonParser(),
)
install_handlers(api)
api.add_router("/", run_now.router)
api.add_router("/", runs.router)
api.add_router("/", schedules.router)
api.add_router("/", health.router)
