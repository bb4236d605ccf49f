"""What on-call alerting records: schedule health, flips, incidents, maintenance, channels, notifications.

- ``ScheduleHealth``: one row per schedule the detector has judged, its
  state (up, late, down, paused) and since when; every change is a ``Flip``.
- ``Incident``: one outage, per schedule (``scope`` ``schedule:<id>``) or of
  the system (``beat``, ``queue:<name>``). At most one open incident per
  scope (a partial unique constraint), so two detectors cannot open two. An
  incident grouped under a system incident (``cause``) does not page on its
  own: the cause pages once.
- ``Maintenance``: a mute for a schedule, a job or everything, with a note
  and an end; slots in it are still recorded, incidents open quietly.
- ``Channel``: where notifications go (webhook, Slack, email, PagerDuty) and
  which schedules and jobs route to it (or every one: ``is_default``).
- ``Notification``: the alert outbox, one row per (incident, channel, event);
  delivered with retries and backoff, each claimed by a guarded UPDATE.

Every state change of an incident is one guarded UPDATE in
``alerts.incidents``; of a notification, in ``alerts.delivery``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django_celery_beat.models import PeriodicTask


class Health(models.TextChoices):
    UP = "up"
    LATE = "late", "late (warning)"
    DOWN = "down"
    PAUSED = "paused", "paused (disabled or in maintenance)"


class IncidentKind(models.TextChoices):
    MISSED = "missed", "missed: no run started by slot + grace"
    LATE = "late", "late: started after the lateness threshold"
    FAILED = "failed", "failed after its last retry"
    OVERRUN = "overrun", "overrun: still running past its expected duration"
    TIMED_OUT = "timed_out", "timed out (soft or hard limit)"
    LOST = "lost", "lost: its worker died under it"
    NOT_SCHEDULED = "not_scheduled", "not scheduled: beat cannot evaluate the schedule's row"
    BEAT_DOWN = "beat_down", "beat down: no leader tick"
    NO_WORKER = "no_worker", "no worker serves a queue with due runs"


SYSTEM_KINDS = frozenset({IncidentKind.BEAT_DOWN, IncidentKind.NO_WORKER})


class ScheduleHealth(models.Model):
    schedule = models.OneToOneField(
        "django_celery_beat.PeriodicTask", primary_key=True, on_delete=models.CASCADE, related_name="health"
    )
    state = models.CharField(max_length=8, choices=Health.choices, default=Health.UP)
    since = models.DateTimeField()
    last_good_run = models.ForeignKey(
        "jobs.JobRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name_plural = "schedule health"

    def __str__(self) -> str:
        return f"schedule {self.schedule_id}: {self.state} since {self.since:%Y-%m-%d %H:%M:%S}Z"


class Incident(models.Model):
    id = models.BigAutoField(primary_key=True)
    scope = models.CharField(
        max_length=255, help_text="What is out: 'schedule:<id>', 'beat' or 'queue:<name>'."
    )
    kind = models.CharField(max_length=16, choices=IncidentKind.choices)
    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="incidents",
    )
    schedule_name = models.CharField(max_length=200, blank=True)
    job = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    run = models.ForeignKey(
        "jobs.JobRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The run that opened it (the missed, failed, late or overrunning one).",
    )
    cause = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="effects",
        help_text="The system incident this one is grouped under (beat down, no worker): it does "
        "not page on its own.",
    )
    summary = models.CharField(max_length=500)
    details = models.JSONField(default=dict, blank=True)
    quiet = models.BooleanField(
        default=False, help_text="Opened during maintenance or under a cause: recorded, never paged."
    )
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=500, blank=True)
    alerted_at = models.DateTimeField(null=True, blank=True, help_text="When its trigger was queued.")
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    resolve_alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope"], condition=Q(resolved_at__isnull=True), name="one_open_incident_per_scope"
            ),
        ]
        indexes = [
            models.Index(fields=["-opened_at"], name="incident_history"),
            models.Index(
                fields=["next_reminder_at"],
                condition=Q(resolved_at__isnull=True),
                name="incident_reminders_due",
            ),
        ]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else "open"
        return f"#{self.pk} {self.kind} {self.scope} ({state})"

    @property
    def dedup_key(self) -> str:
        """Stable per incident: PagerDuty groups trigger and resolve by it."""
        return f"beatplatform-incident-{self.pk}"


class Flip(models.Model):
    """A schedule's health changing state (healthchecks' word), with why."""

    id = models.BigAutoField(primary_key=True)
    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask", null=True, on_delete=models.SET_NULL, related_name="flips"
    )
    incident = models.ForeignKey(
        Incident, null=True, blank=True, on_delete=models.SET_NULL, related_name="flips"
    )
    old_state = models.CharField(max_length=8, choices=Health.choices)
    new_state = models.CharField(max_length=8, choices=Health.choices)
    at = models.DateTimeField()
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["schedule", "-at"], name="flip_by_schedule")]

    def __str__(self) -> str:
        change = f"{self.old_state} → {self.new_state}"
        return f"schedule {self.schedule_id}: {change} at {self.at:%Y-%m-%d %H:%M:%S}Z"


class MaintenanceScope(models.TextChoices):
    ALL = "all", "everything"
    SCHEDULE = "schedule"
    JOB = "job"


class Maintenance(models.Model):
    """A mute: slots that fall in it are recorded, incidents open quietly and page nobody."""

    scope = models.CharField(max_length=8, choices=MaintenanceScope.choices)
    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    job = models.CharField(max_length=200, blank=True)
    note = models.CharField(max_length=500)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-starts_at"]
        verbose_name_plural = "maintenance windows"
        indexes = [models.Index(fields=["ends_at"], name="maintenance_by_end")]

    def __str__(self) -> str:
        target = {"all": "everything", "schedule": f"schedule {self.schedule_id}", "job": self.job}[
            self.scope
        ]
        return f"mute {target} until {self.ends_at:%Y-%m-%d %H:%M}Z: {self.note}"


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook", "webhook (JSON, HMAC-SHA256 signed)"
    SLACK = "slack", "Slack incoming webhook"
    EMAIL = "email"
    PAGERDUTY = "pagerduty", "PagerDuty Events API v2"


class Channel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    target = models.CharField(
        max_length=1000,
        help_text="Webhook or Slack URL; email addresses (comma-separated); PagerDuty: the events "
        "endpoint (empty: https://events.pagerduty.com/v2/enqueue).",
        blank=True,
    )
    secret = models.CharField(
        max_length=200,
        blank=True,
        help_text="Webhook: the HMAC-SHA256 key; PagerDuty: the integration (routing) key.",
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(
        default=False, help_text="Receives incidents of every schedule and job, and system incidents."
    )
    schedules = models.ManyToManyField("django_celery_beat.PeriodicTask", blank=True, related_name="+")
    jobs = models.JSONField(default=list, blank=True, help_text="Job names routed here.")
    last_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.CharField(max_length=1000, blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        """The target and secret suit the kind (the admin form runs the same check)."""
        from alerts.channels import validate_channel  # alerts.channels imports this module

        validate_channel(self.kind, self.target, self.secret)


class NotificationEvent(models.TextChoices):
    TRIGGER = "trigger"
    REMIND = "remind"
    RESOLVE = "resolve"
    TEST = "test", "test alert"


class NotificationStatus(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed", "failed (gave up)"


class Notification(models.Model):
    """The alert outbox: one message to one channel, sent at least once, retried with backoff."""

    id = models.BigAutoField(primary_key=True)
    incident = models.ForeignKey(
        Incident, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=8, choices=NotificationEvent.choices)
    sequence = models.PositiveIntegerField(default=0, help_text="The reminder's number; 0 otherwise.")
    payload = models.JSONField(default=dict, help_text="What the message says, rendered when queued.")
    status = models.CharField(
        max_length=8, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["incident", "channel", "event", "sequence"],
                condition=Q(incident__isnull=False),
                name="one_notification_per_event",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "sending"]),
                name="notifications_due",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} of incident {self.incident_id} to {self.channel_id} [{self.status}]"


class SentryMonitor(PeriodicTask):
    """A schedule as a Sentry Crons monitor: a proxy for its read-only admin page (``alerts.crons_admin``)."""

    class Meta:
        proxy = True
        verbose_name = "Sentry Crons monitor"
        verbose_name_plural = "Sentry Crons monitors"
