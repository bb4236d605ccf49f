"""Storing a report: every rendering in one pass over its rows, saved to the reports storage.

``store_report`` is the one way a report's files are made. It guarantees:

- **One pass, bounded memory.** ``rows`` is read once (it may be a
  generator over millions of rows); each row goes to one rendering per
  format (``reports.renderings``), each writing a file in a local temporary
  directory, deleted afterwards whatever happens. Nothing holds the report.
- **Limits before storage.** More than ``REPORT_MAX_ROWS`` rows (5,000,000
  by default), or more than XLSX takes, raises ``ReportTooLarge`` as the
  first row over the limit arrives; a row whose length is not the number
  of columns raises ``ValueError`` (a dict or a string instead of a list:
  ``TypeError``). Either way nothing is saved.
- **All or nothing.** The files are saved (a chunked copy from the local
  file, ``Storage.save``) under ``<report>/<YYYY>/<MM>/<run_id>.<ext>``, then
  their ``ReportFile`` rows are inserted in one transaction. If a save or
  the insert fails, the files already saved are deleted: no partial report
  is ever recorded. (A caller's own transaction that rolls back later
  leaves the files without rows; ``reports.cleanup`` never sees those.)
- **One rendering per run and format.** Storing a run's report again (a
  redelivered merge) replaces the earlier rows of those formats; their files
  are deleted once the new rows are committed.

The reports storage is Django's ``STORAGES["reports"]``, configured in
settings only (a directory under ``VAR_DIR`` by default, S3-compatible by
``REPORTS_STORAGE_BACKEND``).
"""

from __future__ import annotations

import logging
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.http import FileResponse, Http404
from django.utils import timezone

from reports.models import ReportFile
from reports.renderings import Rendering, ReportMeta, ReportTooLarge, json_value, rendering_class

__all__ = [
    "ReportMeta",
    "ReportTooLarge",
    "file_response",
    "reports_storage",
    "store_report",
]

logger = logging.getLogger(__name__)

STORAGE_ALIAS = "reports"


def reports_storage() -> Storage:
    """The storage reports are kept in: ``STORAGES["reports"]`` (settings)."""
    return storages[STORAGE_ALIAS]


def retention() -> timedelta:
    return timedelta(days=settings.REPORT_RETENTION_DAYS)


UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")
NAME_MAX_LENGTH = ReportFile._meta.get_field("storage_name").max_length


def storage_name(report: str, run_id: Any, extension: str, at: datetime) -> str:
    """``<report>/<YYYY>/<MM>/<run_id>.<ext>``; the report's name reduced to characters safe in a path."""
    folder = UNSAFE_IN_NAME.sub("_", report).strip(".") or "report"
    return f"{folder}/{at:%Y}/{at:%m}/{run_id}.{extension}"


def store_report(
    *,
    run_id: Any,
    report: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    formats: Sequence[str],
    meta: ReportMeta,
) -> list[ReportFile]:
    """Render ``rows`` in every format, save the files, record them; return the new ``ReportFile`` rows.

    ``formats``: some of ``csv``, ``json``, ``html``, ``xlsx`` (repeats are
    ignored; an unknown or empty list raises ``ValueError`` before any row is
    read). ``run_id`` may be ``None`` for a report made outside a run: its
    files are named by a fresh UUID. See the module for the guarantees.
    """
    classes = [rendering_class(f) for f in dict.fromkeys(formats)]
    if not classes:
        raise ValueError(f"report {report}: no format asked for")
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        renderings = render(Path(tmp), classes, report=report, columns=columns, rows=rows, meta=meta)
        return save(renderings, run_id=run_id, report=report, meta=meta)


