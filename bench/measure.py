"""One measured beat process: load, idle ticks, edits, burst, resync, peak RSS.

Run by ``bench/run.py`` as a fresh subprocess per (scheduler, size, repeat), on
a fresh copy of the seeded database, so the two schedulers never share a heap
and every run starts from the same rows::

    python bench/measure.py --engine ours|theirs --db bench_beat --out result.json

``ours`` is :class:`scheduler.beat.engine.BeatEngine` (no lease: ``fence=None``);
``theirs`` is django-celery-beat's ``DatabaseScheduler``. Both publish to the
same Redis database (``common.REDIS_DB``). In the ``theirs`` process our
application's signal receivers are disconnected, so DatabaseScheduler runs as
stock (its own ``PeriodicTasks`` change signal stays connected).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import pstats
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BURST_EVERY,
    BURST_QUEUE,
    IDLE_QUEUE,
    flush_bench_redis,
    proc_status,
    redis_client,
    setup_django,
    sleep_until,
)

perf = time.perf_counter
cpu = time.process_time


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "p10": ordered[int(0.1 * (len(ordered) - 1))],
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "min": ordered[0],
        "max": ordered[-1],
    }


class Profiler:
    """cProfile around one named phase when ``--profile`` names it."""

    def __init__(self, wanted: str | None, out_dir: Path | None, label: str) -> None:
        self.wanted, self.out_dir, self.label = wanted, out_dir, label
        self.prof: cProfile.Profile | None = None
        self.phase = ""

    def start(self, phase: str) -> None:
        if self.wanted == phase:
            self.phase = phase
            self.prof = cProfile.Profile()
            self.prof.enable()

    def stop(self) -> None:
        if self.prof is None:
            return
        self.prof.disable()
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.label}-{self.phase}"
        self.prof.dump_stats(str(path) + ".pstats")
        with open(str(path) + ".txt", "w") as fh:
            stats = pstats.Stats(self.prof, stream=fh)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
        self.prof = None


def timed_loop(fn, *, budget: float, max_n: int, min_n: int = 5, keep=lambda: True) -> list[float]:
    """Call ``fn`` repeatedly (at most ``max_n`` times, about ``budget`` seconds); ms per call."""
    samples: list[float] = []
    deadline = perf() + budget
    while len(samples) < max_n and (len(samples) < min_n or perf() < deadline):
        ok = keep()
        t0 = perf()
        fn()
        elapsed = (perf() - t0) * 1000
        if ok:
            samples.append(elapsed)
    return samples


def idle_loop(sched, seconds: float) -> list[float]:
    """Ticks of the real beat loop (tick, sleep what it returns), ms each, for ``seconds``.

    Ours wakes every 0.25 s; each tick checks the change notification, and
    every 5 s one also reads the change log (the fallback poll): the mean
    over the window is the idle cost per tick, polls included.
    """
    samples: list[float] = []
    deadline = perf() + seconds
    while perf() < deadline:
        ok = sched.nothing_due()
        t0 = perf()
        wait = sched.tick()
        elapsed = (perf() - t0) * 1000
        if ok:
            samples.append(elapsed)
        time.sleep(max(0.0, min(wait, deadline - perf())))
    return samples


def disconnect_our_signals() -> list[str]:
    """Stock DatabaseScheduler: our app's receivers off (validation, policy rows, change log)."""
    from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

    from scheduler.models import SchedulePolicy

    pairs = [
        (pre_save, PeriodicTask, "scheduler.validate_task"),
        (pre_save, CrontabSchedule, "scheduler.validate_crontab"),
        (pre_save, SchedulePolicy, "scheduler.validate_policy"),
        (post_save, PeriodicTask, "scheduler.task_saved"),
        (post_delete, PeriodicTask, "scheduler.task_deleted"),
        (post_save, SchedulePolicy, "scheduler.policy_saved"),
    ]
    for model in (CrontabSchedule, IntervalSchedule, ClockedSchedule):
        pairs.append((post_save, model, f"scheduler.changed.{model.__name__}"))
        pairs.append((pre_delete, model, f"scheduler.deleted.{model.__name__}"))
    done = []
    for signal, sender, uid in pairs:
        if signal.disconnect(sender=sender, dispatch_uid=uid):
            done.append(uid)
    return done


