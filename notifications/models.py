"""The message outbox, delivery attempts, contact blocks, staff escalations and sweep heartbeats.

Every message is a row before it is a network call (DESIGN.md "Messages", STYLE.md §7).
Its identity (recipient, channel, kind, subject, cycle, stage) is unique, so planning
twice creates nothing twice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from patients.history import AuditedHistory
from patients.models import Caregiver, Clinic, Patient
from pumps.models import Pump


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


class Kind(models.TextChoices):
    REFILL_REMINDER = "refill_reminder", "Refill reminder"
    OVERDUE = "overdue", "Refill overdue"
    WITHDRAWAL_WARNING = "withdrawal_warning", "Withdrawal warning"
    HEAT_WARNING = "heat_warning", "Heat warning"
    ALCOHOL_WARNING = "alcohol_warning", "Alcohol warning"
    MRI_WARNING = "mri_warning", "MRI warning"
    ESCALATION = "escalation", "Staff escalation"


class RecipientKind(models.TextChoices):
    PATIENT = "patient", "Patient"
    CAREGIVER = "caregiver", "Caregiver"
    STAFF = "staff", "Clinic staff"


class Status(models.TextChoices):
    PLANNED = "planned", "Planned"
    DUE = "due", "Due"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (will retry)"
    FAILED_PERMANENTLY = "failed_permanently", "Failed permanently"
    SUPPRESSED = "suppressed", "Suppressed"
    CANCELLED = "cancelled", "Cancelled"


# States a re-plan may still change: nothing has left the building.
OPEN_STATES = (Status.PLANNED, Status.DUE, Status.FAILED, Status.SUPPRESSED)
# States that mean the message reached (or was handed to) the provider.
SENT_STATES = (Status.SENT, Status.DELIVERED)


class Message(models.Model):
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="messages")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, null=True, blank=True, related_name="messages")
    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, null=True, blank=True, related_name="messages")
    caregiver = models.ForeignKey(Caregiver, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages")

    # ---- identity
    recipient_key = models.CharField(max_length=40, help_text="patient:ID, caregiver:ID or clinic:ID.")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    subject = models.CharField(max_length=40, help_text="What the message is about, e.g. pump:ID.")
    cycle = models.CharField(max_length=60, help_text="Which occurrence, e.g. the refill-by date it reminds of.")
    stage = models.CharField(max_length=30, blank=True)

    recipient_kind = models.CharField(max_length=10, choices=RecipientKind.choices)
    address = models.CharField(max_length=254, help_text="Email address or E.164 phone number.")
    language = models.CharField(max_length=5, default="en")
    time_zone = models.CharField(max_length=64, default="UTC", help_text="The recipient's, for dates and quiet hours.")
    critical = models.BooleanField(default=False, help_text="Never deferred by quiet hours or the SMS cap.")
    context = models.JSONField(default=dict, blank=True, help_text="Facts the text is rendered from (JSON).")

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLANNED)
    status_reason = models.CharField(max_length=200, blank=True)
    due_at = models.DateTimeField()
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    attempt_count = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    provider_id = models.CharField(max_length=100, blank=True, db_index=True)
    rendered_subject = models.CharField(max_length=255, blank=True)
    rendered_body = models.TextField(blank=True, help_text="The text as sent.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-due_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["recipient_key", "channel", "kind", "subject", "cycle", "stage"], name="message_unique_identity"
            )
        ]
        indexes = [
            models.Index(fields=["status", "due_at"], name="message_status_due"),
            models.Index(fields=["subject", "status"], name="message_subject_status"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.stage} to {self.recipient_key} by {self.channel}"


class AttemptOutcome(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight (no outcome recorded)"
    WORKER_LOST = "worker_lost", "Worker lost mid-send (outcome unknown)"
    SENT = "sent", "Sent"
    TRANSIENT_FAILURE = "transient_failure", "Transient failure"
    PERMANENT_FAILURE = "permanent_failure", "Permanent failure"
    DEFERRED = "deferred", "Deferred (SMS cap)"
    SUPPRESSED = "suppressed", "Suppressed (contact unusable)"


class Attempt(models.Model):
    """One try at sending a message, committed before the network call, closed after it."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=AttemptOutcome.choices, default=AttemptOutcome.IN_FLIGHT)
    error = models.TextField(blank=True)
    provider_id = models.CharField(max_length=100, blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["started_at", "pk"]

    def __str__(self) -> str:
        return f"{self.get_outcome_display()} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class BlockReason(models.TextChoices):
    OPTED_OUT = "opted_out", "Opted out"
    INVALID = "invalid", "Invalid address or number"
    BOUNCED = "bounced", "Hard bounce"


class BlockMethod(models.TextChoices):
    SMS_KEYWORD = "sms_keyword", "SMS keyword"
    UNSUBSCRIBE_LINK = "unsubscribe_link", "Unsubscribe link"
    PROVIDER = "provider", "Provider report"
    STAFF = "staff", "Staff"


class ContactBlock(models.Model):
    """A channel address we must not use: an opt-out (with its time and method) or a dead contact.

    Lifting a block (START, or staff after a contact fix) keeps the row as history.
    """

    channel = models.CharField(max_length=10, choices=Channel.choices)
    address = models.CharField(max_length=254)
    reason = models.CharField(max_length=20, choices=BlockReason.choices)
    method = models.CharField(max_length=20, choices=BlockMethod.choices)
    keyword = models.CharField(max_length=30, blank=True, help_text="The SMS keyword received, e.g. STOP.")
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField()
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_method = models.CharField(max_length=20, choices=BlockMethod.choices, blank=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "address"], condition=models.Q(lifted_at=None), name="contactblock_one_active"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()}: {self.address} ({self.channel})"


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


