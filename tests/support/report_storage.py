"""A real filesystem reports storage in a temporary directory, for tests of stored reports.

Import the fixture into a test module (``from tests.support.report_storage import
reports_dir  # noqa: F401``): it points ``STORAGES["reports"]`` at a fresh
directory for the test and yields that directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
