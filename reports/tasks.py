"""Every module that defines reports or report tasks; Celery's autodiscovery imports this one."""

from __future__ import annotations

from reports import chunking, cleanup, diagnostics, examples  # noqa: F401
from reports.builtin import alert_digest, run_summary, schedule_audit  # noqa: F401
