"""Outreach attempts: the calls, texts and letters staff make when a patient must be reached
(issue 5). The worklist shows the last one on each row, so the next person on shift sees
that the patient was already called and with what outcome."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from patients.history import AuditedHistory
from patients.models import Patient
from pumps.models import Pump


class OutreachChannel(models.TextChoices):
    PHONE = "phone", "Phone call"
    SMS = "sms", "SMS"
    EMAIL = "email", "Email"
    LETTER = "letter", "Letter"
    IN_PERSON = "in_person", "In person"


class OutreachOutcome(models.TextChoices):
    REACHED = "reached", "Reached"
    NO_ANSWER = "no_answer", "No answer"
    LEFT_MESSAGE = "left_message", "Left a message"
    WRONG_NUMBER = "wrong_number", "Wrong number or address"


class OutreachAttempt(models.Model):
    """One attempt by a person to reach a patient about their pump."""

    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, related_name="outreach_attempts")
    # Kept with the attempt: the pump's patient never changes, but the row must read on its own.
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="outreach_attempts")
    at = models.DateTimeField("when")
    channel = models.CharField(max_length=20, choices=OutreachChannel.choices, default=OutreachChannel.PHONE)
    outcome = models.CharField(max_length=20, choices=OutreachOutcome.choices)
    note = models.TextField(blank=True)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["pump", "-at"], name="outreach_pump_at")]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} {self.at:%Y-%m-%d %H:%M}: {self.get_outcome_display()}"
