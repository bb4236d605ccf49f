"""Alert detection latency, end to end: real beat, workers and ``alertd``, pages caught by a local webhook.

    .venv/bin/python bench/alerting_latency.py            # ~4 min
    .venv/bin/python bench/alerting_latency.py --append   # and add the section to bench/results.md

What runs (PostgreSQL database ``bench_alerting``, created, migrated and
dropped; Redis database 14, flushed): one worker on ``default`` (concurrency
2), one worker on ``bench_busy`` (concurrency 1), one beat, one ``alertd``
with the platform's default cycle (``ALERT_CHECK_INTERVAL`` 5 s), and a
webhook receiver on 127.0.0.1 that notes when each page arrives. The
platform's defaults are kept except ``ALERT_BEAT_DOWN_AFTER`` = 30 s (60 s
by default; shorter to keep the bench short: the figure is read against it).

Each page's latency is measured from the moment its condition became true
to the moment the receiver had it:

- **failed**: ``--schedules`` schedules of ``diagnostics.fail`` every 30 s;
  from the failed run's ``finished_at`` to its trigger page;
- **recovered**: the same schedules switched to ``diagnostics.sleep`` (0 s)
  through the ORM (the change log); from the first successful run's
  ``finished_at`` to the resolve page;
- **missed**: ``--schedules`` schedules every 30 s with a 15 s grace on the
  ``bench_busy`` queue, whose only worker is kept busy by long manual runs;
  from slot + grace to the trigger page;
- **beat down**: the beat SIGKILLed; from the kill, and from its last lease
  renewal + ``ALERT_BEAT_DOWN_AFTER``, to the trigger page.

Targets (issue 9): missed within grace + 10 s, beat down within its
threshold + 10 s, recovery within 10 s of the successful run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ALERTING_REDIS_DB,
    PYTHON,
    REPO,
    append_results,
    bench_env,
    create_database,
    drop_database,
    flush_bench_redis,
    fmt,
    run_checked,
    setup_django,
    stop_process,
)

DB = "bench_alerting"
REDIS_DB = ALERTING_REDIS_DB
BUSY_QUEUE = "bench_busy"
BEAT_DOWN_AFTER = 30
MISSED_GRACE = 15
EVERY = 30


class Pages:
    """The webhook receiver: every POST's JSON body with the wall time it arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with pages.lock:
                    pages.received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def first(self, event: str, kind: str, incident_ids: set[int] | None = None) -> dict[int, float]:
        """Arrival time of the first ``event`` page per incident id, for incidents of ``kind``."""
        found: dict[int, float] = {}
        with self.lock:
            for at, body in self.received:
                incident = body.get("incident_id")
                if body.get("event") != event or body.get("kind") != kind or incident is None:
                    continue
                if incident_ids is None or incident in incident_ids:
                    found.setdefault(incident, at)
        return found


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def celery(*args: str) -> list[str]:
    return [PYTHON, "-m", "celery", "-A", "scheduler", *args]


def worker(queues: str, concurrency: int, name: str) -> list[str]:
    return celery(
        "worker", "--pool", "prefork", "--concurrency", str(concurrency), "--queues", queues,
        "--without-mingle", "--without-gossip", "--loglevel", "WARNING", "--hostname", f"{name}@%h",
    )  # fmt: skip


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def make_schedules(n: int) -> tuple[list[int], list[int]]:
    """``n`` failing schedules on ``default`` and ``n`` schedules on the busy queue; their ids."""
    from django.utils import timezone
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from scheduler.models import SchedulePolicy

    every, _ = IntervalSchedule.objects.get_or_create(every=EVERY, period=IntervalSchedule.SECONDS)
    anchor = timezone.now() + timedelta(seconds=5)
    failing, starved = [], []
    for i in range(n):
        schedule = PeriodicTask.objects.create(
            name=f"bench fails {i}", task="diagnostics.fail", interval=every
        )
        SchedulePolicy.objects.update_or_create(task=schedule, defaults={"anchor": anchor})
        failing.append(schedule.pk)
        schedule = PeriodicTask.objects.create(
            name=f"bench starved {i}", task="diagnostics.sleep", kwargs='{"seconds": 0}', interval=every
        )
        SchedulePolicy.objects.update_or_create(
            task=schedule, defaults={"anchor": anchor, "queue": BUSY_QUEUE, "grace": MISSED_GRACE}
        )
        starved.append(schedule.pk)
    return failing, starved


