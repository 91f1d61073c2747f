"""Clinics, staff memberships and roles, patients, caregivers and their contact details."""

from __future__ import annotations

import zoneinfo
from datetime import date, time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from phonenumber_field.modelfields import PhoneNumberField

from patients.history import AuditedHistory
from pumps.domain import STABILITY_CEILING_DAYS, Origin, age_in_years


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/London).")


def parse_day_list(value: str) -> list[int]:
    """'14,7,2,0' -> [14, 7, 2, 0]; raises ValueError on anything else."""
    days = [int(part) for part in value.replace(" ", "").split(",") if part != ""]
    if not days or any(d < 0 or d > 90 for d in days):
        raise ValueError(value)
    return sorted(set(days), reverse=True)


def validate_day_list(value: str) -> None:
    try:
        parse_day_list(value)
    except ValueError:
        raise ValidationError("Enter whole days between 0 and 90, separated by commas (e.g. 14,7,2,0).") from None


class Language(models.TextChoices):
    ENGLISH = "en", "English"
    SPANISH = "es", "Español"


class Clinic(models.Model):
    """An ITB programme and the policy it owns (defaults from clinical.md)."""

    name = models.CharField(max_length=200, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    phone = PhoneNumberField(blank=True, help_text="Shown to patients in reminders and warnings.")
    email = models.EmailField(blank=True)
    # Refill 3-5 days before the alarm date [S33] (clinical.md §5.1 #60).
    refill_margin_days = models.PositiveSmallIntegerField(
        default=3, validators=[MaxValueValidator(30)], help_text="Days before the low-reservoir alarm date."
    )
    # Programming "each month" during titration, "every two to three months" once stable
    # [SEED-2] (clinical.md §4 #56); the 180-day stability ceiling bounds both (§2.1).
    titration_interval_days = models.PositiveSmallIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(STABILITY_CEILING_DAYS)]
    )
    maintenance_interval_days = models.PositiveSmallIntegerField(
        default=90, validators=[MinValueValidator(1), MaxValueValidator(STABILITY_CEILING_DAYS)]
    )

    # ---- messages (issue 3; DESIGN.md "Messages"). Clinic-owned policy with defaults.
    notification_email = models.EmailField(
        blank=True, help_text="Where staff escalations are emailed. Blank: the clinic's email address."
    )
    # Reminders 14, 7, 2 days before refill-by and on the day (DESIGN.md; clinical.md R7
    # suggests 14, 7, 3 and the day: the exact stages are the clinic's choice).
    reminder_days = models.CharField(
        max_length=60,
        default="14,7,2,0",
        validators=[validate_day_list],
        help_text="Days before the refill-by date on which patients are reminded, comma-separated (0 = on the day).",
    )
    # R12: high-risk patients (boxed-warning groups, §6.1 #75) get an earlier reminder
    # and their caregivers are told too. The lead time is UNCONFIRMED: a setting.
    high_risk_extra_reminder_days = models.PositiveSmallIntegerField(
        default=21, validators=[MaxValueValidator(90)], help_text="An extra, earlier reminder for high-risk patients (0: none)."
    )
    reminder_time = models.TimeField(default=time(10, 0), help_text="Recipient-local time at which reminders go out.")
    quiet_hours_start = models.TimeField(default=time(20, 0), help_text="Non-critical patient messages wait until the end.")
    quiet_hours_end = models.TimeField(default=time(9, 0))
    escalation_time = models.TimeField(
        default=time(9, 0), help_text="Clinic-local time of the overdue escalation on the first morning after refill-by."
    )
    heat_season_month = models.PositiveSmallIntegerField(
        default=6, validators=[MinValueValidator(1), MaxValueValidator(12)], help_text="Start of the heat season (month)."
    )
    heat_season_day = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(28)])
    alcohol_reminder_months = models.PositiveSmallIntegerField(
        default=6, validators=[MinValueValidator(1), MaxValueValidator(24)], help_text="Alcohol warning repeats this often."
    )
    # R9: plan replacement about six months before the expected shutdown (§1.1 #6).
    battery_planning_months = models.PositiveSmallIntegerField(default=6, validators=[MaxValueValidator(24)])
    # §7.4 #92: every MRI needs a post-MRI interrogation; the 24 h window is the issue's.
    post_mri_check_hours = models.PositiveSmallIntegerField(default=24, validators=[MinValueValidator(1), MaxValueValidator(168)])

    history = AuditedHistory()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(titration_interval_days__gte=1, titration_interval_days__lte=STABILITY_CEILING_DAYS),
                name="clinic_titration_interval_range",
            ),
            models.CheckConstraint(
                condition=models.Q(maintenance_interval_days__gte=1, maintenance_interval_days__lte=STABILITY_CEILING_DAYS),
                name="clinic_maintenance_interval_range",
            ),
            models.CheckConstraint(condition=models.Q(refill_margin_days__lte=30), name="clinic_margin_range"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    @property
    def escalation_address(self) -> str:
        return self.notification_email or self.email


class Role(models.TextChoices):
    CLINICIAN = "clinician", "Clinician"
    NURSE = "nurse", "Nurse"
    COORDINATOR = "coordinator", "Coordinator"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    """A staff member's role in one clinic; a user may belong to several clinics."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)

    history = AuditedHistory()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "clinic"], name="membership_unique_user_clinic")]

    def __str__(self) -> str:
        return f"{self.user} · {self.get_role_display()} at {self.clinic}"


class Diagnosis(models.TextChoices):
    MULTIPLE_SCLEROSIS = "ms", "Multiple sclerosis"
    SPINAL_CORD_INJURY = "sci", "Spinal cord injury"
    CEREBRAL_PALSY = "cp", "Cerebral palsy"
    BRAIN_INJURY = "tbi", "Brain injury"
    STROKE = "stroke", "Stroke"
    OTHER = "other", "Other"


class SpasticityOrigin(models.TextChoices):
    SPINAL = Origin.SPINAL.value, "Spinal"
    CEREBRAL = Origin.CEREBRAL.value, "Cerebral"


# Spinal-cord origin: MS, SCI; cerebral origin: CP, brain injury, stroke (clinical.md §4 #49).
ORIGIN_BY_DIAGNOSIS = {
    Diagnosis.MULTIPLE_SCLEROSIS: SpasticityOrigin.SPINAL,
    Diagnosis.SPINAL_CORD_INJURY: SpasticityOrigin.SPINAL,
    Diagnosis.CEREBRAL_PALSY: SpasticityOrigin.CEREBRAL,
    Diagnosis.BRAIN_INJURY: SpasticityOrigin.CEREBRAL,
    Diagnosis.STROKE: SpasticityOrigin.CEREBRAL,
}


class Patient(models.Model):
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="patients")
    mrn = models.CharField("MRN", max_length=64, help_text="Medical record number, unique within the clinic.")
    given_name = models.CharField(max_length=100)
    family_name = models.CharField(max_length=100)
    birth_date = models.DateField()
    diagnosis = models.CharField(max_length=10, choices=Diagnosis.choices)
    spasticity_origin = models.CharField(
        max_length=10,
        choices=SpasticityOrigin.choices,
        help_text="Decides the dose-change limits (clinical.md §4 #49-50).",
    )
    # Boxed-warning risk groups (clinical.md §6.1 #75, §9 #109), plus hearing impairment:
    # the pump alarm may not be heard [S74].
    sci_t6_or_above = models.BooleanField("spinal cord injury at T-6 or above", default=False)
    communication_difficulty = models.BooleanField(default=False)
    withdrawal_history = models.BooleanField("history of withdrawal symptoms", default=False)
    hearing_impairment = models.BooleanField(default=False)
    screened_elsewhere = models.BooleanField(
        default=False,
        help_text="A positive screening trial is documented outside pumptrack (e.g. implanted before the clinic used it).",
    )

    email = models.EmailField(blank=True)
    phone = PhoneNumberField(blank=True, help_text="International format, e.g. +442071234567.")
    language = models.CharField(max_length=5, choices=Language.choices, default=Language.ENGLISH)
    time_zone = models.CharField(max_length=64, blank=True, validators=[validate_time_zone], help_text="Blank: the clinic's.")
    contact_by_email = models.BooleanField(default=True)
    contact_by_sms = models.BooleanField(default=True)

    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["family_name", "given_name"]
        constraints = [models.UniqueConstraint(fields=["clinic", "mrn"], name="patient_unique_mrn_per_clinic")]

    def __str__(self) -> str:
        return f"{self.family_name}, {self.given_name} ({self.mrn})"

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def effective_time_zone(self) -> str:
        return self.time_zone or self.clinic.time_zone

    @property
    def high_risk(self) -> bool:
        """Boxed-warning risk group (clinical.md §6.1 #75, R12)."""
        return self.sci_t6_or_above or self.communication_difficulty or self.withdrawal_history

    def age_on(self, on: date) -> int:
        return age_in_years(self.birth_date, on)

    def clean(self) -> None:
        if self.birth_date and self.birth_date > timezone.localdate():
            raise ValidationError({"birth_date": "Birth date cannot be in the future."})


class Caregiver(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="caregivers")
    name = models.CharField(max_length=200)
    relationship = models.CharField(max_length=100, blank=True)
    email = models.EmailField(blank=True)
    phone = PhoneNumberField(blank=True)
    language = models.CharField(max_length=5, choices=Language.choices, default=Language.ENGLISH)
    receives_safety_messages = models.BooleanField(
        default=True, help_text="Also receives safety-critical messages (withdrawal, overdue refill)."
    )

    history = AuditedHistory()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.relationship or 'caregiver'})"
