"""Dispatch speed: ``dispatch`` per call and ``dispatch_many`` per run, beside bare Celery, in one run.

    .venv/bin/python bench/dispatch_speed.py                   # ~1 min
    .venv/bin/python bench/dispatch_speed.py --calls 300 --batch 5000 --repeats 1

Rows, each on the same machine, database and broker, in one process:

- ``dispatch`` now (``jobs.dispatch``): validate against the catalog, record
  the run and its outbox row, publish after commit, delete the outbox row;
- ``dispatch`` before: ``jobs/client.py`` as of ``--before`` (default
  728a251, the last commit before the split), loaded from git, for the
  before/after figure;
- bare Celery ``app.send_task`` per call: a message, no record, no validation;
- the batch form: ``dispatch_many`` of ``--batch`` runs (one transaction,
  one outbox batch, one pipelined publish), against ``send_task`` in a loop
  over one acquired producer (Celery's fastest plain fan-out).

Per-call figures are medians (and p90) of ``--calls`` calls after a warm-up,
with this process's CPU time per call (what a busy machine inflates least);
batch figures are runs per second, the median of ``--repeats`` batches.
PostgreSQL database ``bench_dispatch`` (created, migrated, dropped at the
end) and Redis database 15, queue ``bench_dispatch`` (deleted before and
after; no worker consumes it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, bench_env, create_database, drop_database, fmt, redis_client, run_checked  # noqa: E402

DB = "bench_dispatch"
REDIS_DB = 15
QUEUE = "bench_dispatch"


def per_call(fn, calls: int) -> dict:
    for _ in range(20):
        fn()  # warm: imports, the catalog copy, the broker connection
    samples = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / calls
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "cpu_ms": cpu_ms,
    }


def rate(fn, n: int, repeats: int) -> dict:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        rates.append(n / (time.perf_counter() - t0))
    return {"per_s": statistics.median(rates), "all": rates}


def load_before(commit: str):
    """``jobs/client.py`` as it was at ``commit``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{commit}:jobs/client.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path("/tmp") / f"jobs_client_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"jobs_client_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(args) -> dict:
    from common import setup_django

    setup_django(DB, REDIS_DB)
    from django.db import connection

    from jobs.catalog import publish_catalog
    from jobs.dispatch import Delivery, dispatch, dispatch_many
    from jobs.models import JobRun, OutboxBatch
    from scheduler.celery import app

    publish_catalog(worker="bench")
    broker = redis_client(REDIS_DB)
    broker.delete(QUEUE)
    before = load_before(args.before)
    out: dict = {"postgresql": connection.cursor().connection.info.server_version}

    def ours() -> None:
        assert dispatch("heartbeat", queue=QUEUE).delivery == Delivery.SENT

    def theirs_before() -> None:
        assert before.dispatch("heartbeat", queue=QUEUE).delivery == "sent"

    def bare_celery() -> None:
        app.send_task("heartbeat", queue=QUEUE)

    # Alternate the three, so a noisy neighbour weighs on each alike.
    series: dict[str, list[dict]] = {"ours": [], "before": [], "celery": []}
    for _ in range(args.repeats):
        series["ours"].append(per_call(ours, args.calls))
        series["before"].append(per_call(theirs_before, args.calls))
        series["celery"].append(per_call(bare_celery, args.calls))
    for name, runs in series.items():
        out[f"{name}_call_ms"] = statistics.median(r["median_ms"] for r in runs)
        out[f"{name}_call_p90_ms"] = statistics.median(r["p90_ms"] for r in runs)
        out[f"{name}_call_cpu_ms"] = statistics.median(r["cpu_ms"] for r in runs)

    def ours_batch(n: int) -> None:
        runs = dispatch_many("heartbeat", [([], {})] * n, queue=QUEUE)
        assert runs[-1].delivery == Delivery.SENT

    def celery_batch(n: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task("heartbeat", queue=QUEUE, producer=producer)

    out["ours_batch"] = rate(ours_batch, args.batch, args.repeats)
    out["celery_batch"] = rate(celery_batch, args.batch, args.repeats)
    out["runs_recorded"] = JobRun.objects.count()
    out["outbox_left"] = OutboxBatch.objects.count()
    out["messages_in_broker"] = broker.llen(QUEUE)
    broker.delete(QUEUE)
    connection.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=500, help="calls per per-call series")
    parser.add_argument("--batch", type=int, default=10_000, help="runs per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="728a251", help="commit whose jobs/client.py is 'before'")
    args = parser.parse_args()
    create_database(DB)
    try:
        run_checked([sys.executable, "manage.py", "migrate", "-v0"], bench_env(DB, REDIS_DB), "migrate", 600)
        out = measure(args)
    finally:
        drop_database(DB)
    heading = f"{args.calls} calls × {args.repeats}; batches of {args.batch:,}"
    print(f"| {heading} | per call (p90) | CPU here | runs/s |")
    print("|---|---:|---:|---:|")
    for name, label in (
        ("ours", "`dispatch` now"),
        ("before", f"`dispatch` before ({args.before})"),
        ("celery", "bare Celery `send_task`"),
    ):
        call, p90, used = out[f"{name}_call_ms"], out[f"{name}_call_p90_ms"], out[f"{name}_call_cpu_ms"]
        print(f"| {label} | {fmt(call)} ms ({fmt(p90)} ms) | {fmt(used)} ms | {1000 / call:,.0f} |")
    print(f"| `dispatch_many` | | | {out['ours_batch']['per_s']:,.0f} |")
    print(f"| `send_task` loop, one producer | | | {out['celery_batch']['per_s']:,.0f} |")
    print("load average at the end: {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
