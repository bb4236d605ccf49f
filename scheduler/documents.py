"""One schedule as a plain document (dict / YAML mapping): the shape shared by the CLI and the API.

A document, keys in this order (``TOP_KEYS``)::

    slug: nightly-report              # the policy slug: the stable key (survives renames)
    name: nightly report
    job: reports.run_summary
    args: []
    kwargs: {}
    enabled: true
    description: ""
    schedule: {cron: "0 9 * * 1-5", timezone: Europe/Berlin}
            | {every: 5, period: minutes, anchor: "2026-12-01T00:00:00+00:00"}
            | {at: "2026-12-24T18:00:00+00:00"}
    priority: null
    start_time: null                  # ISO 8601 with an offset, or null
    expires: null
    policy: {soft_time_limit, hard_time_limit, queue, catchup, overlap, starting_deadline, jitter,
             grace, late_after, expected_duration, failures_before_alert, successes_before_recovery,
             remind_every}
    paused: {note, until, by} | null  # READ-ONLY: exported for information, ignored by validation,
                                      # saving and diffs (pause and resume are operations, not config)

Guarantees and edge cases:

- Validation is the admin's, not a copy: a document is turned into the
  schedule page's form data and bound to ``ScheduleForm`` (cron text, time
  zone, never-firing crons, interval minimum, one-off in the past, unknown
  job, arguments that do not bind, unique name) and to a policy form with the
  inline's fields plus the slug, then ``validate_policy`` judges the policy
  against the task as it will be saved. Errors come back as one
  ``ValidationError`` keyed by document path (``"schedule.cron"``, ``"job"``,
  ``"policy.hard_time_limit"``, ``"slug"``).
- Missing keys mean their defaults (the document is the whole truth of a
  schedule: an update with a key left out resets it). ``slug`` may be left out
  only when creating one schedule (a new one is generated); ``plan_apply``
  requires it. An interval's ``anchor`` left out keeps the stored anchor (a
  new schedule: when first saved). Unknown keys are errors (a typo such as
  ``polcy`` must not silently mean "defaults").
- Datetimes must carry an offset; they are exported in UTC. A cron is stored
  (and exported) as its five fields, macros expanded and names lower-cased
  (``@daily`` → ``0 0 * * *``); an interval's anchor at whole seconds.
- Saving reuses identical crontab / interval / clocked rows (the form's
  ``save_schedule_row``) and goes through the ORM in one transaction, so the
  change log (beat sees the edit within a second) and the audit log record it.
- ``plan_apply`` validates every entry before anything changes and raises
  ``InvalidDocuments`` naming each bad entry (slug, name) and field; ``apply``
  deletes, creates and updates in one transaction. Limitation: an entry may
  not take a name another schedule holds in the database until that one is
  renamed or deleted (validation sees the database as it is: apply twice).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import PeriodicTask

from scheduler.describe import expand_cron
from scheduler.models import CatchUp, Overlap, SchedulePolicy
from scheduler.schedule_form import CRON, INTERVAL, ONE_OFF, ScheduleForm, policy_of
from scheduler.validation import cron_expression, validate_policy

TOP_KEYS = (
    "slug",
    "name",
    "job",
    "args",
    "kwargs",
    "enabled",
    "description",
    "schedule",
    "priority",
    "start_time",
    "expires",
    "policy",
    "paused",
)
POLICY_DEFAULTS: dict[str, Any] = {
    "soft_time_limit": None,
    "hard_time_limit": None,
    "queue": "",
    "catchup": CatchUp.LATEST.value,
    "overlap": Overlap.ALLOW.value,
    "starting_deadline": None,
    "jitter": 0,
    "grace": 60,
    "late_after": None,
    "expected_duration": None,
    "failures_before_alert": 1,
    "successes_before_recovery": 1,
    "remind_every": None,
}
POLICY_KEYS = tuple(POLICY_DEFAULTS)
SCHEDULE_KEYS = {CRON: ("cron", "timezone"), INTERVAL: ("every", "period", "anchor"), ONE_OFF: ("at",)}
# Keys a diff compares (paused is read-only, the slug is the entry's identity).
COMPARED_KEYS = tuple(k for k in TOP_KEYS if k not in ("slug", "paused"))

# Where ScheduleForm's fields are in a document.
PATH_OF_FORM_FIELD = {
    "task": "job",
    "schedule_kind": "schedule",
    "cron": "schedule.cron",
    "timezone": "schedule.timezone",
    "every": "schedule.every",
    "period": "schedule.period",
    "anchor": "schedule.anchor",
    "run_at": "schedule.at",
    "__all__": "schedule",
}


class PolicyForm(forms.ModelForm):
    """The admin's policy inline fields plus the slug (its uniqueness and format checks)."""

    class Meta:
        model = SchedulePolicy
        fields = ("slug", *POLICY_KEYS)


