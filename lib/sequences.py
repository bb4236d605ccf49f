"""Slicing long id lists for SQL: ``IN (...)`` lists stay below what SQLite and PostgreSQL take well."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Keep IN (...) lists below SQLite's and Postgres' comfortable limits.
CHUNK = 900


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
