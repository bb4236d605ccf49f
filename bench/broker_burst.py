"""A 10,000-slot burst through beat's claim and publish, on Redis and on RabbitMQ, in one run.

10,000 interval schedules fall due at the same instant. Each measured process
is beat's engine on a fresh copy of the seeded database (``CREATE DATABASE …
TEMPLATE``) with ``BROKER_URL`` set to one broker; it loads, then runs the one
tick at the instant that claims every slot (one fenced INSERT) and publishes
every message (pipelined on Redis, one channel on RabbitMQ). Reported: the
tick's wall time and slots/s, and the messages the broker then holds (must be
all of them). The brokers alternate over ``--repeats``; medians.

    .venv/bin/python bench/broker_burst.py             # ~3 min: 3 repeats per broker
    .venv/bin/python bench/broker_burst.py --repeats 5 --append

Needs PostgreSQL and Redis as in bench/README.md, and RabbitMQ at
127.0.0.1:5672 (guest/guest). Uses databases ``bench_broker_seed`` and
``bench_broker`` (dropped at the end), Redis database 9 and queue
``bench_burst`` on both brokers (emptied before and after each process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.common import (  # noqa: E402
    BURST_QUEUE,
    PYTHON,
    REPO,
    append_results,
    bench_env,
    cpu_model,
    create_database,
    drop_database,
    redis_url,
    run_checked,
    setup_django,
)

SEED_DB = "bench_broker_seed"
RUN_DB = "bench_broker"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
# name: (broker URL, extra environment)
BROKERS = {
    "redis": (redis_url(), {}),
    "rabbitmq": (AMQP_URL, {}),  # publisher confirms (the default)
    "rabbitmq, no confirms": (AMQP_URL, {"BROKER_CONFIRM_PUBLISH": "0"}),
}
INSTANT = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)  # the burst's slot, the same in every process


def seed(schedules: int) -> None:
    """Migrate, then ``schedules`` heartbeat schedules every day on the burst queue, all due at INSTANT."""
    env = bench_env(SEED_DB)
    create_database(SEED_DB)
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"], env, "migrate", timeout=600)
    code = (
        "import django; django.setup()\n"
        "from datetime import datetime\n"
        "from django.db import transaction\n"
        "from django_celery_beat.models import IntervalSchedule\n"
        "from jobs.catalog import publish_catalog\n"
        "from seed import create_alike_schedules, truncate_all\n"
        "truncate_all(); publish_catalog(worker='bench')\n"
        f"instant = datetime.fromisoformat({INSTANT.isoformat()!r})\n"
        "with transaction.atomic():\n"
        "    every = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)\n"
        f"    create_alike_schedules({schedules}, 'bench-burst', 'heartbeat', {BURST_QUEUE!r},"
        f" instant, instant, policy_queue={BURST_QUEUE!r}, interval=every)\n"
    )
    run_checked([PYTHON, "-c", code], {**env, "PYTHONPATH": f"{REPO}:{REPO / 'bench'}"}, "seed", timeout=600)


def child(broker_url: str) -> dict:
    """One measured engine (in a process of its own: the Celery app reads BROKER_URL at import)."""
    setup_django(RUN_DB)
    from scheduler.beat.engine import BeatEngine
    from settings.celery_app import app

    engine = BeatEngine(app, poll_interval=0, fallback_poll_interval=0)
    engine.load(now=INSTANT - timedelta(seconds=1))
    started = time.perf_counter()
    engine.tick(now=INSTANT)
    seconds = time.perf_counter() - started
    engine.close()
    return {"seconds": seconds, "in_broker": settled_queue_length(broker_url)}


def settled_queue_length(broker_url: str, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """The queue's length once it stopped growing (unconfirmed publishes may still be in flight)."""
    length, since, deadline = queue_length(broker_url), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now_length = queue_length(broker_url)
        if now_length != length:
            length, since = now_length, time.monotonic()
    return length


def queue_length(broker_url: str) -> int:
    from kombu import Connection

    with Connection(broker_url) as conn:
        if broker_url.startswith("redis"):
            return int(conn.default_channel.client.llen(BURST_QUEUE))
        return conn.default_channel.queue_declare(BURST_QUEUE, passive=True).message_count


def empty_queue(broker_url: str) -> None:
    """Empty the burst queue; on RabbitMQ declare it first, as a worker consuming it would have.

    (RabbitMQ drops a message routed to a queue nobody declared.)
    """
    from kombu import Connection

    from settings.celery_app import app

    with Connection(broker_url) as conn:
        if broker_url.startswith("redis"):
            conn.default_channel.client.delete(BURST_QUEUE)
            return
        app.amqp.queues.select_add(BURST_QUEUE)  # the queue as a Celery worker declares it
        app.amqp.queues[BURST_QUEUE].bind(conn.default_channel).declare()
        conn.default_channel.queue_purge(BURST_QUEUE)


def measure(name: str, schedules: int) -> dict:
    url, extra_env = BROKERS[name]
    empty_queue(url)
    create_database(RUN_DB, template=SEED_DB)
    env = {**bench_env(RUN_DB), "BROKER_URL": url, **extra_env}
    done = subprocess.run(
        [PYTHON, __file__, "--child", name],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"{name}: the measured process failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    empty_queue(url)
    if figures["in_broker"] != schedules:
        raise RuntimeError(f"{name}: {figures['in_broker']} messages in the broker, not {schedules}")
    return figures


def report(schedules: int, results: dict[str, list[dict]]) -> str:
    lines = [
        f"## A {schedules:,}-slot burst on Redis and on RabbitMQ ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`bench/broker_burst.py`: beat's engine claims and publishes {schedules:,} slots due at one "
        "instant in one tick, on a fresh copy of the seeded PostgreSQL database per process; the "
        f"brokers alternate, {len(results['redis'])} processes each; medians. Machine: {cpu_model()}, "
        "2 CPUs. Every message was in the broker after the tick.",
        "",
        "| broker | tick (claim + publish), median | min – max | slots/s |",
        "|---|---:|---:|---:|",
    ]
    medians = {}
    for name, runs in results.items():
        times = [run["seconds"] for run in runs]
        medians[name] = statistics.median(times)
        lines.append(
            f"| {name} | {medians[name]:.2f} s | {min(times):.2f} – {max(times):.2f} s "
            f"| {schedules / medians[name]:,.0f} |"
        )
    lines += [
        "",
        f"RabbitMQ / Redis: {medians['rabbitmq'] / medians['redis']:.2f}× the time with publisher "
        f"confirms (the default: one round trip per message), "
        f"{medians['rabbitmq, no confirms'] / medians['redis']:.2f}× without "
        "(`BROKER_CONFIRM_PUBLISH=0`).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--child", choices=list(BROKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(BROKERS[args.child][0])))
        return 0
    setup_django(SEED_DB)  # for the Celery app's queue declarations (settings only)
    seed(args.schedules)
    results: dict[str, list[dict]] = {name: [] for name in BROKERS}
    try:
        for repeat in range(args.repeats):
            order = list(BROKERS) if repeat % 2 == 0 else list(reversed(BROKERS))
            for name in order:
                figures = measure(name, args.schedules)
                results[name].append(figures)
                print(f"{name}: {figures['seconds']:.2f} s", flush=True)
    finally:
        drop_database(RUN_DB)
        drop_database(SEED_DB)
    text = report(args.schedules, results)
    print(text)
    if args.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
