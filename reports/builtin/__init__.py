"""The reports that ship with the platform, each a module: its rows as a plain function, then its ``@report``.

- ``run_summary``: per job and per schedule over a window, the SLA figures;
- ``schedule_audit``: schedules that never ran, pauses past their end, crons that
  fire less than once a year, jobs no live worker serves, limits missing or invalid;
- ``alert_digest``: incidents opened and resolved in a window, time to resolve.

Importing this package registers them (``reports.tasks`` imports it).
"""

from __future__ import annotations

from reports.builtin import alert_digest, run_summary, schedule_audit  # noqa: F401