# --- reading -------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, str) else value


def document_of(task: PeriodicTask) -> dict[str, Any]:
    """``task`` and its policy as a document (``TOP_KEYS`` order; policy defaults for a task without one)."""
    policy = policy_of(task) if task.pk else None
    shown = policy or SchedulePolicy()
    schedule: dict[str, Any] = {}
    if (crontab := task.crontab) is not None:
        schedule = {"cron": cron_expression(crontab), "timezone": str(crontab.timezone)}
    elif (interval := task.interval) is not None:
        anchor = shown.anchor.replace(microsecond=0) if policy is not None else None
        schedule = {"every": interval.every, "period": interval.period, "anchor": iso(anchor)}
    elif (clocked := task.clocked) is not None:
        schedule = {"at": iso(clocked.clocked_time)}
    paused = None
    if policy is not None and policy.paused_at is not None:
        paused = {"note": policy.pause_note, "until": iso(policy.paused_until), "by": policy.paused_by}
    return {
        "slug": policy.slug if policy is not None else None,
        "name": task.name,
        "job": task.task,
        "args": json.loads(task.args or "[]"),
        "kwargs": json.loads(task.kwargs or "{}"),
        "enabled": task.enabled,
        "description": task.description or "",
        "schedule": schedule,
        "priority": task.priority,
        "start_time": iso(task.start_time),
        "expires": iso(task.expires),
        # str(): a choice read from a fresh instance is an enum member, YAML wants plain text.
        "policy": {key: _plain(getattr(shown, key)) for key in POLICY_KEYS},
        "paused": paused,
    }


# --- normalising (shape and types; the form judges the values) -----------------------------------


class _Errors:
    def __init__(self) -> None:
        self.by_path: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.by_path.setdefault(path or "document", []).append(message)

    def raise_if_any(self) -> None:
        if self.by_path:
            raise ValidationError(self.by_path)


def _datetime(value: Any, path: str, errors: _Errors) -> str | None:
    if value is None or value == "":
        return None
    parsed = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
    if parsed is None:
        errors.add(path, f"{value!r} is not an ISO 8601 date and time, like 2026-12-01T09:00:00+00:00.")
        return None
    if parsed.tzinfo is None:
        errors.add(path, f"{value!r} has no UTC offset: add one, like +00:00 or Z.")
        return None
    return iso(parsed)


def _integer(value: Any, path: str, errors: _Errors) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    errors.add(path, f"Must be a whole number or null, not {value!r}.")
    return None


