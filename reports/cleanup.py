"""Retention: expired report files and the parts crashed chunked reports left behind are deleted.

``delete_expired_reports`` deletes, oldest first and at most ``limit`` per
call, every ``ReportFile`` whose ``expires_at`` has passed: the file from the
reports storage first, then the row, so a failure in between leaves a row
the next call deletes again, never a file nobody knows of. A file already
gone from the storage is fine; one the storage refuses to delete keeps its
row without stopping the others, and the call then raises
``FilesNotDeleted`` (the cleanup run fails, so alerting tells someone).

It also deletes the stray part directories (``parts/<run_id>/``) whose
newest file is more than a day old: a chunked report's merge deletes its
parts, so only a crashed one leaves them, and no report runs for a day
(hard limits stay within the broker's redelivery timeout).

The job ``reports.cleanup`` (queue ``reports``) runs both until nothing
expired is left; it is safe to run twice at once (deleting a deleted file or
row does nothing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from django.core.files.storage import Storage
from django.utils import timezone

from jobs.framework import job
from reports.models import ReportFile
from reports.storage import reports_storage

logger = logging.getLogger(__name__)

CLEANUP_JOB = "reports.cleanup"
PARTS_DIRECTORY = "parts"
STRAY_PARTS_AFTER = timedelta(days=1)


class FilesNotDeleted(Exception):
    """Some report files could not be deleted from the storage; their rows were kept."""


def delete_report_files(files: Iterable[ReportFile]) -> int:
    """Delete each file from the reports storage, then the rows of those deleted; how many rows.

    A file the storage no longer has counts as deleted. A file the storage
    refuses keeps its row (the cleanup tries it again next time) without
    stopping the others; then ``FilesNotDeleted`` is raised once the others'
    rows are gone, so the run fails and an operator hears of it.
    """
    files = list(files)
    if not files:
        return 0
    storage = reports_storage()
    done: list[int] = []
    errors: list[str] = []
    for report_file in files:
        try:
            storage.delete(report_file.storage_name)  # FileSystemStorage and S3 ignore a missing name
        except Exception as exc:
            logger.warning("report file %s could not be deleted: %s", report_file.storage_name, exc)
            errors.append(f"{report_file.storage_name}: {exc}")
        else:
            done.append(report_file.pk)
    deleted, _ = ReportFile.objects.filter(pk__in=done).delete()
    if errors:
        raise FilesNotDeleted(
            f"{len(errors)} of {len(files)} report files could not be deleted from the reports storage "
            f"(their rows are kept; {deleted} deleted); first: {errors[0]}"
        )
    return deleted


def delete_expired_files(now: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` files expired at ``now``, oldest first (the ``report_file_expiry`` index)."""
    expired = ReportFile.objects.filter(expires_at__lte=now).order_by("expires_at")[:limit]
    return delete_report_files(expired)


def delete_stray_parts(now: datetime, older_than: timedelta = STRAY_PARTS_AFTER) -> int:
    """Delete ``parts/<run_id>/`` directories whose newest file is older than ``older_than``; how many."""
    storage = reports_storage()
    try:
        run_dirs, _ = storage.listdir(PARTS_DIRECTORY)
    except FileNotFoundError:
        return 0  # no chunked report ever ran here
    removed = 0
    for run_dir in run_dirs:
        prefix = f"{PARTS_DIRECTORY}/{run_dir}"
        _, names = storage.listdir(prefix)
        newest = max((storage.get_modified_time(f"{prefix}/{n}") for n in names), default=None)
        if newest is None:
            newest = directory_time(storage, prefix)
        if newest is not None and newest > now - older_than:
            continue
        for name in names:
            storage.delete(f"{prefix}/{name}")
        remove_empty_directory(storage, prefix)
        removed += 1
        logger.info("deleted %d stray report parts in %s (newest from %s)", len(names), prefix, newest)
    return removed


def directory_time(storage: Storage, name: str) -> datetime | None:
    """An empty directory's own modification time, on a filesystem storage (object stores have none)."""
    try:
        path = storage.path(name)
    except NotImplementedError:
        return None
    return datetime.fromtimestamp(os.stat(path).st_mtime, tz=UTC)


def remove_empty_directory(storage: Storage, name: str) -> None:
    """A filesystem storage keeps a directory once its files are deleted; an object store has none."""
    try:
        os.rmdir(storage.path(name))
    except (NotImplementedError, OSError):
        pass


def delete_expired_reports(now: datetime | None = None, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired report files (storage, then rows) and the stray parts; files deleted."""
    now = now or timezone.now()
    deleted = delete_expired_files(now, limit)
    delete_stray_parts(now)
    return deleted


@job(CLEANUP_JOB, queue="reports", soft_time_limit=540, hard_time_limit=600)
def cleanup(batch_size: int = 1000) -> dict:
    """Delete every report file past its retention (and its row), and stray parts of crashed reports.

    Files go in batches of ``batch_size`` until none expired is left.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
    now = timezone.now()
    files = 0
    while True:
        deleted = delete_expired_files(now, batch_size)
        files += deleted
        if deleted < batch_size:
            break
    return {"files_deleted": files, "part_directories_deleted": delete_stray_parts(now)}
