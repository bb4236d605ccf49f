"""The schedule page's form: one schedule field (cron text, interval or one-off) and a job picker.

Only what beat honours is offered (``scheduler.beat.entries.ROW_FIELDS``):
the job and its JSON arguments, enabled, start time, expiry, priority and one
schedule. Not offered: solar, django-celery-beat's crontab/interval/clocked
dropdowns (a dropdown of every crontab row is unusable at 100,000 rows),
"Task (custom)", exchange/routing key/headers and the task's own ``queue``
(beat uses the policy's queue first: the policy inline holds the one queue
field; a legacy task-level queue is moved there on save).

The schedule is stored in django-celery-beat's rows, so its models stay the
source of truth: an identical ``CrontabSchedule`` (same five fields and time
zone), ``IntervalSchedule`` or ``ClockedSchedule`` is reused, never
duplicated; a new one is created only when the whole page is valid
(``save_schedule_row``, called by the admin's ``save_model``). ``@daily`` and
friends are stored as their five fields (``scheduler.describe.expand_cron``).

Every check is ``scheduler.validation``'s (the same messages as the ORM's
pre-save refusal), with its error put on this form's field: an invalid cron,
an unknown time zone, a cron that can never fire, an interval below the
minimum, a one-off time in the past, an unknown job or arguments that do not
bind. The live preview (``scheduler.preview``) binds this same form, so it
shows the same messages as a save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast
from zoneinfo import ZoneInfo, available_timezones

from django import forms
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import connection, models
from django.utils import timezone as django_timezone
from django.utils.html import format_html, format_html_join
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.models import JobDefinition
from scheduler.describe import expand_cron
from scheduler.models import SchedulePolicy
from scheduler.validation import (
    changed_schedule_fields,
    cron_expression,
    validate_cron,
    validate_interval,
    validate_periodic_task,
)

CRON, INTERVAL, ONE_OFF = "cron", "interval", "one_off"
KINDS = [(CRON, "on a cron"), (INTERVAL, "every N seconds/minutes/hours/days"), (ONE_OFF, "once")]
PERIODS = [(p, p) for p in ("seconds", "minutes", "hours", "days")]
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
SCHEDULE_FIELDS = ("schedule_kind", "cron", "timezone", "every", "period", "anchor", "run_at")
JOB_FIELDS = ("task", "args", "kwargs")

# Where scheduler.validation's error keys (model field names) land on this form.
FORM_FIELD_OF = {
    **dict.fromkeys(CRON_FIELDS, "cron"),
    "timezone": "timezone",
    "every": "every",
    "period": "period",
    "clocked": "run_at",
    "crontab": "schedule_kind",
    "interval": "schedule_kind",
    "solar": "schedule_kind",
    "task": "task",
    "args": "args",
    "kwargs": "kwargs",
}
ROW_OF_KIND = {CRON: "crontab", INTERVAL: "interval", ONE_OFF: "clocked"}
_LOCAL_INPUT = "%Y-%m-%dT%H:%M:%S"
# validate_periodic_task reads ``<kind>_id`` to count schedules; a row chosen
# on this page but not yet created (it is, on save) counts as present.
_UNSAVED = 0
# The first key of the advisory locks that serialise creating identical schedule rows.
_ROW_LOCK_NAMESPACE = 0x5C4E


@lru_cache(maxsize=1)
def time_zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def job_names() -> Iterable[str]:
    return JobDefinition.objects.values_list("name", flat=True)


class DatalistInput(forms.TextInput):
    """A text input whose browser autocomplete offers ``options()`` (an HTML ``<datalist>``, no JS).

    ``options`` is called at render time, so the list is current (the job
    catalog changes when workers publish).
    """

    def __init__(self, options: Callable[[], Iterable[str]], attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"autocomplete": "off", "spellcheck": "false", **(attrs or {})})
        self.options = options

    def render(self, name, value, attrs=None, renderer=None):
        list_id = f"{(attrs or {}).get('id') or name}-options"
        html = super().render(name, value, {**(attrs or {}), "list": list_id}, renderer)
        options = format_html_join(
            "", '<option value="{}"></option>', ((option,) for option in self.options())
        )
        return html + format_html('<datalist id="{}">{}</datalist>', list_id, options)


class LocalDateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(attrs={"step": "1"}, format=_LOCAL_INPUT)


def add_errors(form: forms.BaseForm, error: ValidationError, fallback_field: str | None = None) -> None:
    """Attach a ValidationError's messages to the fields it names, else their ``FORM_FIELD_OF`` field."""
    if not hasattr(error, "error_dict"):
        form.add_error(fallback_field, error)
        return
    for key, messages in error.message_dict.items():
        mapped = FORM_FIELD_OF.get(key)
        target = key if key in form.fields else mapped if mapped in form.fields else fallback_field
        for message in messages:
            form.add_error(target, message)