def _text(value: Any, path: str, errors: _Errors, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        errors.add(path, f"Must be text, not {value!r}.")
        return default
    return value.strip()


def _unknown_keys(given: Mapping[str, Any], known: tuple[str, ...], where: str, errors: _Errors) -> None:
    for key in given:
        if key not in known:
            prefix = f"{where}." if where else ""
            errors.add(f"{prefix}{key}", f"Unknown key {key!r}; known: {', '.join(known)}.")


def _schedule(value: Any, errors: _Errors) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        errors.add("schedule", "Give one of {cron, timezone}, {every, period, anchor} or {at}.")
        return {}
    kinds = [kind for kind, key in ((CRON, "cron"), (INTERVAL, "every"), (ONE_OFF, "at")) if key in value]
    if len(kinds) != 1:
        errors.add("schedule", "Give exactly one of cron, every or at.")
        return {}
    kind = kinds[0]
    _unknown_keys(value, SCHEDULE_KEYS[kind], "schedule", errors)
    if kind == CRON:
        return {
            "cron": expand_cron(_text(value.get("cron"), "schedule.cron", errors)),
            "timezone": _text(value.get("timezone"), "schedule.timezone", errors) or "UTC",
        }
    if kind == INTERVAL:
        anchor = _datetime(value.get("anchor"), "schedule.anchor", errors)
        if anchor is not None:  # beat reads the anchor at whole seconds
            anchor = iso(datetime.fromisoformat(anchor).replace(microsecond=0))
        return {
            "every": _integer(value.get("every"), "schedule.every", errors),
            "period": _text(value.get("period"), "schedule.period", errors) or "minutes",
            "anchor": anchor,
        }
    return {"at": _datetime(value.get("at"), "schedule.at", errors)}


def normalize_document(doc: Any) -> dict[str, Any]:
    """``doc`` in ``document_of``'s shape: defaults filled, text stripped, crons expanded, datetimes UTC.

    Raises ``ValidationError`` (by path) for what is wrong with the shape or
    the types; whether the values make a valid schedule is ``validate_document``'s.
    """
    errors = _Errors()
    if not isinstance(doc, Mapping):
        raise ValidationError({"document": f"A schedule must be a mapping, not {type(doc).__name__}."})
    _unknown_keys(doc, TOP_KEYS, "", errors)
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list):
        errors.add("args", f'Must be a list, like [1, "a"]; got {type(args).__name__}.')
    if not isinstance(kwargs, dict):
        errors.add("kwargs", f'Must be a mapping, like {{"days": 7}}; got {type(kwargs).__name__}.')
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.add("enabled", f"Must be true or false, not {enabled!r}.")
    policy_in = doc.get("policy") or {}
    policy: dict[str, Any] = dict(POLICY_DEFAULTS)
    if not isinstance(policy_in, Mapping):
        errors.add("policy", f"Must be a mapping of {', '.join(POLICY_KEYS)}.")
    else:
        _unknown_keys(policy_in, POLICY_KEYS, "policy", errors)
        for key, default in POLICY_DEFAULTS.items():
            value = policy_in.get(key, default)
            path = f"policy.{key}"
            if isinstance(default, str):
                policy[key] = _text(value, path, errors, default)
            else:
                policy[key] = (
                    default if value is None and default is not None else _integer(value, path, errors)
                )
    slug = doc.get("slug")
    normalized = {
        "slug": None if slug is None else _text(slug, "slug", errors),
        "name": _text(doc.get("name"), "name", errors),
        "job": _text(doc.get("job"), "job", errors),
        "args": args,
        "kwargs": kwargs,
        "enabled": enabled,
        "description": _text(doc.get("description"), "description", errors),
        "schedule": _schedule(doc.get("schedule"), errors),
        "priority": _integer(doc.get("priority"), "priority", errors),
        "start_time": _datetime(doc.get("start_time"), "start_time", errors),
        "expires": _datetime(doc.get("expires"), "expires", errors),
        "policy": policy,
        "paused": doc.get("paused"),
    }
    errors.raise_if_any()
    return normalized


# --- validating ------------------------------------------------------------------------------------


@dataclass
class Validated:
    """A document bound to the admin's forms, all valid: ``save_validated`` stores it."""

    doc: dict[str, Any]
    form: ScheduleForm
    policy_form: PolicyForm


def _form_data(doc: dict[str, Any]) -> dict[str, Any]:
    """The schedule page's fields for ``doc`` (normalized)."""
    schedule = doc["schedule"]
    data: dict[str, Any] = {
        "name": doc["name"],
        "task": doc["job"],
        "args": json.dumps(doc["args"]),
        "kwargs": json.dumps(doc["kwargs"]),
        "enabled": doc["enabled"],
        "description": doc["description"],
        "priority": doc["priority"],
        "start_time": doc["start_time"],
        "expires": doc["expires"],
        "period": "minutes",
    }
    if "cron" in schedule:
        data.update(schedule_kind=CRON, cron=schedule["cron"], timezone=schedule["timezone"])
    elif "every" in schedule:
        data.update(schedule_kind=INTERVAL, every=schedule["every"], period=schedule["period"])
        data["anchor"] = schedule["anchor"]
    elif "at" in schedule:
        # The page reads a one-off time on the zone's clock: give it the UTC wall clock in UTC.
        at = schedule["at"]
        wall = datetime.fromisoformat(at).astimezone(UTC).replace(tzinfo=None) if at else None
        data.update(schedule_kind=ONE_OFF, run_at=wall, timezone="UTC")
    return {key: value for key, value in data.items() if value is not None}


