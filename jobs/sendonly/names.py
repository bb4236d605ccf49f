"""The built-in jobs' names, in one place: the ``@job`` decorators and callers both use these.

A name is what schedules, runs and messages store: renaming a constant's
Python identifier is free, changing its value orphans every schedule of the
job. Jobs defined outside ``jobs/builtin/`` are called by their own names;
the catalog the workers publish (``jobs.sendonly.routing``) is the list of
every job a worker serves.
"""

from __future__ import annotations

from typing import Final

DIAGNOSTICS_SLEEP: Final = "diagnostics.sleep"
DIAGNOSTICS_FAIL: Final = "diagnostics.fail"
DIAGNOSTICS_FAIL_WITH_RETRIES: Final = "diagnostics.fail_with_retries"
DIAGNOSTICS_COUNT: Final = "diagnostics.count"
DIAGNOSTICS_TWO_AT_A_TIME: Final = "diagnostics.two_at_a_time"
HEARTBEAT: Final = "heartbeat"
REPORTS_RUN_SUMMARY: Final = "reports.run_summary"

BUILTIN_JOBS: Final = (
    DIAGNOSTICS_SLEEP,
    DIAGNOSTICS_FAIL,
    DIAGNOSTICS_FAIL_WITH_RETRIES,
    DIAGNOSTICS_COUNT,
    DIAGNOSTICS_TWO_AT_A_TIME,
    HEARTBEAT,
    REPORTS_RUN_SUMMARY,
)