class _AsSaved:
    """A task's view whose ``<kind>_id`` counts a chosen but unsaved schedule row as present."""

    def __init__(self, task: PeriodicTask) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        kind = name.removesuffix("_id")
        if name.endswith("_id") and kind in ("crontab", "interval", "clocked"):
            row = getattr(self._task, kind)
            return None if row is None else (row.pk or _UNSAVED)
        return getattr(self._task, name)


def as_saved(task: PeriodicTask) -> PeriodicTask:
    """``task`` as ``validate_periodic_task`` sees it once its chosen schedule row exists.

    The page picks an existing identical row or an unsaved new one (created
    on save only if the whole page is valid); validation must count the new
    one as the task's schedule. Every other attribute is the task's own.
    """
    return cast(PeriodicTask, _AsSaved(task))


def identical_or_new(model: type[models.Model], **values: Any) -> models.Model:
    """The oldest stored row with exactly ``values``, else an unsaved one (saved with the page)."""
    found = model._default_manager.filter(**values).order_by("pk").first()
    return found if found is not None else model(**values)


def policy_of(task: PeriodicTask) -> SchedulePolicy | None:
    try:
        return task.policy
    except ObjectDoesNotExist:
        return None


def schedule_initial(task: PeriodicTask) -> dict[str, Any]:
    """The schedule fields showing ``task``'s current schedule (new task: a cron in UTC)."""
    if (crontab := task.crontab) is not None:
        return {"schedule_kind": CRON, "cron": cron_expression(crontab), "timezone": str(crontab.timezone)}
    if (interval := task.interval) is not None:
        policy = policy_of(task) if task.pk else None
        anchor = policy.anchor.astimezone(UTC).replace(tzinfo=None, microsecond=0) if policy else None
        return {
            "schedule_kind": INTERVAL,
            "every": interval.every,
            "period": interval.period,
            "anchor": anchor,
        }
    if (clocked := task.clocked) is not None:
        return {
            "schedule_kind": ONE_OFF,
            "run_at": clocked.clocked_time.astimezone(UTC).replace(tzinfo=None),
            "timezone": "UTC",
        }
    return {"schedule_kind": CRON, "timezone": "UTC"}


