"""``manage.py jobs list`` (the catalog) and ``manage.py jobs run NAME --arg k=v … [--wait]``.

A thin wrapper: runs start through ``jobs.dispatch.dispatch`` (the one
dispatch path; origin ``client``, requested by ``cli:<user>``). Exit codes
for CI: 0 when dispatched (with ``--wait``: when the run succeeded), 1 when
the run ended otherwise or did not end within ``--timeout``, 2 for a bad
call (unknown job, arguments that do not bind; nothing is recorded then).
"""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.dispatch import dispatch
from jobs.models import FINISHED_STATUSES, JobDefinition, JobRun, RunOrigin, RunStatus

POLL_SECONDS = 0.2


def parse_arg(text: str) -> tuple[str, Any]:
    """``k=v``: the value as JSON when it parses (``7``, ``true``, ``[1]``), else the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CommandError(f"--arg {text!r}: give key=value, like --arg days=7.")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        return "cli:unknown"


class Command(BaseCommand):
    help = "List the job catalog, or run a job now (optionally waiting for it to finish)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="The job catalog: name, queue, limits, first line of the doc.")
        run = sub.add_parser("run", help="Dispatch one run of a job; prints the run id.")
        run.add_argument("name")
        run.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
        run.add_argument("--queue")
        run.add_argument("--wait", action="store_true", help="Follow the run until it ends.")
        run.add_argument("--timeout", type=float, default=600.0, help="Seconds --wait waits (600).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self.list_jobs()
        else:
            self.run_job(options)

    def list_jobs(self) -> None:
        jobs = JobDefinition.objects.order_by("name")
        if not jobs:
            self.stdout.write("No jobs in the catalog: start a worker (it publishes the catalog).")
        for job in jobs:
            doc = (job.doc or "").strip().splitlines()
            self.stdout.write(
                f"{job.name:<36} queue={job.queue:<12} soft={job.soft_time_limit}s "
                f"hard={job.hard_time_limit}s  {doc[0] if doc else ''}".rstrip()
            )

    def run_job(self, options: dict[str, Any]) -> None:
        kwargs = dict(parse_arg(text) for text in options["arg"])
        try:
            run = dispatch(
                options["name"],
                kwargs=kwargs,
                queue=options["queue"],
                origin=RunOrigin.CLIENT,
                requested_by=cli_user(),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages), returncode=2) from None
        self.stdout.write(str(run.pk))
        if getattr(run, "delivery_error", ""):
            self.stderr.write(f"broker: {run.delivery_error} (the run stays queued; beat resends it)")
        if options["wait"]:
            self.follow(run, options["timeout"])

    def follow(self, run: JobRun, timeout: float) -> None:
        """Print each status change until the run ends; non-zero exit unless it succeeded."""
        deadline = time.monotonic() + timeout
        shown = None
        while True:
            run.refresh_from_db()
            if run.status != shown:
                shown = run.status
                self.stdout.write(f"{run.status}" + (f" (attempt {run.attempt})" if run.attempt > 1 else ""))
            if run.status in FINISHED_STATUSES:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"run {run.pk} still {run.status} after {timeout:g} s", returncode=1)
            time.sleep(POLL_SECONDS)
        if run.status != RunStatus.SUCCEEDED:
            message = f"run {run.pk} {run.status}"
            if run.error_type or run.error_message:
                message += f": {run.error_type}: {run.error_message}".rstrip(": ")
            raise CommandError(message, returncode=1)
