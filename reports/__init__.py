"""Reports: row-producing jobs, chunked under limits, rendered, stored and delivered.

A layer on top of ``jobs`` and ``scheduler`` (and ``alerts`` for the alert
digest): nothing below imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports.framework import Window, report, sql_report

__all__ = ["Window", "report", "sql_report"]


def __getattr__(name: str) -> Any:
    """``from reports import report, sql_report, Window``, imported on first use.

    Not at import time: Django imports this package while it loads the apps,
    before models (which the framework uses) may be imported.
    """
    if name in __all__:
        from reports import framework

        return getattr(framework, name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