def _paths(errors: Mapping[str, Any], path_of: Mapping[str, str], prefix: str = "") -> dict[str, list[str]]:
    return {
        path_of.get(name, f"{prefix}{name}" if name != "__all__" else prefix.rstrip(".") or "document"): list(
            messages
        )
        for name, messages in errors.items()
    }


def bind(doc: Any, existing: PeriodicTask | None = None) -> Validated:
    """Normalize ``doc`` and check it with the admin's forms and ``validate_policy``.

    Raises ``ValidationError`` keyed by document path. Changes nothing in the
    database (new schedule rows are only chosen, not created) and nothing on
    ``existing``: the forms edit copies of it and its policy.
    """
    normalized = normalize_document(doc)
    stored_policy = policy_of(existing) if existing is not None else None
    task = copy.copy(existing) if existing is not None else None  # Django copies its field cache too
    form = ScheduleForm(data=_form_data(normalized), instance=task)
    form.is_valid()
    errors = _paths(form.errors, PATH_OF_FORM_FIELD)
    policy = copy.copy(stored_policy) if stored_policy is not None else SchedulePolicy()
    policy.task = form.instance  # judged against the task as it will be saved (as the admin's inline)
    policy_data = {"slug": normalized["slug"] or policy.slug, **normalized["policy"]}
    policy_form = PolicyForm(data={k: v for k, v in policy_data.items() if v is not None}, instance=policy)
    policy_form.is_valid()
    errors.update(_paths(policy_form.errors, {"slug": "slug"}, prefix="policy."))
    if not errors:
        try:
            validate_policy(policy_form.instance, task=form.instance)
        except ValidationError as exc:
            errors.update(_paths(exc.message_dict, {}, prefix="policy."))
    if errors:
        raise ValidationError(errors)
    return Validated(normalized, form, policy_form)


def validate_document(doc: Any, existing: PeriodicTask | None = None) -> None:
    """Raise ``ValidationError`` by document path unless ``doc`` would save (as ``existing``, or new)."""
    bind(doc, existing)


# --- saving ------------------------------------------------------------------------------------------


def save_validated(validated: Validated) -> PeriodicTask:
    """Store a bound document through the ORM (signals: change log; auditlog: who and what).

    Returns the saved task (a copy of the ``existing`` given to ``bind``, which is left as it was).
    """
    form, policy_form = validated.form, validated.policy_form
    with transaction.atomic():
        form.save_schedule_row()
        task = form.save()
        # The task's post_save made its policy row; set what the document says, as the inline does.
        policy, _ = SchedulePolicy.objects.get_or_create(task=task)
        changed = [
            name for name in ("slug", *POLICY_KEYS) if getattr(policy, name) != policy_form.cleaned_data[name]
        ]
        for name in changed:
            setattr(policy, name, policy_form.cleaned_data[name])
        if changed:
            policy.save(update_fields=changed)
        # The bound policy (cached on the task while validating) is not the stored row: forget it.
        task.policy = policy
        form.save_policy_parts()
        policy.refresh_from_db()
    return task


def save_document(doc: Any, existing: PeriodicTask | None = None) -> PeriodicTask:
    """Validate ``doc`` (``validate_document``), then save it as ``existing`` (or new), atomically."""
    with transaction.atomic():
        return save_validated(bind(doc, existing))


# --- applying a whole file ---------------------------------------------------------------------------


@dataclass
class Change:
    action: str  # "create" | "update" | "delete"
    slug: str
    name: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # path → (before, after)
    validated: Validated | None = None
    task: PeriodicTask | None = None


@dataclass
class Plan:
    changes: list[Change]
    unchanged: list[str]  # slugs in the file that match the database
    left_alone: list[str]  # slugs in the database, not in the file, kept (no prune)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)


