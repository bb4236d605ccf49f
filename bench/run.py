"""Our beat engine against django-celery-beat's DatabaseScheduler, side by side, in one run.

    .venv/bin/python bench/run.py --sizes 1000,10000,100000      # ~15 min; prints and writes bench/results.md
    .venv/bin/python bench/run.py --sizes 1000 --repeats 1        # a quick look
    .venv/bin/python bench/run.py --lateness-only                 # end-to-end lateness, real worker (~13 min)
    .venv/bin/python bench/run.py --takeover-only                 # leader failover, real beats (~3 min)

For every size it seeds a PostgreSQL database (``bench_beat_seed``, created and
dropped here) with half crontab, half interval schedules, then measures each
scheduler in its own fresh subprocess (``bench/measure.py``) on a fresh copy of
that database (``CREATE DATABASE … TEMPLATE``), publishing to Redis database
``REDIS_DB`` (flushed; no other database is touched). The leader failover
section (``bench/takeover.py``, after the lateness section; the only section
with ``--takeover-only``) uses its own database ``bench_takeover`` and Redis
database ``TAKEOVER_REDIS_DB``, so it can run beside the main bench. See
bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH,
    PYTHON,
    REPO,
    RUN_DB,
    SEED_DB,
    admin_connection,
    bench_env,
    cpu_model,
    create_database,
    drop_database,
    flush_bench_redis,
    fmt,
    ratio,
    redis_client,
    run_checked,
    setup_django,
)

QUIET_WINDOW = timedelta(minutes=40)  # nothing seeded fires within this of seeding
MEASURE_TIMEOUT = 900  # seconds, per measured subprocess


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------
def environment() -> list[str]:
    import celery
    import django
    import django_celery_beat
    import kombu

    cpu = cpu_model()
    with admin_connection() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    info = redis_client().info("server")
    git = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %ci %s"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "scheduler", "jobs", "settings"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    changed = sorted({line[3:] for line in dirty if line.strip()})
    if len(changed) > 4:
        changed = [f"{len(changed)} files of scheduler/, jobs/, settings/"]
    return [
        f"code: {git.stdout.strip()}"
        + (f" + uncommitted changes in {', '.join(changed)}" if changed else ""),
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"CPU: {cpu} × {os.cpu_count()} (shared with PostgreSQL and Redis)",
        f"Python {platform.python_version()}, Django {django.__version__}, celery {celery.__version__}, "
        f"kombu {kombu.__version__}, django-celery-beat {django_celery_beat.__version__}",
        f"PostgreSQL {pg} and Redis {info.get('redis_version')} on 127.0.0.1",
        "load average at start (1/5/15 min): " + " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    ]


# --------------------------------------------------------------------------------------
# Running the measured processes
# --------------------------------------------------------------------------------------
def run_measure(engine: str, label: str, extra: list[str], log) -> dict | None:
    """A fresh copy of the seeded database, then one measured subprocess on it."""
    create_database(RUN_DB, template=SEED_DB)
    out = BENCH / f".tmp-{engine}-{label}.json"
    out.unlink(missing_ok=True)
    cmd = [
        PYTHON,
        str(BENCH / "measure.py"),
        "--engine",
        engine,
        "--db",
        RUN_DB,
        "--out",
        str(out),
        "--label",
        label,
        *extra,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=bench_env(RUN_DB), timeout=MEASURE_TIMEOUT, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        log(f"    {engine} {label}: timed out after {MEASURE_TIMEOUT} s")
        return None
    if proc.returncode != 0 or not out.exists():
        log(f"    {engine} {label}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
        return None
    result = json.loads(out.read_text())
    out.unlink()
    result["process_seconds"] = time.monotonic() - started
    return result


def seed_size(n: int, cron_rows: int) -> dict:
    """Seed the template database (this process holds the Django connection; closed after)."""
    import seed
    from django.db import connections

    started = time.monotonic()
    info = seed.seed(n, datetime.now(UTC), QUIET_WINDOW, cron_rows=cron_rows)
    connections.close_all()  # a template must have no open connection
    info["seed_seconds"] = time.monotonic() - started
    return info


# --------------------------------------------------------------------------------------
# Aggregation and the table
# --------------------------------------------------------------------------------------
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per engine: medians over the runs (full runs for everything but start and RSS)."""
    agg: dict[str, dict] = {}
    for engine, results in runs.items():
        full = [r for r in results if "burst" in r]
        a: dict = {"runs": len(results), "full_runs": len(full)}
        a["start_s"] = med([r["start"]["wall_s"] for r in results])
        a["start_cpu_s"] = med([r["start"]["cpu_s"] for r in results])
        a["entries"] = med([r["start"]["entries"] for r in results])
        a["rss_mb"] = med([r["rss"]["VmHWM"] for r in full] or [r["rss"]["VmHWM"] for r in results])
        a["rss_baseline_mb"] = med([r["rss_baseline_mb"] for r in results])
        a["idle_ms"] = med([r["idle_tick_ms"].get("median") for r in full])
        a["idle_p90_ms"] = med([r["idle_tick_ms"].get("p90") for r in full])
        a["idle_n"] = sum(r["idle_tick_ms"]["n"] for r in full)
        if engine == "ours":
            # The mean, not the median: it carries the fallback poll every 5 s.
            a["idle_poll_ms"] = med([r["idle_tick_with_poll_ms"].get("mean") for r in full])
            a["idle_poll_p90_ms"] = med([r["idle_tick_with_poll_ms"].get("p90") for r in full])
            a["fallback_poll_ms"] = med([r["fallback_poll_tick_ms"].get("median") for r in full])
            direct = [d for r in full for d in r.get("edit_apply_direct", [])]
            a["edit_direct_wall_ms"] = med([d["apply_wall_ms"] for d in direct])
            a["edit_direct_cpu_ms"] = med([d["apply_cpu_ms"] for d in direct])
            a["edit_direct_ok"] = all(d["visible"] for d in direct)
        else:
            a["idle_poll_ms"] = a["idle_ms"]  # every DatabaseScheduler tick queries PeriodicTasks
            a["idle_poll_p90_ms"] = a["idle_p90_ms"]
            a["schedule_changed_ms"] = med([r["schedule_changed_ms"].get("median") for r in full])
        edits = [e for r in full for e in r["edits"]]
        a["edits_n"] = len(edits)
        a["edits_failed"] = sum(1 for e in edits if e["visible_s"] is None)
        a["edit_visible_s"] = med([e["visible_s"] for e in edits])
        a["edit_visible_max_s"] = max(
            (e["visible_s"] for e in edits if e["visible_s"] is not None), default=None
        )
        a["edit_tick_wall_ms"] = med([e["tick_wall_ms"] for e in edits])
        a["edit_tick_cpu_ms"] = med([e["tick_cpu_ms"] for e in edits])
        bursts = [r["burst"] for r in full]
        a["burst_count"] = bursts[0]["count"] if bursts else None
        a["burst_complete"] = all(b["complete"] for b in bursts) if bursts else None
        a["burst_s"] = med([b["seconds"] if b["complete"] else b.get("projected_seconds") for b in bursts])
        a["burst_rate"] = med([b["slots_per_s"] for b in bursts])
        a["burst_sent"] = med([b["in_broker"] for b in bursts])
        a["burst_loop_s"] = med([b["loop_seconds"] for b in bursts])
        a["burst_prep_s"] = med([b["prepare"]["apply_wall_s"] for b in bursts])
        a["burst_stray"] = sum(b["stray_idle_queue"] for b in bursts)
        a["burst_slack_ok"] = all(b.get("slack_before_instant_s", 1) > 0 for b in bursts)
        resyncs = [r["resync"] for r in full]
        a["resync_s"] = med([x.get("wall_s") for x in resyncs])
        a["resync_step_s"] = med([x.get("longest_step_s") for x in resyncs])
        a["resync_steps"] = med([x.get("steps") for x in resyncs])
        a["resync_sync_s"] = med([x.get("sync_wall_s") for x in resyncs])
        a["resync_dirty"] = med([x.get("dirty_entries_synced") for x in resyncs])
        agg[engine] = a
    return agg


