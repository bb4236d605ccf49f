"""The send-only client's import path for other services: ``dispatch``, ``dispatch_many``, ``Delivery``.

Kept because services outside this repository dispatch through
``jobs.client`` (the README's way in). The code lives in ``jobs.dispatch``
(the way in) and ``jobs.publishing`` (messages and the outbox); new code
inside the project imports from those.
"""

from __future__ import annotations

from jobs.dispatch import Delivery, dispatch, dispatch_many

__all__ = ["Delivery", "dispatch", "dispatch_many"]

# Transitional: tests/test_fast_path_pins.py (in progress elsewhere) still imports these from here;
# remove once it imports them from jobs.publishing.
from jobs.publishing import send_batch, task_message  # noqa: E402

__all__ += ["send_batch", "task_message"]
