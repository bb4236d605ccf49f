"""A chunked report: a Celery chord of chunk tasks whose callback merges their parts.

``send_chunks`` sends ``chord(group(run_chunk × N), merge_parts)`` with
``chunks_failed`` as the callback's error callback (Celery's canvas: the
result backend, Redis, counts the parts; there is no barrier of ours).

- **A chunk** (``run_chunk``, a plain Celery task: late ack, its result kept
  for the chord) reads its primary-key range through the report's own
  source and function, writes its rows to ``parts/<run_id>/<index>.jsonl``
  in the reports storage (streamed through a local temporary file; one
  JSON array per row, with datetimes, dates, times, decimals and UUIDs
  tagged so the merge gets back the very values the inline path would
  have), adds its rows to the parent run's progress at most once a second,
  and returns ``{index, rows, part}``. Each chunk has its own soft and hard
  limits (sent with its message). A failure, a soft limit included, is
  retried with exponential backoff up to the report's ``chunk_max_retries``;
  a retry adds to the progress only the rows beyond what earlier attempts
  added. A report with ``max_concurrency=N`` lets N of its chunks read at
  once across all workers (``jobs.concurrency`` places under
  ``<report>#chunks``, apart from its runs' places, which the parent run
  holds until it ends); a chunk over the limit is sent again 1-3 s later
  without holding a worker process and without counting an attempt.
  Past its retries it raises ``ChunkFailed`` ("chunk 3 of 20
  (pk 150001–200000) failed after 3 attempts: …").
- **The merge** (``merge_parts``) streams the parts in chunk order into
  ``reports.outputs.store_and_deliver`` (saying how far it got in the run's
  progress message, at most once a second) and ends the run
  (``end_continued_run``): succeeded with the result, or failed (soft
  timeout past its soft limit) with what went wrong.
- **A chunk that failed for good** (or a merge killed at its hard limit):
  Celery calls ``chunks_failed`` instead of the merge; the run fails with
  the chunk's sentence. Nothing is stored: no partial file is ever passed
  off as the whole report.

- **A run that ended meanwhile** (replaced by a newer slot, recorded lost):
  a chunk that starts after it reads nothing and raises ``ChunkFailed``
  ("… not computed: its run is failed"), so the chord stops at the first
  such chunk and ``chunks_failed`` cleans up, ending nothing; a merge that
  finds its run ended stores and delivers nothing. No file or delivery is
  ever made for a run that is not running.

Either way the parts are deleted and the chunks' results are removed from
the result backend (its keys do not expire) before the run ends; after a
failure, what Celery keeps of the failed chord is removed a few seconds
later (``forget_failed_chord``). A merge
that dies with its worker leaves the parts; ``reports.cleanup`` removes
stray part folders after a day.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import chord
from celery.utils.time import get_exponential_backoff_interval
from django.core.files import File
from django.core.files.storage import Storage
from django.db import close_old_connections

from jobs import concurrency, runs
from jobs.framework import end_continued_run
from jobs.models import RunStatus
from reports.definitions import REPORTS, ReportSpec, Window, call_with
from reports.outputs import CountedRows, meta_for, store_and_deliver
from reports.sources import ChunkPlan, PkRange, rows_in_range
from reports.storage import reports_storage
from settings.celery_app import app

logger = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = 2
RETRY_BACKOFF_MAX_SECONDS = 60
CHUNK_PLACE_WAIT_SECONDS = (1.0, 3.0)  # a chunk over its report's limit is sent again this much later
FORGET_FAILED_CHORD_AFTER = 5  # seconds; Celery stores the chord's failure once its error callback returned


class ChunkFailed(Exception):
    """A chunk that failed on its last attempt; the message is the sentence the run shows."""


# Values JSON has no type for, tagged so a part gives them back as they were.
TAGGED: dict[str, type] = {
    "datetime": datetime,
    "date": date,
    "time": time,
    "decimal": Decimal,
    "uuid": uuid.UUID,
}


def encode_value(value: Any) -> Any:
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {"$t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"$t": "date", "v": value.isoformat()}
    if isinstance(value, time):
        return {"$t": "time", "v": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$t": "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$t": "uuid", "v": str(value)}
    raise TypeError(f"a report cell of type {type(value).__name__} cannot be written to a part: {value!r}")


def decode_object(obj: dict[str, Any]) -> Any:
    kind = obj.get("$t")
    if kind is None or len(obj) != 2 or "v" not in obj:
        return obj
    text = obj["v"]
    cls = TAGGED[kind]
    if cls is Decimal or cls is uuid.UUID:
        return cls(text)
    return cls.fromisoformat(text)  # type: ignore[attr-defined]  # datetime, date, time


def part_folder(run_id: Any) -> str:
    return f"parts/{run_id}"


def write_part(storage: Storage, run_id: Any, index: int, rows: Iterable[Sequence[Any]]) -> str:
    """Write ``rows`` as ``parts/<run_id>/<index>.jsonl``; return the name it was saved under."""
    name = f"{part_folder(run_id)}/{index}.jsonl"
    with tempfile.TemporaryFile(mode="w+b") as local:
        for row in rows:
            local.write(json.dumps(list(row), default=encode_value, ensure_ascii=False).encode())
            local.write(b"\n")
        local.seek(0)
        if storage.exists(name):
            storage.delete(name)  # an earlier attempt's: the storage would save beside it otherwise
        return storage.save(name, File(local))


def read_parts(storage: Storage, names: Iterable[str]) -> Iterator[list[Any]]:
    """The rows of each part in turn, one line at a time."""
    for name in names:
        with storage.open(name, "rb") as part:
            for line in part:
                yield json.loads(line, object_hook=decode_object)


def delete_parts(storage: Storage, run_id: Any) -> None:
    """Delete every part of the run, and its folder where the storage has folders."""
    folder = part_folder(run_id)
    try:
        _dirs, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        storage.delete(f"{folder}/{name}")
    try:
        os.rmdir(storage.path(folder))
    except (NotImplementedError, OSError):
        pass  # an object store has no folders; a filesystem one is left empty at worst


def forget_results(task_ids: Iterable[str]) -> None:
    for task_id in task_ids:
        app.AsyncResult(task_id).forget()


def chunk_task_id(run_id: Any, index: int) -> str:
    return f"{run_id}.chunk.{index}"


def chunks_group_id(run_id: Any) -> str:
    return f"{run_id}.chunks"


def merge_task_id(run_id: Any) -> str:
    return f"{run_id}.merge"


def json_key(value: Any) -> Any:
    """A primary key as JSON (an integer stays one; a UUID or other becomes its text)."""
    return value if value is None or isinstance(value, int | str) else str(value)


def send_chunks(
    spec: ReportSpec,
    run_id: Any,
    window: Window | None,
    values: dict[str, Any],
    plan: ChunkPlan,
    *,
    shown_parameters: dict[str, Any],
) -> None:
    """Send the chord of the run's chunks; its callback or error callback ends the run.

    ``values`` are the report's parameters (each chunk calls its source and
    function with them); ``shown_parameters`` what its files show (the window's too).
    """
    count = len(plan.ranges)
    window_json = window.to_json() if window else None
    headers = []
    described = []
    for index, pk_range in enumerate(plan.ranges):
        task_id = chunk_task_id(run_id, index)
        headers.append(
            run_chunk.signature(
                kwargs={
                    "report": spec.name,
                    "run_id": str(run_id),
                    "index": index,
                    "count": count,
                    "low": json_key(pk_range.low),
                    "high": json_key(pk_range.high),
                    "window": window_json,
                    "parameters": values,
                    "total": plan.total_rows,
                },
                task_id=task_id,
                queue=spec.queue,
                soft_time_limit=spec.chunk_soft_time_limit,
                time_limit=spec.chunk_hard_time_limit,
            )
        )
        described.append([index, task_id, chunk_name(index, count, pk_range)])
    callback = merge_parts.signature(
        kwargs={
            "report": spec.name,
            "run_id": str(run_id),
            "window": window_json,
            "parameters": shown_parameters,
            "chunk_ids": [task_id for _i, task_id, _d in described],
        },
        queue=spec.queue,
        soft_time_limit=spec.merge_soft_time_limit,
        time_limit=spec.merge_hard_time_limit,
    )
    errback = chunks_failed.signature(
        kwargs={"report": spec.name, "run_id": str(run_id), "chunks": described}
    )
    # The chord's own task_id names its header group; apply_async's names the callback.
    chord(headers, callback.on_error(errback), task_id=chunks_group_id(run_id)).apply_async(
        task_id=merge_task_id(run_id)
    )


def chunk_name(index: int, count: int, pk_range: PkRange) -> str:
    return f"chunk {index + 1} of {count} ({pk_range.describe()})"


# max_retries=None: Celery's own count would include waits for a place; attempts are counted here.
@app.task(
    name="reports.chunk",
    bind=True,
    ignore_result=False,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def run_chunk(
    self: Any,
    *,
    report: str,
    run_id: str,
    index: int,
    count: int,
    low: Any,
    high: Any,
    window: list[str] | None,
    parameters: dict[str, Any],
    total: int,
    counted: int = 0,
    waits: int = 0,
) -> dict[str, Any]:
    """Write one chunk's part; retried on any failure, its soft limit included (see the module)."""
    spec = REPORTS[report]
    pk_range = PkRange(low, high)
    reported = counted  # rows of this chunk already in the run's progress (earlier attempts)
    if (status := runs.current_status(run_id)) != RunStatus.RUNNING:
        raise ChunkFailed(f"{chunk_name(index, count, pk_range)} not computed: its run is {status}")
    if spec.max_concurrency is not None and not take_chunk_place(self, spec, waits):
        raise self.retry(
            countdown=random.uniform(*CHUNK_PLACE_WAIT_SECONDS),  # noqa: S311 (jitter, not secrets)
            kwargs={**self.request.kwargs, "waits": waits + 1},
        )

    def add_progress(done: int, _finished: bool) -> None:
        nonlocal reported
        if done > reported:
            runs.add_progress(run_id, delta=done - reported, total=total)
            reported = done

    try:
        the_window = Window.from_json(window)
        assert spec.source is not None and spec.body is not None  # only sources are chunked
        queryset = call_with(spec.source, the_window, parameters)
        rows = call_with(spec.body, the_window, parameters, rows_in_range(queryset, pk_range))
        counted_rows = CountedRows(rows, add_progress)
        part = write_part(reports_storage(), run_id, index, counted_rows)
    except Exception as exc:
        attempts = self.request.retries + 1 - waits  # waiting for a place is no attempt
        if attempts > spec.chunk_max_retries:
            raise ChunkFailed(
                f"{chunk_name(index, count, pk_range)} failed after {attempts} "
                f"attempt{'s' if attempts > 1 else ''}: {type(exc).__name__}: {exc}"
            ) from exc
        countdown = get_exponential_backoff_interval(
            factor=RETRY_BACKOFF_SECONDS,
            retries=attempts - 1,
            maximum=RETRY_BACKOFF_MAX_SECONDS,
            full_jitter=True,
        )
        logger.warning(
            "report %s run %s: %s failed (%r); retrying in %s s",
            report,
            run_id,
            chunk_name(index, count, pk_range),
            exc,
            countdown,
        )
        raise self.retry(
            exc=exc,
            countdown=countdown,
            kwargs={**self.request.kwargs, "counted": max(counted, reported)},
        ) from exc
    finally:
        if spec.max_concurrency is not None:
            concurrency.release(chunk_place_holder(self))
    return {"index": index, "rows": counted_rows.done, "part": part}


def chunk_places_key(report: str) -> str:
    return f"{report}#chunks"


def chunk_place_holder(task: Any) -> str:
    return str(task.request.id)


def take_chunk_place(task: Any, spec: ReportSpec, waits: int) -> bool:
    """One of the report's chunk places (``max_concurrency``), held until the chunk ends."""
    assert spec.max_concurrency is not None
    admission = concurrency.acquire(
        chunk_places_key(spec.name),
        chunk_place_holder(task),
        spec.max_concurrency,
        task.request.hostname or "",
    )
    if not admission and waits % 10 == 0:
        logger.info("report %s: a chunk waits for a place (%s held)", spec.name, admission.held)
    return bool(admission)


@app.task(name="reports.merge", acks_late=True)
def merge_parts(
    results: list[dict[str, Any]],
    *,
    report: str,
    run_id: str,
    window: list[str] | None,
    parameters: dict[str, Any],
    chunk_ids: list[str],
) -> None:
    """The chord's callback: the parts in order into the report's files; ends the run."""
    spec = REPORTS[report]
    storage = reports_storage()
    if (current := runs.current_status(run_id)) != RunStatus.RUNNING:
        logger.warning("report %s run %s: its run is %s; its parts are not merged", report, run_id, current)
        delete_parts(storage, run_id)
        forget_results(chunk_ids)
        return
    parts = sorted(results, key=lambda r: r["index"])
    the_window = Window.from_json(window)
    status = RunStatus.SUCCEEDED
    failure: BaseException | None = None
    result: dict[str, Any] | None = None
    try:
        assert spec.columns is not None
        total = sum(p["rows"] for p in parts)
        rows = CountedRows(read_parts(storage, [p["part"] for p in parts]), merge_progress(run_id, total))
        result = store_and_deliver(
            spec, run_id, columns=spec.columns, rows=rows, meta=meta_for(spec, the_window, parameters)
        )
        result["chunks"] = len(parts)
    except Exception as exc:
        failure = exc
        status = RunStatus.SOFT_TIMEOUT if isinstance(exc, SoftTimeLimitExceeded) else RunStatus.FAILED
    finally:
        delete_parts(storage, run_id)
        forget_results(chunk_ids)
    if failure is None:
        end_continued_run(run_id, status, result=result)
    else:
        end_continued_run(run_id, status, error=runs.RunError.from_exception(failure), exc=failure)


def merge_progress(run_id: str, total: int) -> Callable[[int, bool], Any]:
    """The merge's progress: the counts stay the chunks'; the message says how far the files are."""

    def write(done: int, finished: bool) -> None:
        if not finished:
            runs.add_progress(run_id, delta=0, message=f"writing the report: {done:,} of {total:,} rows")

    return write


@app.task(name="reports.chunks_failed")
def chunks_failed(
    request: Any, exc: BaseException, traceback: Any, *, report: str, run_id: str, chunks: list[list[Any]]
) -> None:
    """Error callback of the merge: a chunk failed for good (or the merge was killed). Fails the run.

    Celery calls it in the process that recorded the failure (a worker's
    child, or its main process for a hard limit) with the ``ChordError``
    naming the failed chunk's task. Nothing is stored; the parts are deleted.
    """
    close_old_connections()  # in the worker's main process (a hard limit) it may have sat idle
    message = f"report {report}: {exc}"
    text = str(exc)
    for _index, task_id, name in chunks:
        if task_id in text:
            cause = app.AsyncResult(task_id).result
            if isinstance(cause, ChunkFailed):
                message = str(cause)
            elif isinstance(cause, BaseException):
                message = f"{name} failed: {type(cause).__name__}: {cause}"
            else:
                message = f"{name} failed: {text}"
            break
    else:
        if chunks and not text.startswith("Dependency"):
            message = f"merging the {len(chunks)} parts failed: {type(exc).__name__}: {exc}"
    try:
        delete_parts(reports_storage(), run_id)
    finally:
        forget_results(task_id for _i, task_id, _n in chunks)
        # Celery records the chord's failure after this returns; forget it a little later.
        forget_failed_chord.apply_async(
            kwargs={"run_id": run_id, "chunk_ids": [task_id for _i, task_id, _n in chunks]},
            countdown=FORGET_FAILED_CHORD_AFTER,
            queue=REPORTS[report].queue,
        )
        logger.error("report %s run %s: %s", report, run_id, message)
        end_continued_run(
            run_id,
            RunStatus.FAILED,
            error=runs.RunError(type=f"{__name__}.ChunkFailed", message=message, traceback=""),
        )


@app.task(name="reports.forget_failed_chord")
def forget_failed_chord(*, run_id: str, chunk_ids: list[str]) -> None:
    """Remove what the result backend keeps of a failed chord (its keys never expire).

    The callback's failure record, the chunks' results (again: a chunk
    killed at its hard limit has its failure stored by the worker's main
    process after the error callback ran), and on Redis the join keys
    Celery leaves when a part failed (``<group>.j``, ``.d``, ``.t``, ``.s``).
    """
    forget_results([merge_task_id(run_id), *chunk_ids])
    backend = app.backend
    client = getattr(backend, "client", None)
    if client is not None and hasattr(backend, "get_key_for_group"):
        group_id = chunks_group_id(run_id)
        client.delete(*(backend.get_key_for_group(group_id, suffix) for suffix in (".j", ".d", ".t", ".s")))
