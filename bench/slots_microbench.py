"""Micro-benchmark for ``scheduler.beat.slots``: how long one "next slot" takes.

Run from the repository root::

    .venv/bin/python bench/slots_microbench.py [--repeats 7] [--calls 2000]

To compare with another version of the module in the same conditions (say
the last commit's), point ``--slots`` at a copy of it::

    git show HEAD:scheduler/beat/slots.py > /tmp/slots_before.py
    .venv/bin/python bench/slots_microbench.py --slots /tmp/slots_before.py

Prints, for each typical expression in each zone, the median over several
repeats of the mean µs per ``next_cron_slot`` call (caches warm, ``after``
instants spread over two years so no two calls ask the same question). Then
the total for 50,000 calls with varied expressions and zones, and the beat
start-up case the design budgets for: the first slot of 100,000 schedules,
half cron in varied zones, half anchored intervals (budget: well under 2 s).

The first repeat of the mixed runs starts with cold caches (parsed
expressions, zone transition tables), which is what beat sees at start-up,
so it is reported separately from the warm median.

Times are CPU time of this process (``time.process_time``), so other work on
a busy machine inflates them less than wall-clock time would; they are still
only comparable between runs on the same machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# A plain script run from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_slots(path: str | None):
    """``scheduler.beat.slots``, or the module at ``path`` (another version of it)."""
    if path is None:
        from scheduler.beat import slots

        return slots
    spec = importlib.util.spec_from_file_location("slots_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


TYPICAL = ["*/5 * * * *", "0 6 * * *", "30 2 * * 1-5", "15 */2 * * *"]
DST_ZONES = ["America/New_York", "Europe/Berlin", "Australia/Sydney", "Australia/Lord_Howe"]

# The mixed workload: what a real schedule table tends to hold.
MIXED_EXPRESSIONS = TYPICAL + [
    "* * * * *",
    "0 * * * *",
    "*/15 9-17 * * 1-5",
    "0 0 * * *",
    "0 0 1 * *",
    "0 9 * * 1",
    "45 23 * * 0,6",
    "0 12 15 * 1-5",
    "5,35 */3 * * *",
    "0 4 1 1,4,7,10 *",
    "10-20/5 1-3 * * *",
    "0 0 29 2 *",
]
MIXED_ZONES = [
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Auckland",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Africa/Casablanca",
]


def instants(n: int, seed: int) -> list[datetime]:
    """``n`` aware UTC instants with seconds, spread over 2026-2027."""
    rng = random.Random(seed)  # noqa: S311 (reproducible, not secret)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [base + timedelta(seconds=rng.randrange(2 * 365 * 86400)) for _ in range(n)]


def per_call_us(next_cron_slot, spec, afters: list[datetime], repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per call, caches warm."""
    for after in afters[:50]:
        next_cron_slot(spec, after)
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        for after in afters:
            next_cron_slot(spec, after)
        samples.append((time.process_time() - t0) / len(afters) * 1e6)
    return statistics.median(samples)


def timed_runs(run, repeats: int) -> tuple[float, float]:
    """(first run, median of the remaining runs), in seconds."""
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        run()
        samples.append(time.process_time() - t0)
    return samples[0], statistics.median(samples[1:] or samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per expression and zone")
    parser.add_argument("--slots", help="benchmark this file instead of scheduler/beat/slots.py")
    args = parser.parse_args()
    slots = load_slots(args.slots)
    CronSpec, next_cron_slot, next_interval_slot = (
        slots.CronSpec,
        slots.next_cron_slot,
        slots.next_interval_slot,
    )
    print(f"module: {slots.__file__}")

    # Beat start-up (first, so its first run sees cold caches, as beat does): the first slot of
    # 100,000 schedules, half cron in varied zones, half anchored intervals.
    rng = random.Random(2)  # noqa: S311 (reproducible, not secret)
    specs = [CronSpec(rng.choice(MIXED_EXPRESSIONS), rng.choice(MIXED_ZONES)) for _ in range(50_000)]
    now = datetime(2026, 11, 1, 5, 17, 42, 123456, tzinfo=UTC)
    intervals = [
        (
            now - timedelta(seconds=rng.randrange(10**7)),
            timedelta(seconds=rng.choice([30, 60, 300, 3600, 86400])),
        )
        for _ in range(50_000)
    ]

    def startup() -> None:
        for spec in specs:
            next_cron_slot(spec, now)
        for anchor, every in intervals:
            next_interval_slot(anchor, every, now)

    first, warm = timed_runs(startup, max(3, args.repeats // 2))
    print(
        f"first slot of 100,000 schedules (50k cron + 50k interval): "
        f"{first * 1e3:.0f} ms first run, warm median {warm * 1e3:.0f} ms (budget: well under 2000 ms)"
    )

    print()
    afters = instants(args.calls, seed=1)
    print(f"next_cron_slot, µs/call (median of {args.repeats} repeats x {args.calls} calls, warm)")
    header = f"{'expression':<16}" + "".join(f"{z.split('/')[-1]:>14}" for z in DST_ZONES)
    print(header)
    all_medians = []
    for expression in TYPICAL:
        cells = []
        for zone in DST_ZONES:
            us = per_call_us(slots.next_cron_slot, slots.CronSpec(expression, zone), afters, args.repeats)
            all_medians.append(us)
            cells.append(f"{us:>14.2f}")
        print(f"{expression:<16}" + "".join(cells))
    print(f"{'median of cells':<16}{statistics.median(all_medians):>14.2f}")

    # 50,000 calls, varied expressions, zones and instants.
    mixed_afters = instants(50_000, seed=3)

    def mixed() -> None:
        for spec, after in zip(specs, mixed_afters, strict=True):
            next_cron_slot(spec, after)

    first, warm = timed_runs(mixed, max(3, args.repeats // 2))
    print(
        f"50,000 mixed cron calls: first run {first * 1e3:.0f} ms (some zone-years still cold), "
        f"warm median {warm * 1e3:.0f} ms = {warm / 50_000 * 1e6:.2f} µs/call"
    )


if __name__ == "__main__":
    main()
