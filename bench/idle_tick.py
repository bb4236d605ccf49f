"""Idle ``Scheduler.tick()`` at 10,000 schedules through Celery's interface: ours vs DatabaseScheduler.

    .venv/bin/python bench/idle_tick.py                  # 10,000 schedules, 3 fresh processes each, ~3 min
    .venv/bin/python bench/idle_tick.py --size 1000 --repeats 1

What ``celery beat`` calls, and nothing else: ``tick()`` on the scheduler
class, ours being ``scheduler.beat.scheduler.DatabaseBeat`` (leader lease,
connection housekeeping and the engine, as in production), theirs
django-celery-beat's ``DatabaseScheduler`` (``measure.Theirs``, our signal
receivers disconnected). ``bench/measure.py`` times our bare engine; this
times the whole ``tick()`` a beat process runs.

Seeding is ``seed.seed`` (the main bench's schedules: nothing fires within
40 minutes), into a database of its own (``bench_idle_seed``, each measured
process on a fresh copy ``bench_idle``; both dropped at the end). Redis
database 15; nothing is published while idle, and nothing is flushed.

``before`` is ours as it was before f6f7c91 (connection housekeeping in
every tick), for the before/after figure.

Rows: the median (and p90) of ``tick()`` called back to back with nothing
due, and the mean per tick of the real loop (tick, sleep what it returns)
over ``--loop-seconds``, which carries every timed job of an idle beat
(lease renewal, change-log poll, housekeeping). Medians over the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, REPO, bench_env, create_database, drop_database, fmt, ratio, run_checked  # noqa: E402

SEED_DB = "bench_idle_seed"
RUN_DB = "bench_idle"
REDIS_DB = 15


class OursThroughCelery:
    """``DatabaseBeat`` as ``celery beat`` drives it: construct, ``tick()`` until it leads and has loaded."""

    name = "ours"

    def __init__(self, app) -> None:
        self.app = app
        self.sched = None

    def start(self) -> None:
        from scheduler.beat.scheduler import DatabaseBeat

        self.sched = DatabaseBeat(app=self.app)
        deadline = time.monotonic() + 60
        while self.sched.engine is None or not self.sched.engine.loaded:
            if time.monotonic() > deadline:
                raise RuntimeError("DatabaseBeat did not take the lease within 60 s")
            time.sleep(min(self.sched.tick(), 0.1))

    def counts(self) -> dict:
        return {"entries": len(self.sched.engine.entries), "heap": len(self.sched.engine.heap)}

    def tick(self) -> float:
        return self.sched.tick()

    def nothing_due(self) -> bool:
        from django.utils import timezone

        heap = self.sched.engine.heap
        return not heap or heap[0].due_at > timezone.now()

    def close(self) -> None:
        self.sched.close()


def child(args) -> None:
    """One measured process (ours, ours as before f6f7c91, theirs): start, warm, idle ticks, the real loop."""
    from common import setup_django

    setup_django(RUN_DB, REDIS_DB)
    import measure

    from scheduler.celery import app

    if args.child == "theirs":
        measure.disconnect_our_signals()
        sched = measure.Theirs(app)
    else:
        if args.child == "before":
            import scheduler.beat.scheduler

            # Before f6f7c91, tick() ran the connection housekeeping every time.
            scheduler.beat.scheduler.HOUSEKEEPING_SECONDS = 0.0
        sched = OursThroughCelery(app)
    t0 = time.perf_counter()
    sched.start()
    out = {"engine": args.child, "start_s": time.perf_counter() - t0, **sched.counts()}
    for _ in range(20):
        sched.tick()  # warm
    back_to_back = measure.timed_loop(
        sched.tick, budget=args.budget, max_n=args.max_ticks, keep=sched.nothing_due
    )
    out["tick_ms"] = measure.summary(back_to_back)
    out["loop_ms"] = measure.summary(measure.idle_loop(sched, args.loop_seconds))
    if hasattr(sched, "close"):
        sched.close()
    print(json.dumps(out))


def run_child(engine: str, args) -> dict:
    create_database(RUN_DB, template=SEED_DB)
    cmd = [PYTHON, __file__, "--child", engine, "--budget", str(args.budget)]
    cmd += ["--max-ticks", str(args.max_ticks), "--loop-seconds", str(args.loop_seconds)]
    done = subprocess.run(
        cmd, cwd=REPO, env=bench_env(RUN_DB, REDIS_DB), capture_output=True, text=True, timeout=900
    )
    if done.returncode:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seed_template(size: int) -> dict:
    create_database(SEED_DB)
    env = bench_env(SEED_DB, REDIS_DB)
    run_checked([PYTHON, "manage.py", "migrate", "-v0"], env, "migrate", 600)
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import django; django.setup(); "
        "from datetime import UTC, datetime, timedelta; import seed; "
        f"print(json.dumps(seed.seed({size}, datetime.now(UTC), timedelta(minutes=40)), default=str))"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode:
        raise RuntimeError(f"seeding failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of back-to-back ticks")
    parser.add_argument("--max-ticks", type=int, default=20_000)
    parser.add_argument("--loop-seconds", type=float, default=12.0, help="length of the real loop")
    parser.add_argument("--child", choices=["ours", "before", "theirs"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    started = datetime.now(UTC)
    seeded = seed_template(args.size)
    results: dict[str, list[dict]] = {"ours": [], "before": [], "theirs": []}
    try:
        for repeat in range(args.repeats):
            order = ["ours", "before", "theirs"] if repeat % 2 == 0 else ["theirs", "before", "ours"]
            for engine in order:
                results[engine].append(run_child(engine, args))
                print(
                    f"  {engine} #{repeat + 1}: {results[engine][-1]['tick_ms']['median']:.4f} ms", flush=True
                )
    finally:
        drop_database(RUN_DB)
        drop_database(SEED_DB)

    def med(engine: str, key: str, stat: str) -> float:
        return statistics.median(r[key][stat] for r in results[engine])

    ours, theirs = med("ours", "tick_ms", "median"), med("theirs", "tick_ms", "median")
    ours_loop, theirs_loop = med("ours", "loop_ms", "mean"), med("theirs", "loop_ms", "mean")
    print(f"\nIdle Scheduler.tick() at {args.size:,} schedules ({started:%Y-%m-%d %H:%M} UTC), seed {seeded}")
    before, before_loop = med("before", "tick_ms", "median"), med("before", "loop_ms", "mean")
    print(f"ours before f6f7c91 (housekeeping every tick): median {fmt(before, 4)} ms, ", end="")
    print(f"real loop mean {fmt(before_loop, 4)} ms")
    print("| | ours (DatabaseBeat) | DatabaseScheduler | ratio |")
    print("|---|---:|---:|---:|")
    row = "| tick() back to back, {} | {} ms | {} ms | {} |"
    print(row.format("median", fmt(ours, 4), fmt(theirs, 4), ratio(theirs, ours)))
    p90o, p90t = med("ours", "tick_ms", "p90"), med("theirs", "tick_ms", "p90")
    print(row.format("p90", fmt(p90o, 4), fmt(p90t, 4), ratio(p90t, p90o)))
    print(
        f"| real loop, mean per tick ({args.loop_seconds:.0f} s) | {fmt(ours_loop, 4)} ms | "
        f"{fmt(theirs_loop, 4)} ms | {ratio(theirs_loop, ours_loop)} |"
    )
    print("load average at the end: {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
