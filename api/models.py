"""API tokens: stored as a SHA-256 digest, shown in full once, revocable."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

from patients.history import AuditedHistory

# Keys are 256 random bits: a fast digest is enough (no password stretching needed), and
# a lookup by digest never compares secrets in Python.
KEY_PREFIX = "pt_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A key an integration sends as `Authorization: Token <key>`.

    It acts as its user: the same clinics and the same role, nothing more.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'Epic scheduling bridge'.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The key's first characters, to recognise it.")
    key_digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Blank: until revoked.")
    read_only = models.BooleanField(
        default=False, help_text="Reads only, whatever its user's role (an analytics or reporting integration)."
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    history = AuditedHistory(excluded_fields=["key_digest", "last_used_at"])

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
