"""The send-only client's import path for other services: ``dispatch``, ``dispatch_many``, ``Delivery``.

Kept because services outside this repository dispatch through
``jobs.client`` (the README's way in). The code lives in ``jobs.dispatch``
(the way in) and ``jobs.publishing`` (messages and the outbox); new code
inside the project imports from those.
"""

from __future__ import annotations

from jobs.dispatch import Delivery, dispatch, dispatch_many

__all__ = ["Delivery", "dispatch", "dispatch_many"]
