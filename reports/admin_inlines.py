"""The schedule page's "Report destinations": where each run's report goes, edited beside the schedule.

The schedule admin lives in ``scheduler``, which never imports reports, so
``ReportsConfig.ready`` appends ``ReportDestinationInline`` to the
registered schedule admin's inlines (``add_destinations_to_schedule_admin``).
The form checks each row with ``reports.destinations.validate_destination``
and shows each error beside its field; formats are checkboxes (none ticked:
every rendering the report produces). The webhook secret is a password
field that keeps the stored value when left empty. A schedule form posted
without this section leaves the destinations as they are.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django_celery_beat.models import PeriodicTask

from reports.destinations import validate_destination
from reports.models import ReportDestination, ReportFormat


class ReportDestinationForm(forms.ModelForm):
    formats = forms.MultipleChoiceField(
        choices=ReportFormat.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every rendering the report produces.",
    )
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhook only: at least 16 characters; the receiver checks the HMAC-SHA256 signature "
        "with it. Left empty: the stored secret stays.",
    )

    class Meta:
        model = ReportDestination
        fields = ("kind", "target", "secret", "formats", "attach_up_to_bytes", "enabled")

    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret") or ""
        return secret or (self.instance.secret if self.instance.pk else "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors or cleaned.get("DELETE"):
            return cleaned
        try:
            validate_destination(
                cleaned.get("kind", ""),
                cleaned.get("target", ""),
                cleaned.get("secret", ""),
                list(cleaned.get("formats") or []),
                cleaned.get("attach_up_to_bytes"),
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                for message in messages:
                    self.add_error(field if field in self.fields else None, message)
        return cleaned


class ReportDestinationFormSet(BaseInlineFormSet):
    """A schedule form posted without this section (a client written before it) changes no destination.

    The section's management fields are then taken as "no rows shown", so
    nothing is added, changed or deleted, instead of the whole save failing
    with "ManagementForm data is missing".
    """

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        prefix = kwargs.get("prefix") or self.get_default_prefix()
        if data is not None and f"{prefix}-TOTAL_FORMS" not in data:
            data = data.copy()
            data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
        super().__init__(data, *args, **kwargs)


class ReportDestinationInline(admin.TabularInline):
    model = ReportDestination
    form = ReportDestinationForm
    formset = ReportDestinationFormSet
    extra = 0
    verbose_name = "report destination"
    verbose_name_plural = "Report destinations (report jobs only: where each run's files are sent)"


def add_destinations_to_schedule_admin(site: admin.AdminSite = admin.site) -> None:
    """Append the inline to the schedule admin once (``ready`` may run twice in tests)."""
    schedule_admin = site._registry.get(PeriodicTask)
    if schedule_admin is None:
        return
    inlines = list(schedule_admin.inlines)
    if ReportDestinationInline not in inlines:
        schedule_admin.inlines = [*inlines, ReportDestinationInline]  # type: ignore[misc]  # this one admin only