def table(results: dict[int, dict], env: list[str], seeds: dict[int, dict], burst_timeout: float) -> str:
    lines = ["# Beat benchmark: our engine vs django-celery-beat DatabaseScheduler", ""]
    lines += [f"- {line}" for line in env]
    lines += [
        "- ratio = DatabaseScheduler / ours: above 1 means ours is faster or smaller.",
        "- Timings are medians over the repeats (n in the notes); see bench/README.md for each row.",
        "",
        "| schedules | row | ours | DatabaseScheduler | ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for n, agg in results.items():
        o, t = agg.get("ours", {}), agg.get("theirs", {})
        if not o or not t:
            lines.append(f"| {n:,} | (a scheduler failed: see the log) | | | |")
            continue
        burst = o.get("burst_count")
        n_s = f"{n:,}"

        def row(name, ov, tv, digits=3, n_s=n_s):
            lines.append(f"| {n_s} | {name} | {fmt(ov, digits)} | {fmt(tv, digits)} | {ratio(tv, ov)} |")

        row("1. start to first tick (s)", o["start_s"], t["start_s"])
        row("2a. idle tick, heap + change notification check (ms)", o["idle_ms"], t["idle_ms"])
        row(
            "2b. idle tick incl. change check, mean of the real loop (ms)",
            o["idle_poll_ms"],
            t["idle_poll_ms"],
        )
        row(
            "↳ ours: the tick that reads the change log (fallback, every 5 s) (ms)",
            o["fallback_poll_ms"],
            None,
        )
        row("3a. one edit → visible, wall (s)", o["edit_visible_s"], t["edit_visible_s"])
        row(
            "3b. one edit: scheduler tick applying it, wall (ms)",
            o["edit_tick_wall_ms"],
            t["edit_tick_wall_ms"],
        )
        row(
            "3c. one edit: scheduler tick applying it, CPU (ms)", o["edit_tick_cpu_ms"], t["edit_tick_cpu_ms"]
        )
        t_burst = fmt(t["burst_s"])
        if not t["burst_complete"]:
            t_burst = f"≈{t_burst} (projected: {fmt(t['burst_sent'])} sent in {burst_timeout:.0f} s)"
        lines.append(
            f"| {n_s} | 4a. burst: {burst:,} slots due in one second → all in broker (s) | "
            f"{fmt(o['burst_s'])} | {t_burst} | {ratio(t['burst_s'], o['burst_s'])} |"
        )
        lines.append(
            f"| {n_s} | 4b. burst throughput (slots/s) | {fmt(o['burst_rate'])} | "
            f"{fmt(t['burst_rate'])} | {ratio(o['burst_rate'], t['burst_rate'])} |"
        )
        row("5. beat peak RSS, VmHWM (MB)", o["rss_mb"], t["rss_mb"])
        lines.append(
            f"| {n_s} | ↳ of which process baseline before loading (MB) | {fmt(o['rss_baseline_mb'])} | "
            f"{fmt(t['rss_baseline_mb'])} | |"
        )
        lines.append(f"| {n_s} | ↳ schedules held in memory | {o['entries']:,.0f} | {t['entries']:,.0f} | |")
        lines.append(
            f"| {n_s} | ↳ periodic full resync, every 300 s: longest tick (s) | {fmt(o['resync_step_s'])} | "
            f"{fmt(t['resync_s']) if t['resync_s'] is not None else '= row 3b'} | "
            f"{ratio(t['resync_s'] or (t['edit_tick_wall_ms'] or 0) / 1000, o['resync_step_s'])} |"
        )
        lines.append(
            f"| {n_s} | ↳ periodic full resync: whole cycle ({o['resync_steps'] or 0:.0f} ticks, ours) (s) "
            f"| {fmt(o['resync_s'])} | | |"
        )
        s = seeds.get(n, {})
        notes.append(
            f"- {n:,}: ours {o['runs']} runs, DatabaseScheduler {t['runs']} start(s) of which "
            f"{t['full_runs']} full; "
            f"idle ticks timed: ours {o['idle_n']}, theirs {t['idle_n']}; edits: ours {o['edits_n']}, theirs "
            f"{t['edits_n']} (failed: {o['edits_failed']}/{t['edits_failed']}); "
            f"{s.get('crontab', 0):,} crontab ({s.get('distinct_crontab_rows', 0):,} distinct rows, "
            "16 zones) + "
            f"{s.get('interval', 0):,} interval schedules."
        )
        notes.append(
            f"  ours: start CPU {fmt(o['start_cpu_s'])} s; idle tick p90 {fmt(o['idle_p90_ms'])} ms, "
            "real idle loop p90 "
            f"{fmt(o['idle_poll_p90_ms'])} ms; edit visible max {fmt(o['edit_visible_max_s'])} s; "
            f"apply_changes() right after a save: {fmt(o['edit_direct_wall_ms'])} ms wall, "
            f"{fmt(o['edit_direct_cpu_ms'])} ms CPU; burst preparation (apply_changes of {burst:,} "
            "re-anchored "
            f"schedules) {fmt(o['burst_prep_s'])} s."
        )
        notes.append(
            f"  DatabaseScheduler: start CPU {fmt(t['start_cpu_s'])} s; schedule_changed() alone "
            f"{fmt(t.get('schedule_changed_ms'))} ms; edit visible max {fmt(t['edit_visible_max_s'])} s; "
            "burst "
            f"preparation (populate_heap) {fmt(t['burst_prep_s'])} s; deferred sync() of "
            f"{fmt(t['resync_dirty'])} entries sent in the burst: {fmt(t['resync_sync_s'])} s."
        )
        if o["burst_stray"] or t["burst_stray"]:
            notes.append(
                f"  stray messages on the idle queue: ours {o['burst_stray']}, theirs {t['burst_stray']}."
            )
    lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


TARGETS = [
    ("start ≤ 2 s", "start_s", lambda v: v <= 2.0, False),
    ("idle tick ≤ 0.3 ms (heap + notification check)", "idle_ms", lambda v: v <= 0.3, False),
    (
        "idle tick ≤ 0.3 ms (mean of the real loop, change checks included)",
        "idle_poll_ms",
        lambda v: v <= 0.3,
        False,
    ),
    ("edit visible ≤ 1 s (slowest edit)", "edit_visible_max_s", lambda v: v <= 1.0, False),
    ("edit costs ≤ 20 ms (wall of the applying tick)", "edit_tick_wall_ms", lambda v: v <= 20.0, False),
    ("burst of 10,000 within 2 s", "burst_s", lambda v: v <= 2.0, True),
    ("burst of 10,000 at ≥ 5,000 slots/s", "burst_rate", lambda v: v >= 5000, True),
    ("peak RSS ≤ 120 MB", "rss_mb", lambda v: v <= 120, False),
]


def targets(results: dict[int, dict]) -> str:
    lines = [
        "",
        "## Our engine against its targets",
        "",
        "| schedules | target | measured | met |",
        "|---:|---|---:|:-:|",
    ]
    for n, agg in results.items():
        o = agg.get("ours")
        if not o:
            continue
        for name, key, ok, needs_full_burst in TARGETS:
            value = o.get(key)
            if needs_full_burst and (o.get("burst_count") or 0) < 10_000:
                verdict = f"n/a (burst of {o.get('burst_count') or 0:,})"
            else:
                verdict = "yes" if value is not None and ok(value) else "NO"
            lines.append(f"| {n:,} | {name} | {fmt(value)} | {verdict} |")
    return "\n".join(lines) + "\n"


def with_section(markdown: str, heading: str, section: str) -> str:
    """``markdown`` with its ``## {heading}`` section replaced by ``section``, or with it appended."""
    start = markdown.find(f"\n## {heading}")
    if start < 0:
        return markdown + section if markdown else section.lstrip("\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[:start] + section + (markdown[end:] if end >= 0 else "")


def report_so_far(path: str, env: list[str]) -> str:
    """The report at ``path`` (a section-only run updates it), or a header with the environment."""
    if Path(path).exists():
        return Path(path).read_text()
    return "\n".join(["# Beat benchmark", "", *[f"- {line}" for line in env]]) + "\n"


def run_takeover_only(args, env: list[str], log) -> None:
    """Only the leader failover section: touches neither the main bench's databases nor its Redis db."""
    import takeover

    section = takeover.run(args.takeover_schedules, args.takeover_kills, log, keep_db=args.keep_db)
    markdown = with_section(report_so_far(args.out, env), takeover.HEADING, section)
    print(markdown)
    Path(args.out).write_text(markdown)
    log(f"wrote {args.out}")


# --------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per scheduler and size")
    parser.add_argument(
        "--burst-timeout",
        type=float,
        default=30.0,
        help="stop a burst after this many seconds (the rate is still reported)",
    )
    parser.add_argument(
        "--cron-rows", type=int, default=1000, help="distinct crontab rows shared by the cron half"
    )
    parser.add_argument(
        "--theirs-repeat-max",
        type=float,
        default=30.0,
        help="repeat DatabaseScheduler's start only while one start takes less than this (s)",
    )
    parser.add_argument("--out", default=str(BENCH / "results.md"))
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench databases at the end")
    parser.add_argument(
        "--lateness", action="store_true", help="also run the end-to-end lateness test (≥10 min)"
    )
    parser.add_argument("--lateness-only", action="store_true", help="only the end-to-end lateness test")
    parser.add_argument("--lateness-schedules", type=int, default=1000)
    parser.add_argument("--lateness-minutes", type=int, default=5)
    parser.add_argument(
        "--takeover-only", action="store_true", help="only the leader failover test (real beats, ~3 min)"
    )
    parser.add_argument("--takeover-schedules", type=int, default=1000)
    parser.add_argument("--takeover-kills", type=int, default=5, help="leader kills per lease")
    args = parser.parse_args()
    if args.takeover_only and (args.lateness or args.lateness_only):
        parser.error("--takeover-only runs the takeover section alone")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    began = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {msg}", file=sys.stderr, flush=True)

    env = environment()
    for line in env:
        log(line)
    if args.takeover_only:
        run_takeover_only(args, env, log)
        return
    create_database(SEED_DB)
    try:
        run_checked([PYTHON, "manage.py", "migrate", "-v0"], bench_env(SEED_DB), "migrate", 600)
    except RuntimeError as exc:
        sys.exit(str(exc))
    setup_django(SEED_DB)
    flush_bench_redis()
    markdown = ""
    try:
        if not args.lateness_only:
            results, seeds = {}, {}
            for n in sizes:
                log(f"seeding {n:,} schedules")
                seeds[n] = seed_size(n, args.cron_rows)
                log(f"  seeded in {seeds[n]['seed_seconds']:.1f} s: {seeds[n]}")
                runs: dict[str, list[dict]] = {"ours": [], "theirs": []}
                theirs_start = 0.0
                common_args = ["--burst-timeout", str(args.burst_timeout)]
                for r in range(args.repeats):
                    order = ["ours", "theirs"] if r % 2 == 0 else ["theirs", "ours"]
                    for engine in order:
                        extra = list(common_args)
                        if engine == "theirs" and r > 0:
                            if theirs_start >= args.theirs_repeat_max:
                                continue
                            extra += ["--phases", "start"]  # one full run; later repeats time the start
                        res = run_measure(engine, f"{n}-{r}", extra, log)
                        if res is None:
                            continue
                        runs[engine].append(res)
                        if engine == "theirs" and r == 0:
                            theirs_start = res["start"]["wall_s"]
                        burst = res.get("burst")
                        burst_s = (
                            "–"
                            if burst is None
                            else fmt(burst.get("seconds") or burst.get("projected_seconds"))
                        )
                        log(
                            f"  {engine:6s} n={n:,} run {r}: start {res['start']['wall_s']:.2f} s, "
                            f"entries {res['start']['entries']:,}, burst {burst_s} s, "
                            f"peak {res['rss']['VmHWM']:.0f} MB, process {res['process_seconds']:.0f} s"
                        )
                results[n] = aggregate(runs)
                Path(args.out).with_suffix(".json").write_text(
                    json.dumps(
                        {
                            "sizes": {str(k): v for k, v in results.items()},
                            "seeds": {str(k): v for k, v in seeds.items()},
                        },
                        indent=1,
                        default=str,
                    )
                )
            markdown = table(results, env, seeds, args.burst_timeout) + targets(results)
            markdown += (
                f"\nTotal bench time: {time.monotonic() - began:.0f} s; load average at the end: "
                + " / ".join(f"{x:.1f}" for x in os.getloadavg())
                + "\n"
            )
        if args.lateness or args.lateness_only:
            import lateness

            log("end-to-end lateness with a real worker")
            section = lateness.run(args.lateness_schedules, args.lateness_minutes, log)
            if args.lateness_only:
                markdown = with_section(report_so_far(args.out, env), "End-to-end lateness", section)
            else:
                markdown += section
        if not args.lateness_only:
            import takeover

            markdown += takeover.run(args.takeover_schedules, args.takeover_kills, log, keep_db=args.keep_db)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            drop_database(RUN_DB)
            drop_database(SEED_DB)
        flush_bench_redis()
    print(markdown)
    Path(args.out).write_text(markdown)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
