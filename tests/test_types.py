"""The packages type-check: mypy with django-stubs and celery-types, as configured in ``pyproject.toml``.

The plugin reads the settings, so models, managers and querysets are typed
from their fields: a claimed run passed where a ``JobRun`` is expected, or a
``None`` compared with a datetime, fails here instead of in production.
"""

from __future__ import annotations

from tests.support.processes import run_dev_tool


def test_it_finds_no_type_errors():
    result = run_dev_tool("mypy", "--hide-error-context", timeout=540)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
