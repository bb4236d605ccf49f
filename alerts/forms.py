"""The admin's forms for channels and maintenance windows: bad input is a form error, nothing saved.

A channel's target and secret are checked by ``alerts.channels.validate_channel``
through ``Channel.clean`` (the ModelForm runs the model's clean), so the form,
``full_clean`` and any other caller refuse the same things with the same words.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerts.models import Channel, Maintenance, MaintenanceScope
from jobs.models import JobDefinition


def parse_job_names(text: str) -> list[str]:
    """Comma- or newline-separated job names, each checked against the catalog."""
    names = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    known = set(JobDefinition.objects.filter(name__in=names).values_list("name", flat=True))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValidationError(
            "No job named %(names)s in the catalog (the jobs the workers published).",
            params={"names": ", ".join(repr(n) for n in unknown)},
        )
    return list(dict.fromkeys(names))


class ChannelForm(forms.ModelForm):
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Webhook: the HMAC-SHA256 signing key (16+ characters); PagerDuty: the integration's "
        "routing key (32 characters). Never shown again; leave blank to keep the current one.",
    )
    jobs = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Job names routed here, comma-separated: incidents of every schedule of these jobs.",
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "enabled", "target", "secret", "is_default", "schedules", "jobs"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and isinstance(self.instance.jobs, list):
            self.initial["jobs"] = ", ".join(self.instance.jobs)
        self.initial["secret"] = ""

    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret") or ""
        if not secret and self.instance.pk:
            return self.instance.secret  # blank keeps the stored key (it is never sent to the browser)
        return secret

    def clean_jobs(self) -> list[str]:
        return parse_job_names(self.cleaned_data.get("jobs") or "")


class MaintenanceForm(forms.ModelForm):
    """scope "schedule" needs a schedule, "job" a job of the catalog; ends after it starts."""

    class Meta:
        model = Maintenance
        fields = ["scope", "schedule", "job", "note", "starts_at", "ends_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance.pk:
            self.fields["starts_at"].initial = timezone.now
        self.fields["ends_at"].help_text = "Required: a mute always ends."

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        scope = data.get("scope")
        if scope == MaintenanceScope.SCHEDULE and not data.get("schedule"):
            self.add_error("schedule", "Pick the schedule to mute.")
        if scope == MaintenanceScope.JOB:
            job = (data.get("job") or "").strip()
            if not job:
                self.add_error("job", "Name the job to mute.")
            else:
                try:
                    data["job"] = parse_job_names(job)[0]
                except ValidationError as exc:
                    self.add_error("job", exc)
        if scope != MaintenanceScope.SCHEDULE:
            data["schedule"] = None
        if scope != MaintenanceScope.JOB:
            data["job"] = ""
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends and ends <= starts:
            self.add_error("ends_at", "The end must be after the start.")
        return data
