"""A real filesystem reports storage in a temporary directory, for tests of stored reports.

Import the fixture into a test module (``from tests.support.report_storage import
reports_dir  # noqa: F401``): it points ``STORAGES["reports"]`` at a fresh
directory for the test and yields that directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage


@pytest.fixture
def reports_dir(settings, tmp_path) -> Iterator[Path]:
    location = tmp_path / "reports"
    location.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "reports": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    yield location


def stored_files(location: Path) -> list[str]:
    """Every file under ``location``, as sorted names relative to it."""
    return sorted(str(p.relative_to(location)) for p in location.rglob("*") if p.is_file())


class StorageFull(OSError):
    """What ``FillingUpStorage`` raises: the disk (or bucket quota) is full."""


class FillingUpStorage(FileSystemStorage):
    """A real filesystem storage that takes ``room_for`` files, then fails every save (a full disk).

    For proving what happens to the files saved before a failure; each
    instance counts its own saves (Django makes one per test, since tests
    set ``STORAGES`` afresh).
    """

    def __init__(self, *, room_for: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room_for = room_for

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        if self.room_for <= 0:
            raise StorageFull(28, "No space left on device", name)
        self.room_for -= 1
        return super().save(name, content, max_length)
