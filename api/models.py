"""API tokens (stored hashed) and the idempotency keys of "run now" calls.

A token is shown once, when it is created (``ApiToken.issue``); the table
keeps only its SHA-256 and a short prefix to tell tokens apart in the admin.
Tokens are random (256 bits), so a plain SHA-256 is enough: there is nothing
to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.models import JobRun

TOKEN_PREFIX = "sj_"  # noqa: S105 (not a secret: every token starts so)
# "scheduled jobs": recognisable in logs and secret scanners
VISIBLE_PREFIX_LENGTH = len(TOKEN_PREFIX) + 8
# last_used_at is written at most this often per token: one write per request would
# make every read a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """One user's bearer token. Revoked tokens stay (who had access, when) but authenticate nobody."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. “billing service”.")
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def set_new_secret(self) -> str:
        """Give this token a fresh secret and save it; return the secret (shown once, never stored)."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.prefix, self.digest = secret[:VISIBLE_PREFIX_LENGTH], digest_of(secret)
        self.save()
        return secret

    @classmethod
    def authenticate(cls, secret: str) -> ApiToken | None:
        """The live token whose secret this is (its user active), or None; notes its use."""
        token = (
            cls.objects.select_related("user")
            .filter(digest=digest_of(secret), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is None:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token


class ApiIdempotencyKey(models.Model):
    """(user, Idempotency-Key) → the run the first call started; written in that call's transaction.

    ``request_digest`` fingerprints what was asked (endpoint and body): the
    same key with another request is refused, not silently answered with
    the first run.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_digest = models.CharField(max_length=64)
    run = models.ForeignKey(JobRun, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="one_run_per_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.key} → {self.run_id}"