# --------------------------------------------------------------------------------------
# The two schedulers behind one small interface.
# --------------------------------------------------------------------------------------
class Ours:
    name = "ours"

    def __init__(self, app) -> None:
        self.app = app
        self.engine = None

    def start(self) -> None:
        from scheduler.beat.engine import BeatEngine

        self.engine = BeatEngine(self.app)  # fence=None: no lease in the bench
        self.engine.load()
        self.engine.tick()

    def counts(self) -> dict:
        return {"entries": len(self.engine.entries), "heap": len(self.engine.heap)}

    def tick(self) -> float:
        return self.engine.tick()

    def nothing_due(self) -> bool:
        from django.utils import timezone

        heap = self.engine.heap
        return not heap or heap[0].due_at > timezone.now()

    def heap_only_mode(self, on: bool) -> None:
        """Push the next change-log poll and reconcile out of the way (or back)."""
        if on:
            self.engine.next_poll = math.inf
            self.engine.next_reconcile = math.inf
        else:
            self.engine.next_poll = time.monotonic() + self.engine.change_poll_every()
            self.engine.next_reconcile = time.monotonic() + self.engine.reconcile_interval

    def polled_tick(self) -> None:
        self.engine.next_poll = 0.0  # due: this tick polls the change log
        self.engine.tick()

    def visible(self, task_id: int, name: str, every: timedelta, after: datetime) -> dict | None:
        entry = self.engine.entries.get(task_id)
        if entry is None or entry.definition.interval != every or entry.pending is None:
            return None
        if entry.pending <= after or (entry.pending - entry.anchor) % every:
            return None
        return {"new_next_slot": entry.pending.isoformat()}

    def prepare_burst(self, burst_ids: list[int], at: datetime) -> dict:
        """Re-anchor the burst schedules at ``at``, as an editor would, then let beat apply it.

        The edit is written over a connection of its own with the statements
        ``scheduler.services`` issues (policy UPDATE, change-log rows, NOTIFY):
        in production another process writes it, so its 10,000 model objects
        must not count in beat's memory.
        """
        from common import db_connection
        from django.db import connection

        from scheduler.changes import CHANNEL

        w0 = perf()
        with db_connection(connection.settings_dict["NAME"]) as editor, editor.transaction():
            editor.execute(
                "UPDATE scheduler_schedulepolicy SET anchor = %s WHERE task_id = ANY(%s)", [at, burst_ids]
            )
            editor.execute(
                "INSERT INTO scheduler_schedulechange (task_id, created_at) SELECT unnest(%s::int[]), now()",
                [burst_ids],
            )
            editor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
        write = perf() - w0
        w0, c0 = perf(), cpu()
        applied = self.engine.apply_changes()
        wall, used = perf() - w0, cpu() - c0
        pending = sum(1 for tid in burst_ids if self.engine.entries[tid].pending == at)
        return {
            "db_write_s": write,
            "apply_wall_s": wall,
            "apply_cpu_s": used,
            "applied": applied,
            "due_at_burst": pending,
        }

    def resync(self, reload: bool = True) -> dict:
        """A whole reconcile cycle, step by step as ticks run it; the longest step is what a tick pays."""
        w0, c0 = perf(), cpu()
        self.engine.reconciling = None
        steps: list[float] = []
        done = False
        while not done:
            s0 = perf()
            done = self.engine.reconcile_step()
            steps.append(perf() - s0)
        return {
            "what": "engine.reconcile_step() until the cycle ends (one step per tick, every 300 s)",
            "wall_s": perf() - w0,
            "cpu_s": cpu() - c0,
            "steps": len(steps),
            "longest_step_s": max(steps),
            "rebuilt": self.engine.last_reconcile_changes,
        }


