"""Outbound webhooks: integrators' endpoints, one delivery row per (endpoint, event), and
the attempts made to deliver it.

The webhook outbox follows the message outbox (notifications/models.py, STYLE.md §7):
every delivery is a row before it is a network call, claimed atomically, with a claim that
expires so a dead worker strands nothing. Events and signing follow the Standard Webhooks
specification (https://www.standardwebhooks.com/, `webhook-id` = `event_id`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from patients.history import AuditedHistory
from patients.models import Clinic


class EventType(models.TextChoices):
    REFILL_RECORDED = "refill.recorded", "Refill recorded"
    DOSE_CHANGED = "dose.changed", "Dose changed"
    REFILL_OVERDUE = "refill.overdue", "Refill overdue"
    ESCALATION_RAISED = "escalation.raised", "Escalation raised"


def validate_webhook_url(value: str) -> None:
    """Only http(s) to a public host: a file:, ftp: or gopher: URL must never reach the HTTP
    client, nor an internal address (webhooks.sending.address_problem)."""
    from webhooks.sending import address_problem

    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of 0-65535
    except ValueError:
        raise ValidationError("Enter a valid URL.", code="invalid") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL.", code="scheme")
    if port == 0:
        raise ValidationError("Enter a port between 1 and 65535.", code="port")
    if parts.username is not None or parts.password is not None:
        # Not sent by the client, and shown in logs to every member: use the signature instead.
        raise ValidationError("Leave credentials out of the URL; receivers verify the signature.", code="credentials")
    problem = address_problem(value)
    if problem:
        raise ValidationError(problem, code="internal")


def validate_event_types(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("Give a list of event type names (an empty list: all events).")
    unknown = sorted(set(value) - set(EventType.values))
    if unknown:
        raise ValidationError(
            f"Unknown event type: {', '.join(unknown)}. Known: {', '.join(EventType.values)}.", code="unknown_event_type"
        )


class WebhookEndpoint(models.Model):
    """Where an integrator wants a clinic's events, and the secret they are signed with."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField("URL", max_length=500, validators=[validate_webhook_url])
    description = models.CharField(max_length=200, blank=True, help_text="What receives it, e.g. 'Epic scheduling bridge'.")
    # Standard Webhooks: "whsec_" + base64 of 24-64 random bytes; the receiver needs it to verify.
    secret = models.CharField(max_length=100, editable=False)
    # During a rotation, deliveries are signed with both secrets until this one expires, so
    # a receiver can switch without rejecting a single event (spec: several signatures).
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    event_types = models.JSONField(
        default=list, blank=True, validators=[validate_event_types], help_text="Event types to send; empty: all."
    )
    is_active = models.BooleanField(default=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.CharField(max_length=300, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(
        default=0, editable=False, help_text="Deliveries that failed for good in a row; a success resets it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    history = AuditedHistory(excluded_fields=["secret", "previous_secret", "previous_secret_expires_at", "consecutive_failures"])

    class Meta:
        ordering = ["clinic", "pk"]
        verbose_name = "webhook endpoint"
        indexes = [models.Index(fields=["clinic", "is_active"], name="webhookendpoint_clinic_active")]

    def __str__(self) -> str:
        return self.description or self.url

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (will retry)"
    FAILED_PERMANENTLY = "failed_permanently", "Failed permanently"
    CANCELLED = "cancelled", "Cancelled"


# Deliveries that may still go out: disabling an endpoint cancels these.
OPEN_STATES = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)
# Deliveries staff may send again ("retry now").
RETRYABLE_STATES = (DeliveryStatus.FAILED, DeliveryStatus.FAILED_PERMANENTLY, DeliveryStatus.CANCELLED)


class WebhookDelivery(models.Model):
    """One event for one endpoint. `event_id` is the `webhook-id` header: the same on every
    retry, so a receiver can drop a duplicate (at-least-once delivery)."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=40, editable=False)
    event_type = models.CharField(max_length=30, choices=EventType.choices, editable=False)
    payload = models.JSONField(editable=False, help_text="The body as sent: type, timestamp and data (ids, no names).")

    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    status_reason = models.CharField(max_length=300, blank=True)
    attempt_count = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When a delivery task was last queued.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhookdelivery_unique_event")]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="webhookdelivery_status_next"),
            models.Index(fields=["endpoint", "status"], name="webhookdelivery_endpoint"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class AttemptOutcome(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight (no outcome recorded)"
    WORKER_LOST = "worker_lost", "Worker lost mid-send (outcome unknown)"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookAttempt(models.Model):
    """One HTTP request, committed before the network call and closed after it (the delivery log)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=AttemptOutcome.choices, default=AttemptOutcome.IN_FLIGHT)
    url = models.URLField("URL", max_length=500)
    request_headers = models.JSONField(default=dict, help_text="The headers sent (the secret never is).")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["started_at", "pk"]
        verbose_name = "webhook attempt"

    def __str__(self) -> str:
        return f"{self.get_outcome_display()} at {self.started_at:%Y-%m-%d %H:%M:%S}"