def latencies(pages: dict[int, float], since: dict[int, datetime]) -> list[float]:
    return [pages[i] - since[i].timestamp() for i in pages if i in since]


def summary(values: list[float]) -> str:
    if not values:
        return "none arrived"
    return f"median {fmt(statistics.median(values))} s, max {fmt(max(values))} s (n = {len(values)})"


def measure(n: int, logs: Path) -> dict[str, object]:
    from django.db.models import Min

    from alerts.models import Channel, Incident, IncidentKind
    from jobs.dispatch import dispatch
    from jobs.models import JobRun, RunStatus
    from scheduler.models import BeatLease

    pages = Pages()
    Channel.objects.create(name="bench", kind="webhook", target=pages.url, secret="s" * 32, is_default=True)
    env = {**bench_env(DB, REDIS_DB), "ALERT_BEAT_DOWN_AFTER": str(BEAT_DOWN_AFTER), "LOG_LEVEL": "INFO"}
    processes = {
        "worker": start("worker", worker("default,heartbeat", 2, "bench-default"), env, logs),
        "busy": start("busy", worker(BUSY_QUEUE, 1, "bench-busy"), env, logs),
    }
    try:
        # Three long runs ahead of every scheduled one keep the busy queue's only worker taken.
        for _ in range(3):
            dispatch("diagnostics.sleep", kwargs={"seconds": 55}, queue=BUSY_QUEUE)
        failing, starved = make_schedules(n)
        processes["beat"] = start("beat", celery("beat", "--loglevel", "INFO"), env, logs)
        processes["alertd"] = start("alertd", [PYTHON, "manage.py", "alertd"], env, logs)

        def incidents(kind: str, ids: list[int]) -> dict[int, int]:
            return dict(
                Incident.objects.filter(kind=kind, schedule_id__in=ids).values_list("pk", "schedule_id")
            )

        # Failed: the first failed run of each failing schedule.
        wait_for("failed pages", lambda: len(pages.first("trigger", IncidentKind.FAILED)) >= n, 180)
        failed = incidents(IncidentKind.FAILED, failing)
        failed_at = dict(
            JobRun.objects.filter(schedule_id__in=failing, status=RunStatus.FAILED)
            .values("schedule_id")
            .annotate(first=Min("finished_at"))
            .values_list("schedule_id", "first")
        )
        failed_pages = pages.first("trigger", IncidentKind.FAILED, set(failed))
        failed_lat = latencies(failed_pages, {i: failed_at[s] for i, s in failed.items()})

        # Recovered: switch the failing schedules to a job that succeeds.
        from django_celery_beat.models import PeriodicTask

        switched = datetime.now(UTC)
        for schedule in PeriodicTask.objects.filter(pk__in=failing):
            schedule.task, schedule.kwargs = "diagnostics.sleep", '{"seconds": 0}'
            schedule.save()
        wait_for("resolve pages", lambda: len(pages.first("resolve", IncidentKind.FAILED)) >= n, 180)
        good_at = dict(
            JobRun.objects.filter(schedule_id__in=failing, status=RunStatus.SUCCEEDED)
            .filter(finished_at__gt=switched)
            .values("schedule_id")
            .annotate(first=Min("finished_at"))
            .values_list("schedule_id", "first")
        )
        resolve_pages = pages.first("resolve", IncidentKind.FAILED, set(failed))
        resolve_lat = latencies(resolve_pages, {i: good_at[s] for i, s in failed.items() if s in good_at})

        # Missed: the first slot of each starved schedule, plus its grace.
        wait_for("missed pages", lambda: len(pages.first("trigger", IncidentKind.MISSED)) >= n, 240)
        missed = incidents(IncidentKind.MISSED, starved)
        first_slot = dict(
            JobRun.objects.filter(schedule_id__in=starved)
            .values("schedule_id")
            .annotate(first=Min("scheduled_for"))
            .values_list("schedule_id", "first")
        )
        due = {i: first_slot[s] + timedelta(seconds=MISSED_GRACE) for i, s in missed.items()}
        missed_lat = latencies(pages.first("trigger", IncidentKind.MISSED, set(missed)), due)

        # Beat down: SIGKILL the only beat.
        renewed = BeatLease.objects.values_list("renewed_at", flat=True).first()
        killed = time.time()
        processes["beat"].kill()
        processes["beat"].wait()
        renewed = BeatLease.objects.values_list("renewed_at", flat=True).first() or renewed
        beat_down_paged = lambda: pages.first("trigger", IncidentKind.BEAT_DOWN)  # noqa: E731
        wait_for("beat-down page", beat_down_paged, BEAT_DOWN_AFTER + 90)
        beat_page = min(pages.first("trigger", IncidentKind.BEAT_DOWN).values())
        beat_pages = len(pages.first("trigger", IncidentKind.BEAT_DOWN))
        per_schedule_during = [
            body
            for at, body in pages.received
            if at > killed and body.get("event") == "trigger" and body.get("kind") != IncidentKind.BEAT_DOWN
        ]
        return {
            "failed": failed_lat,
            "recovered": resolve_lat,
            "missed": missed_lat,
            "beat_down_since_kill": beat_page - killed,
            "beat_down_since_due": beat_page - (renewed.timestamp() + BEAT_DOWN_AFTER) if renewed else None,
            "beat_down_pages": beat_pages,
            "other_pages_while_beat_down": len(per_schedule_during),
            "pages_total": len(pages.received),
        }
    finally:
        for process in processes.values():
            stop_process(process)
        pages.server.shutdown()