class Theirs:
    name = "theirs"

    def __init__(self, app) -> None:
        self.app = app
        self.sched = None
        self.sent = 0

    def start(self) -> None:
        from django_celery_beat.schedulers import DatabaseScheduler

        self.sched = DatabaseScheduler(app=self.app, lazy=False)
        self.sched.tick()
        original = self.sched.apply_entry

        def counted(entry, producer=None):  # one Python call: how many messages it sent
            self.sent += 1
            return original(entry, producer=producer)

        self.sched.apply_entry = counted

    def counts(self) -> dict:
        return {"entries": len(self.sched._schedule), "heap": len(self.sched._heap or [])}

    def tick(self) -> float:
        return self.sched.tick()

    def nothing_due(self) -> bool:
        heap = self.sched._heap
        return not heap or heap[0][0] > time.time()

    def heap_only_mode(self, on: bool) -> None:
        pass

    def visible(self, task_id: int, name: str, every: timedelta, after: datetime) -> dict | None:
        entry = (self.sched._schedule or {}).get(name)
        if entry is None or getattr(entry.schedule, "run_every", None) != every:
            return None
        return {"new_next_slot": None}

    def prepare_burst(self, burst_ids: list[int], at: datetime) -> dict:
        """Make the burst due at ``at``: in the database, and in memory without a full reload.

        ``queryset.update()`` sends no change signal, so DatabaseScheduler would only see the new
        ``last_run_at`` at its next full reload (row 3 measures what that costs). Instead its
        in-memory entries get the same value and the heap is rebuilt with its own
        ``populate_heap()``: the state a reload would produce, for a fraction of the cost.
        """
        from django_celery_beat.models import PeriodicTask

        every = BURST_EVERY[0] * timedelta(**{BURST_EVERY[1]: 1})
        last = at - every
        names = list(PeriodicTask.objects.filter(id__in=burst_ids).values_list("name", flat=True))
        w0 = perf()
        PeriodicTask.objects.filter(id__in=burst_ids).update(last_run_at=last)
        write = perf() - w0
        w0, c0 = perf(), cpu()
        schedule = self.sched._schedule
        for name in names:
            entry = schedule[name]
            entry.last_run_at = last
            entry.model.last_run_at = last
        self.sched.populate_heap()
        wall, used = perf() - w0, cpu() - c0
        due = sum(
            1 for e in self.sched._heap if e[2].name.startswith("bench-burst-") and e[0] <= at.timestamp()
        )
        return {
            "db_write_s": write,
            "apply_wall_s": wall,
            "apply_cpu_s": used,
            "applied": len(names),
            "due_at_burst": due,
            "how": "last_run_at set in DB and in memory; populate_heap()",
        }

    def resync(self, reload: bool = True) -> dict:
        """What DatabaseScheduler does every 300 s (SCHEDULE_SYNC_MAX_INTERVAL): ``sync()`` of the
        entries sent since the last one (a get + save each), then a full reload and heap rebuild."""
        dirty = len(self.sched._dirty)
        w0, c0 = perf(), cpu()
        self.sched.sync()
        out = {
            "what": "forced full reload tick (every 300 s)",
            "dirty_entries_synced": dirty,
            "sync_wall_s": perf() - w0,
            "sync_cpu_s": cpu() - c0,
        }
        if reload:
            self.sched._last_full_sync = datetime.now() - timedelta(seconds=301)  # noqa: DTZ005 (as theirs)
            w0, c0 = perf(), cpu()
            self.sched.tick()
            out.update(wall_s=perf() - w0, cpu_s=cpu() - c0)
        return out


