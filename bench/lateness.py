"""End-to-end lateness with a real worker: ``run.py --lateness`` (or ``--lateness-only``).

For each scheduler in turn, on a fresh database: a real Celery worker
(``celery -A bench.probe worker``, prefork, concurrency 2) consuming one
queue, then ``n`` schedules ``* * * * *`` (UTC) of the ``bench.probe`` task,
then a real ``celery beat`` with that scheduler. Every run of the probe
records its start time; lateness = start − scheduled time, over the slots of
``minutes`` whole minutes that begin at least 20 s after beat was started.

Scheduled time: our engine's messages carry it (``scheduled_for`` header);
DatabaseScheduler's carry none, so for it the slot is taken to be the minute
boundary at or before the start (the schedules are ``* * * * *``), which is
right as long as no run starts a minute or more late (checked: a schedule
with two runs attributed to one slot is counted).

Both schedulers publish the same probe task, so the worker does the same
work for both; ours still claims a ``JobRun`` per slot in its transaction.
The probe is published in the job catalog (``JobDefinition``) like any
scheduled job: the platform's ``pre_save`` validation, which
DatabaseScheduler's ``sync()`` triggers when it saves ``last_run_at``,
refuses a task the catalog does not know (and stops that beat).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LATENESS_LIST,
    LATENESS_QUEUE,
    PYTHON,
    REPO,
    RUN_DB,
    SEED_DB,
    bench_env,
    create_database,
    flush_bench_redis,
    fmt,
    ratio,
    redis_client,
    run_checked,
    setup_django,
)

SCHEDULERS = {
    "ours": "scheduler.beat.scheduler:DatabaseBeat",
    "theirs": "django_celery_beat.schedulers:DatabaseScheduler",
}
LEAD = 20.0  # the first slot counted is at least this long after beat started


class Proc:
    """A subprocess in its own session, stopped by its own process group id."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # children left in our group (prefork pool)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


def celery(*args: str) -> list[str]:
    return [PYTHON, "-m", "celery", "-A", "bench.probe", *args]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one(engine: str, n: int, minutes: int, log) -> dict:
    import seed
    from django.db import connections

    connections.close_all()
    seed.truncate_all()
    connections.close_all()
    create_database(RUN_DB, template=SEED_DB)  # the migrated schema, no schedules
    flush_bench_redis()
    env = bench_env(RUN_DB)
    broker = redis_client()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-lateness-{engine}-"))
    worker = Proc(
        "worker",
        celery(
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--queues",
            LATENESS_QUEUE,
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            f"bench-lateness-{os.getpid()}@%h",
        ),
        env,
        tmp,
    )
    beat = None
    try:
        deadline = time.monotonic() + 90
        while not broker.get("bench:lateness:ready"):
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.tail()}")
            time.sleep(0.2)
        run_checked([PYTHON, str(Path(__file__)), "seed", str(n)], env, "seeding", 120)
        beat = Proc(
            "beat",
            celery(
                "beat",
                "--scheduler",
                SCHEDULERS[engine],
                "--loglevel",
                "WARNING",
                "--pidfile",
                str(tmp / "beat.pid"),
                "--schedule",
                str(tmp / "beat-schedule"),
            ),
            env,
            tmp,
        )
        started = time.time()
        first = math.ceil((started + LEAD) / 60) * 60
        last = first + (minutes - 1) * 60
        log(
            f"  {engine}: beat started; counting slots {datetime.fromtimestamp(first, UTC):%H:%M}–"
            f"{datetime.fromtimestamp(last, UTC):%H:%M} UTC"
        )
        expected = n * minutes
        stop_at = last + 60  # at most a minute to drain the last slot
        while time.time() < stop_at:
            if not beat.alive():
                raise RuntimeError(f"beat exited:\n{beat.tail()}")
            if time.time() > last + 1 and broker.llen(LATENESS_QUEUE) == 0:
                records = [json.loads(x) for x in broker.lrange(LATENESS_LIST, 0, -1)]
                if sum(1 for r in records if r["start"] >= last) >= n:
                    break
            time.sleep(0.5)
        beat.stop()
        worker.stop()
        records = [json.loads(x) for x in broker.lrange(LATENESS_LIST, 0, -1)]
    finally:
        if beat is not None:
            beat.stop()
        worker.stop()
    late, per_slot = [], {}
    outside = 0
    for r in records:
        if r.get("scheduled_for"):
            slot = datetime.fromisoformat(r["scheduled_for"]).timestamp()
        else:
            slot = math.floor(r["start"] / 60) * 60
        if not first <= slot <= last:
            outside += 1
            continue
        late.append(r["start"] - slot)
        key = (r.get("schedule") or r.get("name"), slot)
        per_slot[key] = per_slot.get(key, 0) + 1
    return {
        "engine": engine,
        "expected": expected,
        "counted": len(late),
        "outside_window": outside,
        "doubled": sum(1 for c in per_slot.values() if c > 1),
        "p50_s": percentile(late, 0.5) if late else None,
        "p99_s": percentile(late, 0.99) if late else None,
        "max_s": max(late) if late else None,
        "mean_s": statistics.fmean(late) if late else None,
        "slot_source": "scheduled_for header"
        if engine == "ours"
        else "minute boundary at or before the start",
    }


def run(n: int, minutes: int, log) -> str:
    by = {}
    for engine in ("ours", "theirs"):
        try:
            by[engine] = one(engine, n, minutes, log)
        except Exception as exc:  # noqa: BLE001 (report it, keep the other scheduler's result)
            by[engine] = {"engine": engine, "error": str(exc).splitlines()[0][:300]}
        log(f"  {engine}: {by[engine]}")
    failed = [f"- {e}: FAILED: {r['error']}" for e, r in by.items() if "error" in r]
    for engine, r in by.items():
        if "error" in r:
            by[engine] = {"expected": n * minutes, "counted": 0, "outside_window": "–", "doubled": "–"}
            by[engine].update({k: None for k in ("p50_s", "p99_s", "max_s")})
    lines = [
        "",
        "## End-to-end lateness (real worker)",
        "",
        f"{n:,} schedules `* * * * *` (UTC) for {minutes} minutes; one worker, prefork, concurrency 2; "
        "lateness = task start − scheduled time. DatabaseScheduler's messages carry no scheduled time: its "
        "slot is the minute boundary at or before the task's start (valid while no run is a minute late; "
        "'doubled' counts schedules with two runs attributed to one slot).",
        "",
        "| measure | ours | DatabaseScheduler | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, name in (
        ("p50_s", "p50 lateness (s)"),
        ("p99_s", "p99 lateness (s)"),
        ("max_s", "max lateness (s)"),
    ):
        lines.append(
            f"| {name} | {fmt(by['ours'][key])} | {fmt(by['theirs'][key])} | "
            f"{ratio(by['theirs'][key], by['ours'][key])} |"
        )
    lines.append(
        f"| runs counted / expected | {by['ours']['counted']:,} / {by['ours']['expected']:,} | "
        f"{by['theirs']['counted']:,} / {by['theirs']['expected']:,} | |"
    )
    lines.append(
        f"| runs outside the counted slots / doubled | {by['ours']['outside_window']} / "
        f"{by['ours']['doubled']} | {by['theirs']['outside_window']} / {by['theirs']['doubled']} | |"
    )
    return "\n".join(lines + ["", *failed]) + "\n"


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "seed":
    setup_django(RUN_DB)
    import seed

    seed.seed_lateness(int(sys.argv[2]), LATENESS_QUEUE)