# Severity as a number (critical highest), for "most severe first" in the admin and the API.
SEVERITY_RANK = models.Case(
    models.When(severity=Severity.CRITICAL, then=models.Value(2)),
    models.When(severity=Severity.WARNING, then=models.Value(1)),
    default=models.Value(0),
    output_field=models.IntegerField(),
)


class EscalationReason(models.TextChoices):
    OVERDUE = "overdue", "Refill overdue"
    ALARM_DATE_REACHED = "alarm_date_reached", "Low-reservoir alarm date reached"
    NO_USABLE_CONTACT = "no_usable_contact", "No usable contact for reminders"
    OPTED_OUT = "opted_out", "Patient or caregiver opted out"
    DELIVERY_FAILED = "delivery_failed", "Message could not be delivered"
    POST_MRI_CHECK_MISSING = "post_mri_check_missing", "No post-MRI pump check recorded"
    MRI_EMPTY_RESERVOIR = "mri_empty_reservoir", "MRI planned: reservoir must be emptied first"
    MRI_UNSAFE = "mri_unsafe", "MRI planned on an MR Unsafe pump"
    BATTERY_PLANNING = "battery_planning", "Plan pump replacement (battery)"
    REPLACEMENT_INDICATOR = "replacement_indicator", "Replacement indicator (ERI) recorded"
    APPOINTMENT_MISSED = "appointment_missed", "Refill appointment missed"


class EscalationStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


class Escalation(models.Model):
    """A staff task: something a person must act on because a message cannot do its job."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="escalations")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, null=True, blank=True, related_name="escalations")
    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, null=True, blank=True, related_name="escalations")
    reason = models.CharField(max_length=30, choices=EscalationReason.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    subject = models.CharField(max_length=40)
    cycle = models.CharField(max_length=60)
    detail = models.TextField(blank=True)
    status = models.CharField(max_length=15, choices=EscalationStatus.choices, default=EscalationStatus.OPEN)
    raised_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    resolution = models.CharField(max_length=300, blank=True)

    history = AuditedHistory()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subject", "reason", "cycle"], name="escalation_unique_identity"),
        ]
        indexes = [models.Index(fields=["clinic", "status"], name="escalation_clinic_status")]

    def __str__(self) -> str:
        return f"{self.get_severity_display()}: {self.get_reason_display()} ({self.subject})"


class Heartbeat(models.Model):
    """When a periodic sweep last finished; /healthz and the admin banner read it."""

    name = models.CharField(max_length=50, unique=True)
    interval_seconds = models.PositiveIntegerField()
    finished_at = models.DateTimeField()
    ok = models.BooleanField(default=True, help_text="False: the sweep finished, but some work failed.")
    detail = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.finished_at:%Y-%m-%d %H:%M:%S}"