def report(figures: dict, n: int, seconds: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    since_due = figures["beat_down_since_due"]
    return "\n".join(
        [
            f"## Alert detection latency, end to end ({when})",
            "",
            f"`bench/alerting_latency.py`: one beat, two prefork workers, one `alertd` (cycle "
            f"{os.environ.get('ALERT_CHECK_INTERVAL', '5')} s, the default), a local webhook receiver; "
            f"{n} schedules per condition, every {EVERY} s. Latency = condition true → page received.",
            "",
            "| condition | measured from | latency | target |",
            "|---|---|---|---|",
            f"| failed | the run's end | {summary(figures['failed'])} | |",
            f"| recovered | the first good run's end | {summary(figures['recovered'])} | ≤ 10 s |",
            f"| missed | slot + grace ({MISSED_GRACE} s) | {summary(figures['missed'])} | ≤ 10 s |",
            f"| beat down (SIGKILL) | last lease renewal + {BEAT_DOWN_AFTER} s | "
            f"{fmt(since_due) + ' s' if since_due is not None else '?'} "
            f"({fmt(figures['beat_down_since_kill'])} s after the kill) | ≤ 10 s |",
            "",
            f"- beat-down pages: {figures['beat_down_pages']}; other trigger pages while beat was down: "
            f"{figures['other_pages_while_beat_down']}; pages in all: {figures['pages_total']}",
            f"- measured in {seconds:.0f} s; load average at the end: {load}",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=3, help="schedules per condition (default 3)")
    parser.add_argument("--append", action="store_true", help="append the section to bench/results.md")
    parser.add_argument("--keep-db", action="store_true")
    options = parser.parse_args()
    started = time.monotonic()
    drop_database(DB)
    create_database(DB)
    env = bench_env(DB, REDIS_DB)
    run_checked([PYTHON, "manage.py", "migrate", "-v0"], env, "migrate", 300)
    run_checked([PYTHON, "manage.py", "publish_catalog"], env, "publish_catalog", 120)
    flush_bench_redis(REDIS_DB)
    setup_django(DB, REDIS_DB)
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp/bench-alerting-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        figures = measure(options.schedules, logs)
    finally:
        from django.db import connections

        connections.close_all()
        flush_bench_redis(REDIS_DB)
        if not options.keep_db:
            drop_database(DB)
    text = report(figures, options.schedules, time.monotonic() - started)
    print(text)
    print(json.dumps(figures, default=str))
    if options.append:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