def render(
    directory: Path,
    classes: Sequence[type[Rendering]],
    *,
    report: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    meta: ReportMeta,
) -> list[tuple[Rendering, int]]:
    """Write every rendering in one pass over ``rows``; each finished one with its row count."""
    limit = settings.REPORT_MAX_ROWS
    width = len(columns)
    renderings: list[Rendering] = []
    try:
        for cls in classes:
            path = directory / f"report.{cls.extension}"
            renderings.append(cls(path, report=report, columns=columns, meta=meta))
        count = 0
        for row in rows:
            count += 1
            if count > limit:
                raise ReportTooLarge(
                    f"report {report}: more than {limit:,} rows; narrow the window or raise REPORT_MAX_ROWS",
                    report=report,
                    format=None,
                    limit=limit,
                )
            if count == 1 and isinstance(row, (str, bytes, Mapping)):
                # Its length may even match: it would be written as characters or keys, silently.
                raise TypeError(
                    f"report {report}: a row is a {type(row).__name__}; rows are lists or tuples "
                    f"of values in the order of the columns"
                )
            if len(row) != width:
                raise ValueError(f"report {report}: row {count:,} has {len(row)} values for {width} columns")
            for rendering in renderings:
                rendering.write(row)
        return [(rendering, rendering.finish()) for rendering in renderings]
    except BaseException:
        for rendering in renderings:
            rendering.close()
        raise


def save(
    renderings: Sequence[tuple[Rendering, int]], *, run_id: Any, report: str, meta: ReportMeta
) -> list[ReportFile]:
    """Save each finished rendering, then insert their rows in one transaction; undo the saves on failure."""
    storage = reports_storage()
    now = timezone.now()
    file_id = run_id if run_id is not None else uuid.uuid4()
    parameters = json_value(meta.parameters)
    saved: list[str] = []
    files: list[ReportFile] = []
    try:
        for rendering, rows in renderings:
            with rendering.path.open("rb") as local:
                # File.chunks() feeds the storage 64 KiB at a time (S3: a multipart upload).
                name = storage.save(
                    storage_name(report, file_id, rendering.extension, now),
                    File(local),
                    max_length=NAME_MAX_LENGTH,
                )
            saved.append(name)
            files.append(
                ReportFile(
                    run_id=run_id,
                    report=report,
                    format=rendering.format,
                    storage_name=name,
                    size_bytes=rendering.path.stat().st_size,
                    rows=rows,
                    parameters=parameters,
                    window_start=meta.window_start,
                    window_end=meta.window_end,
                    expires_at=now + retention(),
                )
            )
        with transaction.atomic():
            replaced = replace_earlier(run_id, report, [f.format for f in files])
            created = ReportFile.objects.bulk_create(files)
            # An S3 storage may overwrite a name in place: never delete what was just saved.
            stale = [name for name in replaced if name not in saved]
            transaction.on_commit(lambda: delete_quietly(storage, stale))
    except BaseException:
        delete_quietly(storage, saved)
        raise
    return created


def replace_earlier(run_id: Any, report: str, formats: Sequence[str]) -> list[str]:
    """Delete the rows of an earlier store of this run's formats; their storage names."""
    if run_id is None:
        return []
    earlier = ReportFile.objects.filter(run_id=run_id, report=report, format__in=formats)
    names = list(earlier.values_list("storage_name", flat=True))
    earlier.delete()
    return names


def delete_quietly(storage: Storage, names: Iterable[str]) -> None:
    """Delete ``names`` from ``storage``; a failure is logged, never raised (cleanup would retry it)."""
    for name in names:
        try:
            storage.delete(name)
        except Exception:
            logger.exception("report file %s could not be deleted from the reports storage", name)


def download_name(report_file: ReportFile) -> str:
    """``<report>-<YYYYmmdd-HHMM>.<ext>``: what a browser saves the file as."""
    folder = UNSAFE_IN_NAME.sub("_", report_file.report).strip(".") or "report"
    return f"{folder}-{report_file.created_at:%Y%m%d-%H%M}.{rendering_class(report_file.format).extension}"


def file_response(report_file: ReportFile) -> FileResponse:
    """The file streamed from the reports storage as an attachment, with its format's content type.

    ``Http404`` when the file is no longer in the storage (expired and
    cleaned up, or deleted by hand).
    """
    storage = reports_storage()
    if not storage.exists(report_file.storage_name):
        raise Http404(f"{report_file}: the file is no longer in the reports storage")
    return FileResponse(
        storage.open(report_file.storage_name, "rb"),
        as_attachment=True,
        filename=download_name(report_file),
        content_type=rendering_class(report_file.format).content_type,
    )
