"""Beat's entries by task id, in about a sixth of a dict's memory.

Task ids are auto-increment keys, so they are dense: a list indexed by id
holds an entry in 8 bytes where a dict spends about 50 (hash table, its
spare room, and a key object). At 100,000 schedules the dict was 5 MB, a
fifth of everything beat keeps.

Where the ids are sparse (the highest id more than ``SPARSE_FACTOR`` times
the number of entries, plus ``SPARSE_SLACK``: mass deletions, ids from
another system) it is a dict, and a list turns into one for good when an
id that far out arrives, so memory never grows with the highest id alone.
Rows arrive in no particular order, so the caller says up front how many
and how high (``IdTable(highest, count)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

SPARSE_FACTOR = 4
SPARSE_SLACK = 1024


class IdTable(Generic[V]):
    """A mapping of non-negative int ids to values: the part of ``dict`` beat uses."""

    __slots__ = ("_count", "_dict", "_expected", "_list")

    def __init__(self, highest: int = 0, count: int = 0) -> None:
        self._count = 0
        self._expected = count
        if highest >= SPARSE_FACTOR * count + SPARSE_SLACK:
            self._list: list[V | None] | None = None
            self._dict: dict[int, V] | None = {}
        else:
            self._list = [None] * (highest + 1)
            self._dict = None

    def _too_sparse_for(self, key: int) -> bool:
        return key >= SPARSE_FACTOR * (max(self._count, self._expected) + 1) + SPARSE_SLACK

    def _to_dict(self) -> None:
        self._dict = dict(self.items())
        self._list = None

    def __setitem__(self, key: int, value: V) -> None:
        if self._list is not None and (key < 0 or self._too_sparse_for(key)):
            self._to_dict()
        if self._dict is not None:
            self._dict[key] = value
            self._count = len(self._dict)
            return
        items = self._list
        assert items is not None  # one of _list and _dict is always set
        if key >= len(items):
            items.extend([None] * (key + 1 - len(items)))
        if items[key] is None:
            self._count += 1
        items[key] = value

    def get(self, key: int, default: V | None = None) -> V | None:
        if self._dict is not None:
            return self._dict.get(key, default)
        items = self._list
        assert items is not None  # one of _list and _dict is always set
        if 0 <= key < len(items):
            value = items[key]
            return default if value is None else value
        return default

    def __getitem__(self, key: int) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.get(key) is not None

    def pop(self, key: int, default: V | None = None) -> V | None:
        if self._dict is not None:
            value = self._dict.pop(key, default)
            self._count = len(self._dict)
            return value
        value = self.get(key)
        if value is None:
            return default
        assert self._list is not None  # one of _list and _dict is always set
        self._list[key] = None
        self._count -= 1
        return value

    def __len__(self) -> int:
        return self._count

    def items(self) -> Iterator[tuple[int, V]]:
        if self._dict is not None:
            yield from self._dict.items()
            return
        assert self._list is not None  # one of _list and _dict is always set
        for key, value in enumerate(self._list):
            if value is not None:
                yield key, value

    def __iter__(self) -> Iterator[int]:
        return (key for key, _ in self.items())

    def values(self) -> Iterator[V]:
        return (value for _, value in self.items())
