"""Alerting in the admin: channels (with "Send test alert"), maintenance windows, and read-only
incidents, flips, notifications and schedule health.

Every list page costs the same number of queries whatever the table's size:
foreign keys shown in a list are joined (``list_select_related``), a
schedule is shown by its stored or joined name (``PeriodicTask.__str__``
would query its interval or crontab per row), and no list filter lists
schedules (there can be 100,000: pickers are autocompletes).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from alerts.delivery import deliver_now, enqueue_test, retry_now
from alerts.forms import ChannelForm, MaintenanceForm
from alerts.models import Channel, Flip, Incident, Maintenance, Notification, ScheduleHealth
from jobs.admin import ReadOnlyAdmin as JobsReadOnlyAdmin


class ReadOnlyAdmin(JobsReadOnlyAdmin):
    """The run history's read-only admin, and records here cannot be deleted either."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def short(text: str, length: int = 80) -> str:
    return Truncator(text).chars(length)


def send_test_alert(request: HttpRequest, channel: Channel) -> bool:
    """Queue a test notification to ``channel`` and deliver it now; say how it went as a message."""
    notification = enqueue_test(channel)
    outcome = deliver_now([notification.pk])
    if notification.pk not in outcome:
        messages.warning(request, f"Test alert to {channel.name}: queued; another process is sending it.")
        return False
    error = outcome[notification.pk]
    if error is None:
        messages.success(request, f"Test alert to {channel.name}: delivered.")
        return True
    messages.error(
        request,
        f"Test alert to {channel.name} failed: {error}. It stays queued and is retried with backoff.",
    )
    return False


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ("name", "kind", "enabled", "is_default", "last_sent_at", "last_error_at", "error")
    list_filter = ("kind", "enabled", "is_default")
    search_fields = ("name", "target")
    autocomplete_fields = ("schedules",)
    readonly_fields = ("last_sent_at", "last_error", "last_error_at")
    actions = ("send_test_alerts",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled")}),
        (
            "Where alerts go",
            {
                "fields": ("target", "secret"),
                "description": "webhook: an http(s) URL and a signing secret; Slack: the incoming-webhook "
                "URL; email: addresses, comma-separated; PagerDuty: the routing key as secret (the "
                "target may stay empty: https://events.pagerduty.com/v2/enqueue).",
            },
        ),
        ("What is routed here", {"fields": ("is_default", "schedules", "jobs")}),
        ("Delivery", {"fields": ("last_sent_at", "last_error_at", "last_error")}),
    )

    @admin.display(description="last error")
    def error(self, channel: Channel) -> str:
        return short(channel.last_error)

    @admin.action(description="Send test alert")
    def send_test_alerts(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            send_test_alert(request, channel)

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.send_test_view)
        return [
            path("<path:object_id>/send-test/", view, name="alerts_channel_send_test"),
            *super().get_urls(),
        ]

    def send_test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Send test alert" button (POST only: it sends something)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        channel = get_object_or_404(Channel, pk=object_id)
        if not self.has_change_permission(request, channel):
            raise PermissionDenied
        send_test_alert(request, channel)
        return HttpResponseRedirect(reverse("admin:alerts_channel_change", args=[channel.pk]))


class FlipInline(ReadOnlyInline):
    model = Flip
    fields = ("at", "old_state", "new_state", "reason")
    readonly_fields = fields
    show_change_link = False


