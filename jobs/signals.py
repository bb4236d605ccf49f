"""Signals the job framework sends about a run's life, for layers above ``jobs`` to listen to.

``jobs`` never imports ``alerts`` or ``scheduler`` (import contract), so the
worker tells whoever listens (``alerts.crons``: Sentry Crons check-ins) what
happened to a run instead of calling them.

Guarantees:

- A signal is sent only after the guarded transition it reports WON (the
  UPDATE in ``jobs.runs`` changed the row): a redelivered copy, a loser of a
  race or an ignored message sends nothing. A run therefore gets at most one
  ``run_ended`` with ``will_retry=False``.
- ``run_started(sender, run)``: the attempt's run moved to ``running`` in the
  pool process that runs the job (every attempt, ``run.attempt`` says which).
- ``run_ended(sender, run, status, will_retry, error)``: the attempt ended.
  ``status`` is the ``RunStatus`` written; ``will_retry`` is ``True`` when
  another attempt of the same run follows (``retrying``: the retry policy, or
  a pool process that died with retries left); ``error`` is the
  ``jobs.runs.RunError`` or ``None``. Sent from the pool process (success,
  failure, retry, soft timeout) or from the worker's main process (hard
  timeout, a revoke, a pool process that died). ``run`` is the ``JobRun`` as
  the sender knows it: fields the transition wrote may be stale on it
  (``status`` is the argument to trust).
- Nothing listening costs one attribute test per send (``has_receivers``):
  the framework builds no arguments and reads nothing for a signal nobody
  listens to. A receiver that raises is logged and never breaks the run's
  record (``send_robust``): the record is already written.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from jobs.models import JobRun

logger = logging.getLogger(__name__)

run_started = Signal()
run_ended = Signal()


def has_receivers(signal: Signal) -> bool:
    """Whether anyone listens: the only cost a send pays when nobody does."""
    return bool(signal.receivers)


def send(signal: Signal, **arguments: Any) -> None:
    """Send ``signal`` to its receivers, logging (not raising) what a receiver raises."""
    for receiver, outcome in signal.send_robust(sender=JobRun, **arguments):
        if isinstance(outcome, Exception):
            logger.error(
                "a receiver of a jobs signal failed (%s): %s",
                getattr(receiver, "__qualname__", receiver),
                outcome,
                exc_info=outcome,
            )
