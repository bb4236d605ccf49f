"""Every module that defines reports or report tasks; Celery's autodiscovery imports this one."""

from __future__ import annotations

from reports import chunking, diagnostics, examples  # noqa: F401