class NotificationInline(ReadOnlyInline):
    model = Notification
    fields = ("created_at", "event", "sequence", "channel", "status", "attempts", "sent_at", "last_error")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        return super().get_queryset(request).select_related("channel")


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "open"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "open"), ("no", "resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(resolved_at__isnull=self.value() == "yes")
        return queryset


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "scope", "schedule_name", "opened_at", "resolved_at", "quiet", "cause")
    list_filter = (OpenFilter, "kind", "quiet")
    list_select_related = ("cause",)
    search_fields = ("=scope", "schedule_name", "job", "summary")
    show_full_result_count = False
    inlines = (FlipInline, NotificationInline)
    fieldsets = (
        (None, {"fields": ("kind", "scope", "summary", "schedule", "schedule_name", "job", "queue", "run")}),
        ("Timeline (UTC)", {"fields": ("opened_at", "alerted_at", "resolved_at", "resolution")}),
        (
            "Paging",
            {"fields": ("quiet", "cause", "next_reminder_at", "reminders_sent", "resolve_alerted_at")},
        ),
        ("Details", {"fields": ("details",)}),
    )
    raw_id_fields = ("schedule", "run", "cause")


@admin.register(Flip)
class FlipAdmin(ReadOnlyAdmin):
    list_display = ("at", "schedule_name", "old_state", "new_state", "reason", "incident")
    list_filter = ("new_state",)
    list_select_related = ("schedule", "incident")
    raw_id_fields = ("schedule", "incident")
    show_full_result_count = False

    @admin.display(description="schedule", ordering="schedule__name")
    def schedule_name(self, flip: Flip) -> str:
        return flip.schedule.name if flip.schedule else f"(deleted {flip.schedule_id or ''})"


@admin.register(ScheduleHealth)
class ScheduleHealthAdmin(ReadOnlyAdmin):
    list_display = ("schedule_name", "state", "since")
    list_filter = ("state",)
    list_select_related = ("schedule",)
    search_fields = ("schedule__name",)
    raw_id_fields = ("schedule", "last_good_run")
    show_full_result_count = False

    @admin.display(description="schedule", ordering="schedule__name")
    def schedule_name(self, health: ScheduleHealth) -> str:
        return health.schedule.name


@admin.register(Maintenance)
class MaintenanceAdmin(admin.ModelAdmin):
    form = MaintenanceForm
    list_display = ("note", "scope", "target", "starts_at", "ends_at", "created_by")
    list_filter = ("scope",)
    list_select_related = ("schedule",)
    autocomplete_fields = ("schedule",)
    search_fields = ("note", "job", "schedule__name")

    @admin.display(description="muted")
    def target(self, window: Maintenance) -> str:
        if window.scope == "schedule":
            return window.schedule.name if window.schedule else "(deleted schedule)"
        return window.job if window.scope == "job" else "everything"

    def save_model(self, request: HttpRequest, obj: Maintenance, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = getattr(request.user, "username", "")[:150]
        super().save_model(request, obj, form, change)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "event",
        "incident",
        "channel",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "error",
    )
    list_filter = ("status", "event", "channel")
    list_select_related = ("incident", "channel")
    raw_id_fields = ("incident", "channel")
    fields = (
        ("event", "sequence"),
        ("incident", "channel"),
        ("status", "attempts"),
        ("created_at", "next_attempt_at", "claimed_until", "sent_at"),
        "last_error",
        "message",
        "payload",
    )
    readonly_fields = ("created_at", "message")
    show_full_result_count = False
    actions = ("retry_now",)

    @admin.display(description="last error")
    def error(self, notification: Notification) -> str:
        return short(notification.last_error)

    @admin.display(description="message")
    def message(self, notification: Notification) -> str:
        return format_html("<pre>{}</pre>", (notification.payload or {}).get("text", ""))

    @admin.action(description="Retry now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        """Pending and failed ones become due and are sent now; sent ones are left alone."""
        ids = list(queryset.values_list("pk", flat=True))
        made_due = retry_now(ids)
        outcome = deliver_now(ids)
        sent = sum(1 for error in outcome.values() if error is None)
        failed = {pk: error for pk, error in outcome.items() if error is not None}
        messages.info(request, f"{made_due} made due, {sent} delivered.")
        for pk, error in failed.items():
            messages.error(request, f"Notification {pk}: {error}")


# The "Sentry Crons monitors" page lives in its own module; importing it registers it.
from alerts import crons_admin  # noqa: E402, F401
