"""``manage.py runs list [--job J] [--status S] [--limit N]`` and ``manage.py runs show ID``.

Read-only views of the run history (newest first). ``show`` exits 1 for an
id that is not a run (or not a UUID); ``list`` with an unknown status is a
usage error listing the statuses.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.models import JobRun, RunStatus


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def duration(run: JobRun) -> str:
    if run.started_at is None or run.finished_at is None:
        return "-"
    return f"{(run.finished_at - run.started_at).total_seconds():.2f}s"


class Command(BaseCommand):
    help = "List runs, or show one run."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="Runs, newest first.")
        listing.add_argument("--job")
        listing.add_argument("--status", choices=RunStatus.values)
        listing.add_argument("--limit", type=int, default=20)
        show = sub.add_parser("show", help="One run in full.")
        show.add_argument("id")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self.list_runs(options)
        else:
            self.show_run(options["id"])

    def list_runs(self, options: dict[str, Any]) -> None:
        runs = JobRun.objects.order_by("-scheduled_for", "-id")
        if options["job"]:
            runs = runs.filter(job=options["job"])
        if options["status"]:
            runs = runs.filter(status=options["status"])
        rows = list(runs[: max(options["limit"], 0)])
        if not rows:
            self.stdout.write("No runs.")
        for run in rows:
            self.stdout.write(
                f"{run.pk}  {run.status:<12} {run.job:<32} {_when(run.scheduled_for)} UTC  "
                f"{duration(run):>8}  {run.origin}"
            )

    def show_run(self, raw_id: str) -> None:
        try:
            run_id = uuid.UUID(raw_id)
        except ValueError:
            raise CommandError(f"{raw_id!r} is not a run id (a UUID).") from None
        run = JobRun.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"There is no run {raw_id}.")
        lines = [
            ("id", run.pk),
            ("job", run.job),
            ("status", run.status),
            ("origin", f"{run.origin} {run.requested_by}".strip()),
            ("schedule", run.schedule_name or "-"),
            ("args", json.dumps(run.args)),
            ("kwargs", json.dumps(run.kwargs)),
            ("queue", run.queue),
            ("limits", f"soft {run.soft_time_limit}s, hard {run.hard_time_limit}s"),
            ("scheduled for", f"{_when(run.scheduled_for)} UTC"),
            ("started", f"{_when(run.started_at)} UTC"),
            ("finished", f"{_when(run.finished_at)} UTC"),
            ("duration", duration(run)),
            ("attempt", run.attempt),
            ("worker", run.worker or "-"),
        ]
        if run.result is not None:
            lines.append(("result", json.dumps(run.result)[:2000]))
        if run.error_type or run.error_message:
            lines.append(("error", f"{run.error_type}: {run.error_message}"))
        for label, value in lines:
            self.stdout.write(f"{label + ':':<15}{value}")
