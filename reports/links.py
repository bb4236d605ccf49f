"""Links to a report file that work outside the admin: signed, expiring with the file.

A link carries the file's id signed with ``SECRET_KEY`` and the time it was
made (``django.core.signing.TimestampSigner``, salt ``reports.download``), so
nobody can make one for another file or change the id. It is valid for the
file's retention (``expires_at - created_at``) from when it was made, and
never past ``expires_at`` (the cleanup job deletes the file then anyway).

``file_for_token`` is what the download view asks: the file, or
``LinkRefused`` with the HTTP status to answer: 403 for a token that was not
signed here (forged, altered, truncated), 410 for one that expired or whose
file passed its retention, 404 for a file that no longer exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils import timezone

from reports.models import ReportFile

SALT = "reports.download"


class LinkRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def download_token(file: ReportFile) -> str:
    return signer().sign(str(file.pk))


def download_url(file: ReportFile) -> str:
    """The absolute signed link (``PUBLIC_URL``: where people's browsers reach this site)."""
    return settings.PUBLIC_URL + reverse("reports:download", args=[download_token(file)])


def file_for_token(token: str, *, now: datetime | None = None) -> ReportFile:
    """The file a link names, if the link is genuine and still valid; else ``LinkRefused``."""
    try:
        file_id = signer().unsign(token)  # the signature alone: which file, and is the link ours
    except signing.BadSignature as exc:
        raise LinkRefused(403, "This download link is not valid.") from exc
    file = ReportFile.objects.filter(pk=int(file_id)).first() if file_id.isdigit() else None
    if file is None:
        raise LinkRefused(404, "This report file no longer exists.")
    now = now or timezone.now()
    if file.expires_at <= now:
        raise LinkRefused(410, "This report file has expired.")
    retention = max(file.expires_at - file.created_at, timedelta(0))
    try:
        signer().unsign(token, max_age=retention)
    except signing.SignatureExpired as exc:
        raise LinkRefused(410, "This download link has expired.") from exc
    return file
