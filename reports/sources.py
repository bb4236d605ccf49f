"""Where a report's rows come from: querysets split into primary-key ranges, and read-only SQL.

Queryset sources (``plan_chunks``, ``rows_in_range``):

- A queryset is split into ranges of at most ``chunk_size`` rows by keyset
  stepping over the primary key: each boundary is the pk of the
  ``chunk_size``-th row after the previous boundary (``pk > last ORDER BY pk``
  with one ``LIMIT 1 OFFSET chunk_size - 1``, which reads pks only). Rows are
  never *read* with OFFSET: a chunk reads ``last < pk <= boundary``.
- The last range is open-ended (``pk > last``), so every row the queryset
  matches at planning time is in exactly one range.
- ``None`` from ``plan_chunks``: the queryset fits in one chunk; run it inline.

SQL sources (``check_select_only``, ``read_only_rows``):

- At decoration, the text must be exactly one ``SELECT`` (or ``WITH … SELECT``)
  statement, and name only placeholders the report provides.
- At run time it runs on a connection of its own (not the one the run's
  bookkeeping and the report's files use) inside a transaction set
  ``READ ONLY`` (PostgreSQL; ``PRAGMA query_only`` on SQLite): a CTE that
  inserts or a function that writes is refused by the database itself,
  raised as ``QueryRefused`` with the database's first line (``cannot
  execute INSERT in a read-only transaction``).
- Rows are streamed through a server-side cursor (``chunked_cursor``), a
  batch at a time, never fetched whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlparse
from django.db import DatabaseError, connections
from django.db.models import QuerySet

FETCH_BATCH = 2000
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class PkRange:
    """Rows with ``low < pk <= high``; ``None`` leaves that side open."""

    low: Any
    high: Any

    def describe(self) -> str:
        """``pk 150001–200000`` for integer keys; ``pk > a and ≤ b`` otherwise."""
        low, high = self.low, self.high
        if low is None and high is None:
            return "all rows"
        if low is None:
            return f"pk ≤ {high}"
        if high is None:
            return f"pk > {low}"
        if isinstance(low, int) and isinstance(high, int):
            return f"pk {low + 1}–{high}"
        return f"pk > {low} and ≤ {high}"


@dataclass(frozen=True)
class ChunkPlan:
    ranges: list[PkRange]
    total_rows: int


def plan_chunks(
    queryset: QuerySet, chunk_size: int, on_boundary: Callable[[int], Any] | None = None
) -> ChunkPlan | None:
    """Split ``queryset`` into pk ranges of at most ``chunk_size`` rows; ``None`` if it fits in one.

    ``total_rows`` is exact at planning time: ``chunk_size`` per closed
    range plus one bounded COUNT of the open last one. ``on_boundary(n)``
    is called after each boundary found (planning a million rows takes
    seconds: the caller may say so).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be 1 or more, got {chunk_size}")
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    boundaries: list[Any] = []
    while True:
        after = keys.filter(pk__gt=boundaries[-1]) if boundaries else keys
        boundary = after[chunk_size - 1 : chunk_size].first()
        if boundary is None:
            break
        boundaries.append(boundary)
        if on_boundary is not None:
            on_boundary(len(boundaries))
    if not boundaries:
        return None
    rest = keys.filter(pk__gt=boundaries[-1]).count()
    if rest == 0:
        # The last closed range ends the queryset: open it instead of adding an empty one.
        boundaries.pop()
    if not boundaries:
        return None  # exactly chunk_size rows: one chunk
    lows = [None, *boundaries]
    highs = [*boundaries, None]
    ranges = [PkRange(low, high) for low, high in zip(lows, highs, strict=True)]
    return ChunkPlan(ranges=ranges, total_rows=chunk_size * len(boundaries) + (rest or chunk_size))


def rows_in_range(queryset: QuerySet, pk_range: PkRange) -> QuerySet:
    """The queryset's rows in ``pk_range``, in primary-key order."""
    if pk_range.low is not None:
        queryset = queryset.filter(pk__gt=pk_range.low)
    if pk_range.high is not None:
        queryset = queryset.filter(pk__lte=pk_range.high)
    return queryset.order_by("pk")


class NotASelect(ValueError):
    """SQL given to a SQL report that is not one SELECT statement."""


def check_select_only(report: str, sql: str, provided: set[str]) -> None:
    """Refuse anything but a single ``SELECT`` / ``WITH … SELECT``, or a placeholder nobody fills.

    A data-modifying CTE (``WITH x AS (INSERT … RETURNING …) SELECT …``) or a
    function that writes passes this check; the read-only transaction
    refuses it at run time.
    """
    statements = [s for s in sqlparse.parse(sql) if s.token_first(skip_cm=True, skip_ws=True) is not None]
    if len(statements) != 1:
        raise NotASelect(f"report {report}: the SQL must be exactly one statement, found {len(statements)}")
    kind = statements[0].get_type()
    if kind != "SELECT":
        raise NotASelect(f"report {report}: the SQL must be a SELECT (or WITH … SELECT), not {kind}")
    unknown = sorted(set(PLACEHOLDER.findall(sql)) - provided)
    if unknown:
        raise NotASelect(
            f"report {report}: the SQL names {', '.join(unknown)}, which the report does not provide "
            f"(it provides: {', '.join(sorted(provided))})"
        )


class QueryRefused(RuntimeError):
    """The database refused a SQL report's query (a write in a read-only transaction, bad SQL)."""


def refused(database: str, exc: DatabaseError) -> QueryRefused:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return QueryRefused(
        f"the database {database!r} refused the report's query (it runs read-only): {first_line}"
    )


class ReadOnlyRows:
    """The columns and the streamed rows of one read-only query (see ``read_only_rows``)."""

    def __init__(self, database: str, columns: list[str], cursor: Any) -> None:
        self.columns = columns
        self._database = database
        self._cursor = cursor

    def __iter__(self) -> Iterator[tuple]:
        while True:
            try:
                batch = self._cursor.fetchmany(FETCH_BATCH)
            except DatabaseError as exc:
                raise refused(self._database, exc) from exc
            if not batch:
                return
            yield from batch


@contextmanager
def read_only_rows(database: str, sql: str, params: Mapping[str, Any]) -> Iterator[ReadOnlyRows]:
    """Run ``sql`` read-only on a connection of its own to ``database``; stream its rows.

    The connection is closed (its transaction rolled back) when the block
    ends, whatever happens. A write is refused by the database
    (``cannot execute INSERT in a read-only transaction``).
    """
    connection = connections.create_connection(database)
    try:
        connection.set_autocommit(False)
        with connection.cursor() as setup:
            if connection.vendor == "postgresql":
                setup.execute("SET TRANSACTION READ ONLY")
            elif connection.vendor == "sqlite":
                setup.execute("PRAGMA query_only = ON")
            else:
                raise NotImplementedError(
                    f"SQL reports run read-only on PostgreSQL or SQLite, not {connection.vendor}"
                )
        cursor = connection.chunked_cursor()
        try:
            try:
                cursor.execute(sql, dict(params))
            except DatabaseError as exc:
                raise refused(database, exc) from exc
            columns = [column[0] for column in cursor.description or []]
            yield ReadOnlyRows(database, columns, cursor)
        finally:
            cursor.close()
    finally:
        try:
            connection.rollback()
        finally:
            connection.close()
