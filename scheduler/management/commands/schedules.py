"""Schedules as code: ``schedules export [FILE]`` and ``schedules apply FILE [--dry-run] [--prune]``.

The file is a YAML list of schedule documents (``scheduler.documents``),
sorted by slug, keys in the document's order, so an export is stable and a
diff of it reviews well. ``apply`` prints what it changes (create / update
with each changed field before → after / delete), validates every entry
before changing anything (``plan_apply``: a bad entry is named by slug and
name with the field at fault, exit 1, nothing changed), then applies it in
one transaction through the ORM (the change log tells beat at once; the
audit log records it). Applying the same file again prints "no changes".
Without ``--prune`` schedules missing from the file are left alone (listed).
``paused`` is exported for information and ignored by ``apply``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from scheduler.documents import InvalidDocuments, Plan, apply, document_of, lock_for_apply, plan_apply

# libyaml's emitter and parser when PyYAML was built with it (3x faster; the same text).
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def export_yaml() -> str:
    """Every schedule (that has a policy, i.e. a slug) as YAML, sorted by slug."""
    tasks = PeriodicTask.objects.select_related("crontab", "interval", "clocked", "policy")
    docs = sorted((document_of(task) for task in tasks), key=lambda doc: doc["slug"] or "")
    return yaml.dump([doc for doc in docs if doc["slug"]], Dumper=DUMPER, sort_keys=False, allow_unicode=True)


def load_documents(text: str) -> list[Any]:
    try:
        loaded = yaml.load(text, Loader=LOADER)  # noqa: S506 (LOADER is a safe loader)
    except yaml.YAMLError as exc:
        raise CommandError(f"Not valid YAML: {exc}") from None
    if loaded is None:
        return []
    if isinstance(loaded, dict) and isinstance(loaded.get("schedules"), list):
        loaded = loaded["schedules"]
    if not isinstance(loaded, list):
        raise CommandError("The file must be a YAML list of schedules (as `schedules export` writes).")
    return loaded


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def describe_plan(plan: Plan) -> list[str]:
    lines = []
    for change in plan.changes:
        lines.append(f"{change.action} {change.slug} ({change.name})")
        for path, (before, after) in change.fields.items():
            lines.append(f"    {path}: {_shown(before)} → {_shown(after)}")
    if not plan.changes:
        lines.append("no changes")
    counts = {
        action: sum(c.action == action for c in plan.changes) for action in ("create", "update", "delete")
    }
    lines.append(
        f"{counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete, "
        f"{len(plan.unchanged)} unchanged"
    )
    if plan.left_alone:
        shown = ", ".join(plan.left_alone[:20])
        more = f" and {len(plan.left_alone) - 20} more" if len(plan.left_alone) > 20 else ""
        lines.append(
            f"{len(plan.left_alone)} left alone (in the database, not in the file; --prune deletes them): "
            f"{shown}{more}"
        )
    return lines


class Command(BaseCommand):
    help = "Export every schedule to YAML, or make the database match a YAML file."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Write every schedule and its policy as YAML.")
        export.add_argument("file", nargs="?", help="Default: standard output.")
        apply_parser = sub.add_parser("apply", help="Make the database match FILE (prints the diff).")
        apply_parser.add_argument("file", help="A YAML file, or - for standard input.")
        apply_parser.add_argument("--dry-run", action="store_true", help="Print the diff; change nothing.")
        apply_parser.add_argument("--prune", action="store_true", help="Delete schedules not in the file.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "export":
            text = export_yaml()
            if options["file"]:
                with open(options["file"], "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                self.stdout.write(text, ending="")
            return
        self.apply_file(options["file"], dry_run=options["dry_run"], prune=options["prune"])

    def apply_file(self, path: str, dry_run: bool, prune: bool) -> None:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}") from None
        docs = load_documents(text)
        # Planned and applied in one transaction, one apply at a time: what the diff shows is what
        # is written (a concurrent apply waits; an edit in the admin meanwhile is not overwritten
        # unseen by a plan made before it).
        with transaction.atomic():
            lock_for_apply()
            try:
                plan = plan_apply(docs, prune=prune)
            except InvalidDocuments as exc:
                for entry in exc.entries:
                    self.stderr.write(str(entry))
                count = len(exc.entries)
                raise CommandError(
                    f"{count} invalid entr{'y' if count == 1 else 'ies'}: nothing changed."
                ) from None
            for line in describe_plan(plan):
                self.stdout.write(line)
            if dry_run:
                self.stdout.write("dry run: nothing changed")
                return
            apply(plan)
        if plan.changes:  # said once committed
            self.stdout.write("applied")
