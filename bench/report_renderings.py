"""Storing a report: time and peak memory of ``store_report`` at 100,000 and 1,000,000 rows.

Each size runs in a fresh process (so its peak RSS, VmHWM, is its own) that
renders 5 columns (text, int, Decimal, datetime, text) in all four formats
(CSV, JSON, HTML capped at 10,000 rows, XLSX) from a generator, saves them
to a filesystem reports storage in a temporary directory and records them.
The claim measured: memory does not grow with the rows (the rows are never
held), time grows linearly. Also one format at a time at the larger size,
to show what each costs.

    .venv/bin/python bench/report_renderings.py [--sizes 100000,1000000] [--keep-db]

Database ``bench_report_renderings`` (created, migrated, dropped unless
``--keep-db``); no broker. ~3 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PYTHON, REPO, bench_env, close_bench_database, open_bench_database, proc_status

DB = "bench_report_renderings"
ALL_FORMATS = ["csv", "json", "html", "xlsx"]


def child(rows: int, formats: list[str]) -> dict:
    """In this process: store one report of ``rows`` rows; its time, peak memory and file sizes."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    import django

    django.setup()
    from reports.storage import ReportMeta, store_report

    start_at = datetime(2026, 1, 1, tzinfo=UTC)

    def generated():
        for i in range(rows):
            yield [
                f"customer {i:08d}",
                i,
                Decimal(i) / 100,
                start_at + timedelta(seconds=i),
                f"note {i} " * 4,
            ]

    before = proc_status()
    started = time.perf_counter()
    files = store_report(
        run_id=None,
        report="bench.orders",
        columns=["customer", "orders", "amount", "placed_at", "note"],
        rows=generated(),
        formats=formats,
        meta=ReportMeta("Bench orders", {}, start_at, start_at + timedelta(days=30), datetime.now(UTC)),
    )
    seconds = time.perf_counter() - started
    after = proc_status()
    return {
        "rows": rows,
        "formats": formats,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before["VmRSS"], 1),
        "peak_rss_mb": round(after["VmHWM"], 1),
        "sizes_mb": {f.format: round(f.size_bytes / 1e6, 1) for f in files},
    }


def measure(rows: int, formats: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as var_dir:
        env = {**bench_env(DB), "VAR_DIR": var_dir}
        done = subprocess.run(
            [PYTHON, __file__, "--child", str(rows), "--formats", ",".join(formats)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--child", type=int)
    parser.add_argument("--formats", default=",".join(ALL_FORMATS))
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.formats.split(","))))
        return
    open_bench_database(DB, reuse=args.keep_db)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        results = [measure(rows, ALL_FORMATS) for rows in sizes]
        results += [measure(sizes[-1], [fmt]) for fmt in ALL_FORMATS]
    finally:
        close_bench_database(DB, keep=args.keep_db)
    print("| rows | formats | time | peak RSS | RSS before | file sizes (MB) |")
    print("|---:|---|---:|---:|---:|---|")
    for r in results:
        sizes_text = ", ".join(f"{k} {v}" for k, v in r["sizes_mb"].items())
        print(
            f"| {r['rows']:,} | {'+'.join(r['formats'])} | {r['seconds']} s | {r['peak_rss_mb']} MB "
            f"| {r['rss_before_mb']} MB | {sizes_text} |"
        )


if __name__ == "__main__":
    main()
