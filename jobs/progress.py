"""Progress a job reports while it runs: ``report_progress(done, total, message)``.

A job body calls :func:`report_progress` as often as it likes; the run's
row gets at most one write a second (``INTERVAL_SECONDS``), so a loop
reporting every item costs the database nothing to speak of.

The throttle's rule (:class:`ProgressThrottle`, in-process, per run):

- the first report of a run is written at once (the page shows it started);
- a report with ``done == total`` (the end) is written at once;
- any other report is written if the last write is ``INTERVAL_SECONDS`` old,
  else kept as *pending*, replacing an older pending one: only the latest
  figure matters;
- ``flush()`` writes what is pending. The framework flushes the current run's
  throttle when the job body returns or raises, so the last figure a job
  reported is always on its run when the run ends.

Writes are ``jobs.runs.record_progress`` (one guarded UPDATE, running runs
only). Bad figures (negative, not whole numbers) raise ``ValueError`` at the
call, written or not.

A run made of parts running as separate tasks (a report's chunks) adds to
its parent's count instead: :class:`ProgressAdder` for the parent's run id
sums the deltas it is given and writes them with ``jobs.runs.add_progress``
(``progress_done = COALESCE(progress_done, 0) + delta``) under the same
rule; each part must ``flush()`` its adder before it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from django.db import DatabaseError

from jobs import runs

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 1.0


@dataclass
class _Figures:
    done: int
    total: int | None
    message: str


class _Throttled:
    """The shared clock of both throttles: the first write at once, then one per ``interval``.

    ``clock`` is monotonic seconds (injectable for tests); ``write`` is the
    writer. A write that fails on the database is logged, not raised:
    progress is a note, and the job must not fail for it.
    """

    def __init__(
        self,
        run_id: str,
        *,
        write: Callable[..., bool],
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = run_id
        self.interval = interval
        self.clock = clock
        self.write = write
        self.writes = 0
        self._last_write: float | None = None

    def _due(self) -> bool:
        return self._last_write is None or self.clock() - self._last_write >= self.interval

    def _written(self, what: str, **figures: object) -> bool:
        """Write ``figures`` now (the clock restarts); ``False``: the run took none, or the write failed."""
        self._last_write = self.clock()
        self.writes += 1
        try:
            return self.write(self.run_id, **figures)
        except DatabaseError as exc:
            logger.warning("run %s: progress %s not written: %s", self.run_id, what, exc)
            return False


class ProgressThrottle(_Throttled):
    """At most one ``record_progress`` write per ``interval`` for one run; see the module docstring."""

    def __init__(
        self,
        run_id: str,
        *,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[..., bool] = runs.record_progress,
    ) -> None:
        super().__init__(run_id, write=write, interval=interval, clock=clock)
        self._pending: _Figures | None = None

    def report(self, done: int, total: int | None = None, message: str = "") -> bool:
        """Report ``done`` of ``total``; ``True`` when this call wrote it (else it is pending)."""
        runs.check_progress(done=done, total=total)
        self._pending = _Figures(done, total, message)
        final = total is not None and done == total
        if final or self._due():
            return self.flush()
        return False

    def flush(self) -> bool:
        """Write the pending figure, if any; ``True`` when written."""
        figures, self._pending = self._pending, None
        if figures is None:
            return False
        return self._written(
            str(figures.done), done=figures.done, total=figures.total, message=figures.message
        )


class ProgressAdder(_Throttled):
    """Deltas added to a run's ``progress_done`` (``jobs.runs.add_progress``), at most one write per interval.

    ``add`` sums deltas while throttled; the first ``add`` writes at once;
    ``flush()`` writes the sum not yet written (call it when the part ends).
    ``total`` and ``message``, when given, are written with the next write.
    """

    def __init__(
        self,
        run_id: str,
        *,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[..., bool] = runs.add_progress,
    ) -> None:
        super().__init__(run_id, write=write, interval=interval, clock=clock)
        self._delta = 0
        self._total: int | None = None
        self._message = ""

    def add(self, delta: int, total: int | None = None, message: str = "") -> bool:
        """Add ``delta`` done; ``True`` when this call wrote (the sum so far), else it is pending."""
        runs.check_progress(delta=delta, total=total)
        self._delta += delta
        if total is not None:
            self._total = total
        if message:
            self._message = message
        if self._due():
            return self.flush()
        return False

    def flush(self) -> bool:
        """Write the deltas not yet written, if any; ``True`` when written."""
        if not (self._delta or self._total is not None or self._message):
            return False
        delta, total, message = self._delta, self._total, self._message
        self._delta, self._total, self._message = 0, None, ""
        return self._written(f"+{delta}", delta=delta, total=total, message=message)


_current: ContextVar[ProgressThrottle | None] = ContextVar("jobs_progress_current", default=None)


def report_progress(done: int, total: int | None = None, message: str = "") -> None:
    """Report the current run's progress: ``done`` of ``total`` (None: unknown), and what it does now.

    For a job body run by a worker. Throttled to one write a second (see the
    module docstring); the last figure is written when the body ends.
    Outside a job run by a worker (the function called directly, an eager
    ``apply()``, a test) it checks the figures and does nothing else.
    ``message`` is cut to 200 characters. Raises ``ValueError`` for
    negative or non-whole figures.
    """
    throttle = _current.get()
    if throttle is None:
        runs.check_progress(done=done, total=total)
        return
    throttle.report(done, total, message)


def begin(run_id: str) -> ProgressThrottle:
    """Make ``run_id`` the current run for ``report_progress`` (the framework, before the body)."""
    throttle = ProgressThrottle(run_id)
    _current.set(throttle)
    return throttle


def end() -> None:
    """Write the current run's pending progress and forget it (the framework, after the body)."""
    throttle = _current.get()
    _current.set(None)
    if throttle is not None:
        throttle.flush()
