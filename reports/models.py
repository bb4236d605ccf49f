"""What a report run produced, where each schedule's reports go, and what became of each delivery."""

from __future__ import annotations

from django.db import models


class ReportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSON = "json", "JSON"
    HTML = "html", "HTML"
    XLSX = "xlsx", "Excel (XLSX)"


class ReportFile(models.Model):
    """One rendering of one report run, kept in the reports storage until ``expires_at``."""

    run = models.ForeignKey(
        "jobs.JobRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="report_files"
    )
    report = models.CharField(max_length=200, help_text="The report's job name.")
    format = models.CharField(max_length=8, choices=ReportFormat.choices)
    storage_name = models.CharField(max_length=500, help_text="The file's name in the reports storage.")
    size_bytes = models.BigIntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    parameters = models.JSONField(default=dict, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(help_text="The cleanup job deletes the file and this row after it.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"], name="report_file_expiry")]

    def __str__(self) -> str:
        return f"{self.report} ({self.format}, {self.created_at:%Y-%m-%d %H:%M})"


class DestinationKind(models.TextChoices):
    EMAIL = "email", "email (file attached, a link above the size limit)"
    SLACK = "slack", "Slack (incoming webhook: a message with a link)"
    WEBHOOK = "webhook", "webhook (JSON POST with a link, signed)"


class ReportDestination(models.Model):
    """Where one schedule's report goes after each run."""

    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="report_destinations"
    )
    kind = models.CharField(max_length=16, choices=DestinationKind.choices)
    target = models.CharField(
        max_length=1000, help_text="Email addresses (comma-separated), or the Slack/webhook URL."
    )
    secret = models.CharField(
        max_length=200, blank=True, help_text="Webhook only: signs the body (HMAC-SHA256), as alerts do."
    )
    formats = models.JSONField(default=list, blank=True, help_text='Renderings to send, e.g. ["csv"].')
    attach_up_to_bytes = models.PositiveIntegerField(
        default=10 * 1024 * 1024, help_text="Email: files above this size are sent as a link."
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["schedule", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display().split(' ')[0]} → {self.target}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ReportDelivery(models.Model):
    """One report run sent to one destination: its attempts and the receiver's last answer."""

    run = models.ForeignKey("jobs.JobRun", on_delete=models.CASCADE, related_name="report_deliveries")
    destination = models.ForeignKey(
        ReportDestination, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    kind = models.CharField(max_length=16, choices=DestinationKind.choices)
    target = models.CharField(max_length=1000)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} → {self.target}: {self.status}"
