"""Calendar feeds: signed, revocable iCalendar URLs of refill-by dates.

A feed URL is a bearer capability (it ends up in phones' calendar apps), so the row holds
no secret of its own: the URL is a signature over the feed's id and a random nonce, and
revoking the row makes the URL answer 404 at once.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models

from patients.history import AuditedHistory
from patients.models import Clinic, Patient
from pumps.models import Pump


def new_nonce() -> str:
    # 128 random bits: a URL names exactly this row, even if ids were ever reused (a restore).
    return secrets.token_urlsafe(16)


class Audience(models.TextChoices):
    STAFF = "staff", "Clinic staff"
    PATIENT = "patient", "Patient"


class CalendarFeed(models.Model):
    """A subscription address: the clinic's staff feed (no patient) or one patient's feed."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="calendar_feeds")
    patient = models.ForeignKey(
        Patient,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="calendar_feeds",
        help_text="Blank: the clinic's staff feed of every active pump. A patient: that patient's own refill dates.",
    )
    label = models.CharField(max_length=100, help_text="Who or what subscribes, e.g. 'Refill nurses' shared calendar'.")
    nonce = models.CharField(max_length=32, default=new_nonce, editable=False)
    created_at = models.DateTimeField(editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, editable=False, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Written at most once a minute: a calendar polling every few seconds costs no writes.
    last_fetched_at = models.DateTimeField(null=True, blank=True, editable=False)

    history = AuditedHistory(excluded_fields=["nonce", "last_fetched_at"])

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "calendar feed"

    def __str__(self) -> str:
        return self.label

    @property
    def audience(self) -> Audience:
        return Audience.STAFF if self.patient_id is None else Audience.PATIENT

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class PublishedEvent(models.Model):
    """The version of one event (one UID) that feeds last published.

    Calendar clients keep the copy with the higher SEQUENCE (RFC 5545 §3.8.7.4), so a date
    that moves within a fill cycle must come with a higher number. The number is bumped the
    first time a feed renders changed content, and never otherwise: fetching twice gives the
    same bytes.
    """

    uid = models.CharField(max_length=255, unique=True)
    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, related_name="+")
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the event's content, SEQUENCE and stamps aside.")
    sequence = models.PositiveIntegerField(default=0)
    modified_at = models.DateTimeField(help_text="When this content was first published (LAST-MODIFIED, DTSTAMP).")

    class Meta:
        ordering = ["uid"]

    def __str__(self) -> str:
        return f"{self.uid} #{self.sequence}"
