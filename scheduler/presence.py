"""Schedules whose job no live worker serves get flagged.

Beat compares every schedule's (queue, job) with what live workers serve
(their presence, ``jobs.workers``) and writes a ``problem`` on the
schedule's policy instead of letting its messages pile up unnoticed.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from jobs.workers import served_pairs
from lib.sequences import chunks
from scheduler.models import SchedulePolicy

logger = logging.getLogger(__name__)


def unserved_problem(queue: str, job: str) -> str:
    return f"no live worker serves job {job!r} on queue {queue!r}: its runs will wait in the queue"


def flag_unserved(entries, now=None) -> int:
    """Set or clear each schedule's ``problem``; return how many are flagged.

    Writes only rows whose problem changes, grouped: one ``UPDATE … WHERE
    task_id IN (…)`` per distinct problem and chunk (a first deploy with no
    worker yet flags every schedule at once; one UPDATE per schedule took
    95 s at 100,000). ``update()`` writes no change-log entry: a flag is not
    an edit of the schedule.
    """
    served = served_pairs(now)
    problems: dict[tuple[str, str], str] = {}  # per (queue, job), not per schedule: memory
    current = dict(SchedulePolicy.objects.exclude(problem="").values_list("task_id", "problem"))
    changes: dict[str, list[int]] = defaultdict(list)
    flagged = 0
    for entry in entries:
        pair = (entry.definition.queue, entry.definition.job)
        problem = problems.get(pair)
        if problem is None:
            problem = problems[pair] = "" if pair in served else unserved_problem(*pair)
        flagged += bool(problem)
        if current.get(entry.task_id, "") != problem:
            changes[problem].append(entry.task_id)
    for problem, task_ids in changes.items():
        for chunk in chunks(task_ids):
            SchedulePolicy.objects.filter(task_id__in=chunk).update(problem=problem)
    newly_flagged = sum(len(ids) for problem, ids in changes.items() if problem)
    if newly_flagged:
        # One line, not one per schedule: 5,000 schedules on a dead queue are one problem.
        example = next(problem for problem in changes if problem)
        logger.warning("%d schedules newly flagged, e.g. %s", newly_flagged, example)
    return flagged
