"""The in-platform client's import path: ``dispatch``, ``dispatch_many``, ``Delivery`` (needs Django).

Kept because code that runs with the platform's settings and database
dispatches through ``jobs.client`` (it records the run first, through the
outbox). A service *outside* the platform, with no Django, no models and no
database, uses the send-only client instead: ``jobs.sendonly.Client``
(only celery/kombu and redis; the worker records its runs, origin
``client``). The code here lives in ``jobs.dispatch`` (the way in) and
``jobs.publishing`` (messages and the outbox); new code inside the project
imports from those.
"""

from __future__ import annotations

from jobs.dispatch import Delivery, dispatch, dispatch_many

__all__ = ["Delivery", "dispatch", "dispatch_many"]