class ScheduleForm(forms.ModelForm):
    task = forms.CharField(
        label="Job",
        max_length=200,
        widget=DatalistInput(job_names, {"size": 50, "placeholder": "start typing a job name"}),
        help_text="A job from the catalog (workers publish it); its doc, default queue and limits show "
        "in the preview below.",
    )
    schedule_kind = forms.ChoiceField(label="Runs", choices=KINDS, initial=CRON, widget=forms.RadioSelect)
    cron = forms.CharField(
        label="Cron",
        required=False,
        max_length=200,
        widget=forms.TextInput(
            attrs={"size": 24, "placeholder": "0 9 * * mon-fri", "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text="minute hour day-of-month month day-of-week, on the time zone's clock: "
        "<code>0 9 * * 1-5</code>, <code>*/15 * * * *</code>, <code>@daily</code>, <code>@hourly</code>, "
        "names like <code>mon-fri</code> and <code>jan</code>.",
    )
    timezone = forms.CharField(
        label="Time zone",
        required=False,
        initial="UTC",
        max_length=64,
        widget=DatalistInput(time_zone_names, {"size": 24, "placeholder": "Europe/Berlin"}),
        help_text="IANA name. A cron and a one-off time are read on this zone's clock.",
    )
    every = forms.IntegerField(label="Every", required=False, max_value=2**31 - 1)
    period = forms.ChoiceField(label="Unit", required=False, choices=PERIODS, initial="minutes")
    anchor = forms.DateTimeField(
        label="Anchor (UTC)",
        required=False,
        widget=LocalDateTimeInput(),
        help_text="Fires at anchor + k × every. Empty: when first saved. "
        "A start time, if set, is the anchor.",
    )
    run_at = forms.DateTimeField(
        label="Run once at",
        required=False,
        widget=LocalDateTimeInput(),
        help_text="On the time zone's clock.",
    )

    class Meta:
        model = PeriodicTask
        fields = (
            "name",
            "task",
            "args",
            "kwargs",
            "enabled",
            "description",
            "start_time",
            "expires",
            "priority",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial = {**schedule_initial(self.instance), **self.initial}
        # A schedule row chosen in clean() that does not exist yet (created by save_schedule_row).
        self._new_row: models.Model | None = None
        # The one-off row the task has now: the field shows it to the second, so keeping that second
        # keeps this row (an edit of the name is no new one-off time, and not "in the past").
        self._current_clocked = self.instance.clocked

    # --- cleaning ----------------------------------------------------------------------------

    def clean(self) -> dict[str, Any]:
        """Turn the schedule fields into the task's one schedule row (found or unsaved), or field errors."""
        data = super().clean() or self.cleaned_data
        task = self.instance
        task.crontab = task.interval = task.clocked = task.solar = None
        self._new_row = None
        kind = str(data.get("schedule_kind") or "")
        task.one_off = kind == ONE_OFF
        chooser = {CRON: self._cron_row, INTERVAL: self._interval_row, ONE_OFF: self._one_off_row}.get(kind)
        if chooser is None:  # no kind: the field's own "required" error says so
            return data
        try:
            row = chooser(data)
        except ValidationError as exc:
            add_errors(self, exc, fallback_field="schedule_kind")
            return data
        setattr(task, ROW_OF_KIND[kind], row)
        self._new_row = row if row.pk is None else None
        return data

    def _zone(self, data: dict[str, Any]) -> str:
        return (data.get("timezone") or "").strip() or "UTC"

    def _cron_row(self, data: dict[str, Any]) -> models.Model:
        text = data.get("cron") or ""
        if not text.strip():
            raise ValidationError({"cron": "Type a cron expression, like 0 9 * * mon-fri or @daily."})
        expression, zone = expand_cron(text), self._zone(data)
        validate_cron(expression, zone)
        return identical_or_new(
            CrontabSchedule, **dict(zip(CRON_FIELDS, expression.split(), strict=True)), timezone=zone
        )

    def _interval_row(self, data: dict[str, Any]) -> models.Model:
        every, period = data.get("every"), data.get("period") or "minutes"
        if every is None:
            raise ValidationError({"every": f"Give how many {period} between runs."})
        validate_interval(every, period)
        return identical_or_new(IntervalSchedule, every=every, period=period)

    def _one_off_row(self, data: dict[str, Any]) -> models.Model:
        run_at = data.get("run_at")
        if run_at is None:
            raise ValidationError({"clocked": "Give the date and time to run it at."})
        zone = self._zone(data)
        # The zone check is validate_cron's (the same message for a cron and a one-off).
        validate_cron("0 0 * * *", zone)
        try:
            when = django_timezone.make_naive(run_at).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
        except OverflowError:
            raise ValidationError({"clocked": "That time is out of range."}) from None
        current = self._current_clocked
        if current is not None and current.clocked_time.replace(microsecond=0) == when:
            return current
        return identical_or_new(ClockedSchedule, clocked_time=when)

    def _post_clean(self) -> None:
        """Run the save-time check on the task as it will be saved: a form error, never a 500."""
        # django-stubs leaves out ModelForm's private _post_clean, which Django calls after clean().
        super()._post_clean()  # type: ignore[misc]
        if any(field in self.errors for field in (*SCHEDULE_FIELDS, *JOB_FIELDS)):
            return
        try:
            validate_periodic_task(as_saved(self.instance), changed_schedule_fields(self.instance))
        except ValidationError as exc:
            add_errors(self, exc, fallback_field="schedule_kind")

    # --- saving (by the admin, once the whole page is valid) -----------------------------------

    def save_schedule_row(self) -> None:
        """Create the schedule row chosen in ``clean`` if it is new, or reuse one saved meanwhile.

        Call inside the page's transaction (the admin's ``changeform_view`` is
        atomic): on PostgreSQL a transaction-scoped advisory lock on the row's
        values makes two pages saving the same new cron at once create it once.
        """
        row = self._new_row
        if row is None:
            return
        values = {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields if not f.primary_key}
        if connection.vendor == "postgresql":
            key = f"{row._meta.label}:{sorted((name, str(value)) for name, value in values.items())}"
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_ROW_LOCK_NAMESPACE, key])
        stored = identical_or_new(type(row), **values)
        if stored.pk is None:
            stored.save()  # through the ORM: its pre_save validation and change signals run
        name = {CrontabSchedule: "crontab", IntervalSchedule: "interval", ClockedSchedule: "clocked"}[
            type(row)
        ]
        setattr(self.instance, name, stored)
        self._new_row = None

    def save_policy_parts(self) -> None:
        """After the task and its policy inline are saved: the interval anchor, and one meaning of queue.

        Beat takes the policy's queue before the task's; a queue left on the
        task (django-celery-beat's field, no longer shown) moves to the policy
        unless the policy names its own, so the page shows the queue beat uses.
        """
        task = self.instance
        policy = SchedulePolicy.objects.filter(task=task).first()
        if policy is None:
            return
        changed = []
        anchor = self.cleaned_data.get("anchor")
        # The field shows whole seconds (beat reads the anchor at whole seconds too): an untouched
        # field is no edit, so it writes no change.
        if (
            self.cleaned_data.get("schedule_kind") == INTERVAL
            and anchor is not None
            and "anchor" in self.changed_data
            and anchor != policy.anchor.replace(microsecond=0)
        ):
            policy.anchor = anchor
            changed.append("anchor")
        if task.queue:
            if not policy.queue:
                policy.queue = task.queue
                changed.append("queue")
            task.queue = None
            task.save()
        if changed:
            policy.save(update_fields=changed)

    def anchor_at(self, now: datetime) -> datetime:
        """The interval anchor this page gives (for the preview): the field, the saved one, else ``now``."""
        anchor = self.cleaned_data.get("anchor") if hasattr(self, "cleaned_data") else None
        if anchor is not None:
            return anchor
        policy = policy_of(self.instance) if self.instance.pk else None
        return policy.anchor if policy is not None else now
