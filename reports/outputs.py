"""The end of every report run: rows counted with throttled progress, stored, delivered.

``store_and_deliver`` is the one ending of the inline path and of a chunked
report's merge:

- the rows go to ``reports.storage.store_report`` (one pass, all or nothing);
- for a run of a schedule, the files go to ``reports.delivery.deliver_report``;
  if any destination still fails after its attempts, ``ReportDeliveryFailed``
  ("report stored (N files); delivery failed: …") so the run fails and
  alerting pages. The files stay (they were stored; a person can fetch them);
- the result recorded on the run: rows, and each file's format, name and size.

``CountedRows`` counts rows as the renderings pull them and reports progress
through a callback at most once a second (``PROGRESS_INTERVAL``), plus once
at the end, so a long report moves its bar without a write per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django.utils import timezone

from jobs.models import JobRun
from reports.definitions import ReportSpec, Window
from reports.delivery import deliver_report
from reports.storage import ReportMeta, store_report

PROGRESS_INTERVAL = 1.0  # seconds between two progress writes of one counter


class ReportDeliveryFailed(RuntimeError):
    """The report was stored but a destination did not take it."""


class CountedRows:
    """Iterate ``rows``; call ``report(done, finished)`` at most every second, and once at the end."""

    def __init__(self, rows: Iterable[Sequence[Any]], report: Callable[[int, bool], Any]) -> None:
        self._rows = rows
        self._report = report
        self.done = 0

    def __iter__(self) -> Iterator[Sequence[Any]]:
        last_write = time.monotonic()
        for row in self._rows:
            self.done += 1
            yield row
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL:
                self._report(self.done, False)
                last_write = now
        self._report(self.done, True)


def meta_for(spec: ReportSpec, window: Window | None, parameters: dict[str, Any]) -> ReportMeta:
    return ReportMeta(
        title=spec.title,
        parameters=parameters,
        window_start=window.start if window else None,
        window_end=window.end if window else None,
        generated_at=timezone.now(),
    )


def store_and_deliver(
    spec: ReportSpec,
    run_id: Any,
    *,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    meta: ReportMeta,
) -> dict[str, Any]:
    """Store the report's files and deliver them; the result to record on the run (see the module)."""
    counted = rows if isinstance(rows, CountedRows) else None
    files = store_report(
        run_id=run_id, report=spec.name, columns=columns, rows=rows, formats=spec.formats, meta=meta
    )
    result: dict[str, Any] = {
        "rows": files[0].rows if files else (counted.done if counted else 0),
        "files": [{"format": f.format, "name": f.storage_name, "bytes": f.size_bytes} for f in files],
    }
    if JobRun.objects.filter(pk=run_id, schedule__isnull=False).exists():
        errors = deliver_report(run_id, files)
        if errors:
            raise ReportDeliveryFailed(
                f"report stored ({len(files)} file{'s' if len(files) != 1 else ''}); "
                f"delivery failed: {'; '.join(errors)}"
            )
    return result