# --------------------------------------------------------------------------------------
def measure(args) -> dict:
    setup_django(args.db)
    from django.db import connection
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from scheduler.celery import app

    out: dict = {"engine": args.engine, "argv": sys.argv[1:]}
    if args.engine == "theirs":
        out["disconnected_signals"] = disconnect_our_signals()
    flush_bench_redis()
    broker = redis_client()
    # Warm the imports both sides need, outside the timed start.
    import django_celery_beat.schedulers  # noqa: F401

    import scheduler.beat.engine  # noqa: F401

    connection.ensure_connection()
    out["rss_baseline_mb"] = proc_status()["VmRSS"]
    prof = Profiler(
        args.profile, Path(args.profile_dir) if args.profile_dir else None, f"{args.engine}-{args.label}"
    )
    sched = Ours(app) if args.engine == "ours" else Theirs(app)

    # 1. start to first tick -----------------------------------------------------------
    prof.start("start")
    w0, c0 = perf(), cpu()
    sched.start()
    out["start"] = {"wall_s": perf() - w0, "cpu_s": cpu() - c0, **sched.counts()}
    prof.stop()
    out["rss_after_start_mb"] = proc_status()["VmRSS"]
    if args.phases == "start":
        out["rss"] = proc_status()
        return out

    out.setdefault("peak_rss_mb_after", {})["start"] = proc_status()["VmHWM"]

    # 2. idle ticks --------------------------------------------------------------------
    sched.heap_only_mode(True)
    for _ in range(3):
        sched.tick()  # warm
    prof.start("idle")
    idle = timed_loop(sched.tick, budget=args.idle_budget, max_n=args.idle_max, keep=sched.nothing_due)
    prof.stop()
    out["idle_tick_ms"] = summary(idle)
    if args.engine == "ours":
        out["fallback_poll_tick_ms"] = summary(
            timed_loop(sched.polled_tick, budget=args.idle_budget, max_n=500, keep=sched.nothing_due)
        )
        sched.heap_only_mode(False)
        out["idle_tick_with_poll_ms"] = summary(idle_loop(sched, args.idle_loop_seconds))
        out["apply_changes_empty_ms"] = summary(
            timed_loop(sched.engine.apply_changes, budget=args.idle_budget / 2, max_n=300)
        )
    else:
        out["schedule_changed_ms"] = summary(
            timed_loop(sched.sched.schedule_changed, budget=args.idle_budget / 2, max_n=300)
        )
    sched.heap_only_mode(False)

    out.setdefault("peak_rss_mb_after", {})["idle"] = proc_status()["VmHWM"]

    # 3. one edit -> visible -----------------------------------------------------------
    rng = random.Random(args.seed)
    targets = {
        timedelta(days=every): IntervalSchedule.objects.get(every=every, period="days") for every in (8, 9)
    }
    candidates = list(
        PeriodicTask.objects.filter(name__startswith="bench-int-")
        .order_by("id")
        .values_list("id", flat=True)[:50]
    )
    edits = []
    edit_deadline = perf() + args.edit_budget
    for k in range(args.edits):
        if k >= 1 and perf() > edit_deadline:
            break
        task = PeriodicTask.objects.get(pk=candidates[k])
        every = list(targets)[k % 2]
        wait = sched.tick()
        phase = rng.random()
        time.sleep(phase * wait)
        task.interval = targets[every]
        prof.start("edit")
        task.save()  # the admin's path: signals write the change log (ours) / PeriodicTasks (theirs)
        t_save = perf()
        saved_at = datetime.now(UTC)
        time.sleep((1 - phase) * wait)
        ticks, seen = 0, None
        while perf() - t_save < 120:
            w0, c0 = perf(), cpu()
            wait = sched.tick()
            tick_wall, tick_cpu = perf() - w0, cpu() - c0
            ticks += 1
            seen = sched.visible(task.pk, task.name, every, saved_at)
            if seen is not None:
                break
            time.sleep(wait)
        visible_s = perf() - t_save
        prof.stop()
        edits.append(
            {
                "visible_s": visible_s if seen else None,
                "tick_wall_ms": tick_wall * 1000,
                "tick_cpu_ms": tick_cpu * 1000,
                "ticks": ticks,
                **(seen or {}),
            }
        )
    out["edits"] = edits
    if args.engine == "ours":
        # The scheduler's cost alone, without the loop's sleep: apply_changes() right after a save.
        direct = []
        for k in range(args.edits):
            task = PeriodicTask.objects.get(pk=candidates[25 + k])
            every = list(targets)[k % 2]
            task.interval = targets[every]
            task.save()
            saved_at = datetime.now(UTC)
            w0, c0 = perf(), cpu()
            changed = sched.engine.apply_changes()
            wall, used = perf() - w0, cpu() - c0
            seen = sched.visible(task.pk, task.name, every, saved_at)
            direct.append(
                {
                    "apply_wall_ms": wall * 1000,
                    "apply_cpu_ms": used * 1000,
                    "changed": changed,
                    "visible": seen is not None,
                }
            )
        out["edit_apply_direct"] = direct

    out.setdefault("peak_rss_mb_after", {})["edits"] = proc_status()["VmHWM"]

    # 4. burst -------------------------------------------------------------------------
    burst_ids = list(
        PeriodicTask.objects.filter(name__startswith="bench-burst-")
        .order_by("id")
        .values_list("id", flat=True)
    )
    count = len(burst_ids)
    broker.delete(BURST_QUEUE)
    reload_s = max((e["tick_wall_ms"] for e in edits), default=0) / 1000
    # Long enough for the preparation (theirs: populate_heap, ~1/5 of its start; ours: apply_changes).
    margin = 2.0 + (out["start"]["wall_s"] * 0.35 if args.engine == "theirs" else count / 2000)
    burst: dict = {"count": count}
    for _attempt in range(3):
        at_wall = math.ceil(time.time() + margin)
        at = datetime.fromtimestamp(at_wall, UTC)
        burst["prepare"] = sched.prepare_burst(burst_ids, at)
        if time.time() < at_wall - 0.05:
            break
        margin *= 2  # preparation overran the instant: pick a later one
    else:
        burst["error"] = "could not prepare the burst before its instant"
    burst["slack_before_instant_s"] = at_wall - time.time()
    out["peak_rss_mb_after"]["burst_preparation"] = proc_status()["VmHWM"]
    sleep_until(at_wall)
    prof.start("burst")
    w0 = perf()
    ticks, done_at, sent_len = 0, None, 0
    last_check = 0.0
    while True:
        wait = sched.tick()
        ticks += 1
        now = perf()
        if args.engine == "ours" or sched.sent >= count or now - last_check > 1.0:
            sent_len = broker.llen(BURST_QUEUE)
            last_check = now
            if sent_len >= count:
                done_at = time.time()
                break
        if now - w0 > args.burst_timeout:
            sent_len = broker.llen(BURST_QUEUE)
            break
        if wait and wait > 0:
            time.sleep(min(wait, 0.05))
    elapsed = perf() - w0
    prof.stop()
    burst.update(
        ticks=ticks,
        in_broker=sent_len,
        complete=done_at is not None,
        seconds=(done_at - at_wall) if done_at else None,
        loop_seconds=elapsed,
        slots_per_s=(count / (done_at - at_wall)) if done_at else sent_len / max(elapsed, 1e-9),
        stray_idle_queue=broker.llen(IDLE_QUEUE),
    )
    if not burst["complete"]:
        burst["projected_seconds"] = count / burst["slots_per_s"] if burst["slots_per_s"] else None
    if args.engine == "ours":
        from jobs.models import JobRun

        burst["job_runs"] = JobRun.objects.filter(scheduled_for=at).count()
    out["burst"] = burst

    out.setdefault("peak_rss_mb_after", {})["burst"] = proc_status()["VmHWM"]

    # 5. the periodic full resync ------------------------------------------------------
    prof.start("resync")
    # Theirs: the 300 s reload is the same code path as the edit's reload (row 3); re-measure it
    # only when that took under RESYNC_RELOAD_MAX seconds.
    out["resync"] = sched.resync(reload=reload_s < args.resync_reload_max)
    prof.stop()

    out["rss"] = proc_status()
    out["end_counts"] = sched.counts()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["ours", "theirs"], required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--label", default="run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--idle-budget", type=float, default=2.0, help="seconds per idle-tick series")
    parser.add_argument("--idle-max", type=int, default=3000)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--edit-budget", type=float, default=30.0, help="stop editing after this many s")
    parser.add_argument("--burst-timeout", type=float, default=60.0)
    parser.add_argument("--phases", choices=["all", "start"], default="all")
    parser.add_argument(
        "--idle-loop-seconds", type=float, default=15.0, help="length of the real idle loop (row 2b)"
    )
    parser.add_argument("--resync-reload-max", type=float, default=20.0)
    parser.add_argument("--profile", choices=["start", "idle", "edit", "burst", "resync"])
    parser.add_argument("--profile-dir")
    args = parser.parse_args()
    result = measure(args)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
