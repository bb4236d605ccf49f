"""The apps depend one way: reports on alerts on scheduler on jobs, all on lib, none of them from settings.

import-linter reads every import statement, function-local ones included (a
function-local import is how the old circle between the apps hid), against
the contracts in ``pyproject.toml``.
"""

from __future__ import annotations

from tests.support.processes import run_dev_tool


def test_it_keeps_every_import_contract():
    result = run_dev_tool("lint-imports", "--no-cache", timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "6 kept, 0 broken" in result.stdout
