"""The packages type-check: mypy with django-stubs and celery-types, as configured in ``pyproject.toml``.

The plugin reads the settings, so models, managers and querysets are typed
from their fields: a claimed run passed where a ``JobRun`` is expected, or a
``None`` compared with a datetime, fails here instead of in production.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_it_finds_no_type_errors():
    mypy = Path(sys.executable).with_name("mypy")
    result = subprocess.run(
        [str(mypy), "--hide-error-context"], cwd=ROOT, capture_output=True, text=True, timeout=540
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
