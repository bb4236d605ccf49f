"""Sections other apps add to a run's admin page, without jobs importing them.

An app on top (``reports``: the files a run produced and where they went)
calls ``register_run_panel(fn)`` once, from its ``AppConfig.ready``. The run
page (``jobs.admin.run_page_context``) calls each panel with the run, in the
order they were registered, and shows the HTML it returns below the run's
own sections; a panel returning ``None`` (nothing to say about this run)
shows nothing.

A panel is the page's guest: one that raises is logged and replaced by a
one-line note, so a broken add-on never takes the run page down. Registering
the same function twice keeps one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.utils.html import format_html
from django.utils.safestring import SafeString

from jobs.models import JobRun

logger = logging.getLogger(__name__)

RunPanel = Callable[[JobRun], SafeString | None]

_panels: list[RunPanel] = []


def register_run_panel(panel: RunPanel) -> RunPanel:
    """Add ``panel`` to every run page (usable as a decorator)."""
    if panel not in _panels:
        _panels.append(panel)
    return panel


def unregister_run_panel(panel: RunPanel) -> None:
    if panel in _panels:
        _panels.remove(panel)


def render_run_panels(run: JobRun) -> list[SafeString]:
    """Each registered panel's HTML for ``run``: those with something to say, in registration order."""
    rendered = []
    for panel in list(_panels):
        try:
            html = panel(run)
        except Exception:
            logger.exception(
                "run page panel %s failed for run %s", getattr(panel, "__qualname__", panel), run.pk
            )
            html = format_html(
                '<div class="module run-panel-error"><p class="errornote">The section {} could not be shown '
                "(the error is in the web process's log).</p></div>",
                getattr(panel, "__qualname__", repr(panel)),
            )
        if html:
            rendered.append(html)
    return rendered