@dataclass
class EntryError:
    index: int
    slug: str
    name: str
    errors: dict[str, list[str]]

    def __str__(self) -> str:
        where = f"entry {self.index + 1} (slug {self.slug!r}, name {self.name!r})"
        return "\n".join(f"{where}: {path}: {' '.join(msgs)}" for path, msgs in self.errors.items())


class InvalidDocuments(Exception):
    """Entries that do not validate; nothing was changed."""

    def __init__(self, entries: list[EntryError]) -> None:
        self.entries = entries
        super().__init__("\n".join(str(entry) for entry in entries))


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Changed document paths (schedule and policy by key), before → after."""
    changed: dict[str, tuple[Any, Any]] = {}
    for key in COMPARED_KEYS:
        old, new = before.get(key), after.get(key)
        if key in ("schedule", "policy") and isinstance(old, dict) and isinstance(new, dict):
            same_kind = key == "policy" or old.keys() == new.keys()
            if same_kind:
                for sub in new:
                    if old.get(sub) != new.get(sub):
                        changed[f"{key}.{sub}"] = (old.get(sub), new.get(sub))
                continue
        if old != new:
            changed[key] = (old, new)
    return changed


def _all_tasks_by_slug() -> dict[str, PeriodicTask]:
    tasks = PeriodicTask.objects.select_related("crontab", "interval", "clocked", "policy").order_by("pk")
    return {policy.slug: task for task in tasks if (policy := policy_of(task)) is not None}


def plan_apply(docs: list[Any], prune: bool) -> Plan:
    """What applying ``docs`` would change; raises ``InvalidDocuments`` if any entry is invalid.

    Every entry that would change is validated (against the database as it
    is) before the plan is returned; entries equal to the database are not
    (they change nothing). Duplicate slugs or names in the file are errors.
    """
    existing = _all_tasks_by_slug()
    errors: list[EntryError] = []
    changes: list[Change] = []
    unchanged: list[str] = []
    seen_slugs: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for index, doc in enumerate(docs):
        raw = doc if isinstance(doc, Mapping) else {}
        slug, name = str(raw.get("slug") or ""), str(raw.get("name") or "")
        try:
            if not slug:
                raise ValidationError({"slug": "Every entry needs a slug: it is the schedule's stable key."})
            if slug in seen_slugs:
                raise ValidationError({"slug": f"Slug {slug!r} is also entry {seen_slugs[slug] + 1}."})
            seen_slugs[slug] = index
            if name and name in seen_names:
                raise ValidationError({"name": f"Name {name!r} is also entry {seen_names[name] + 1}."})
            seen_names[name] = index
            normalized = normalize_document(doc)
            task = existing.get(slug)
            if task is None:
                changes.append(Change("create", slug, name, validated=bind(normalized)))
                continue
            current = document_of(task)
            if normalized["schedule"].get("anchor", "") is None:  # no anchor given: keep the stored one
                normalized["schedule"]["anchor"] = current["schedule"].get("anchor")
            fields = differences(current, normalized)
            if not fields:
                unchanged.append(slug)
                continue
            changes.append(Change("update", slug, name, fields, validated=bind(normalized, task), task=task))
        except ValidationError as exc:
            errors.append(EntryError(index, slug, name, exc.message_dict))
    if errors:
        raise InvalidDocuments(errors)
    missing = sorted(set(existing) - set(seen_slugs))
    if prune:
        deletes = [Change("delete", slug, existing[slug].name, task=existing[slug]) for slug in missing]
        return Plan(deletes + changes, unchanged, [])
    return Plan(changes, unchanged, missing)


# The key of the advisory lock that serialises whole-file applies.
_APPLY_LOCK = 0x5C4E_A991


def lock_for_apply() -> None:
    """Inside a transaction: wait until no other apply is running (PostgreSQL; no-op elsewhere)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_APPLY_LOCK])


def apply(plan: Plan) -> None:
    """Make the changes of ``plan`` in one transaction: deletes, then creates and updates, via the ORM."""
    with transaction.atomic():
        for change in plan.changes:
            if change.action == "delete":
                assert change.task is not None
                change.task.delete()
            else:
                assert change.validated is not None
                save_validated(change.validated)
