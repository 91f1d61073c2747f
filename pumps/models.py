"""Pump catalogue, implanted pumps and catheters, screening trials, programming, refills
and clinical events. The arithmetic lives in `pumps/domain.py`; workflows in `services.py`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from patients.history import AuditedHistory
from patients.models import Patient
from pumps import domain


def volume_field(verbose_name: str | None = None, **options: Any) -> models.DecimalField:  # type: ignore[type-arg]
    """mL to 0.01 (the resolution refill records use)."""
    return models.DecimalField(verbose_name, max_digits=7, decimal_places=2, **options)


def dose_field(verbose_name: str | None = None, **options: Any) -> models.DecimalField:  # type: ignore[type-arg]
    """mcg/day to 0.001 (flex schedules sum fractional hourly rates)."""
    return models.DecimalField(verbose_name, max_digits=9, decimal_places=3, **options)


def concentration_field(verbose_name: str | None = None, **options: Any) -> models.DecimalField:  # type: ignore[type-arg]
    """mcg/mL to 0.01."""
    return models.DecimalField(verbose_name, max_digits=8, decimal_places=2, **options)


class MriRule(models.TextChoices):
    """What an MRI demands of the pump model (clinical.md §7.4, R10)."""

    CHECK_AFTER = "check_after", "Pump check after the scan (infusion stops during MRI)"
    EMPTY_BEFORE = "empty_before", "Empty the reservoir before the scan"
    UNSAFE = "unsafe", "MR Unsafe"
    UNAFFECTED = "unaffected", "No pump-specific action"


class PumpModel(models.Model):
    """A pump in the catalogue. Values marked UNCONFIRMED in clinical.md are editable here."""

    manufacturer = models.CharField(max_length=100)
    name = models.CharField(max_length=100)
    model_number = models.CharField(max_length=50, unique=True)
    reservoir_ml = volume_field("reservoir capacity (mL)", validators=[MinValueValidator(Decimal("1"))])
    default_low_reservoir_alarm_ml = volume_field("default low-reservoir alarm (mL)")
    accuracy_pct = models.DecimalField("accuracy band (%)", max_digits=5, decimal_places=2)
    min_concentration_mcg_per_ml = concentration_field()
    max_concentration_mcg_per_ml = concentration_field()
    expected_battery_months = models.PositiveSmallIntegerField(null=True, blank=True)
    mri_rule = models.CharField(max_length=20, choices=MriRule.choices)
    mri_max_tesla = models.DecimalField("MRI field strength limit (T)", max_digits=3, decimal_places=1, null=True, blank=True)
    source = models.TextField(blank=True, help_text="Where these values come from (clinical.md sections).")

    class Meta:
        ordering = ["manufacturer", "name", "model_number"]
        constraints = [
            models.CheckConstraint(
                condition=Q(default_low_reservoir_alarm_ml__lt=models.F("reservoir_ml")), name="pumpmodel_alarm_below_capacity"
            ),
            models.CheckConstraint(
                condition=Q(
                    min_concentration_mcg_per_ml__gt=0, max_concentration_mcg_per_ml__gte=models.F("min_concentration_mcg_per_ml")
                ),
                name="pumpmodel_concentration_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.model_number} ({self.reservoir_ml.normalize():f} mL)"

    @property
    def concentration_range(self) -> tuple[Decimal, Decimal]:
        return (self.min_concentration_mcg_per_ml, self.max_concentration_mcg_per_ml)


class PumpStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPLANTED = "explanted", "Explanted"
    REPLACED = "replaced", "Replaced"


class Phase(models.TextChoices):
    TITRATION = domain.Phase.TITRATION.value, "Titration"
    MAINTENANCE = domain.Phase.MAINTENANCE.value, "Maintenance"


class Pump(models.Model):
    """An implanted pump. `alarm_on` and `refill_by` are stored by the services after every
    refill, programming change or policy change, so that lists can filter on them."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="pumps")
    model = models.ForeignKey(PumpModel, on_delete=models.PROTECT, related_name="pumps")
    serial_number = models.CharField(max_length=64)
    udi = models.CharField("UDI", max_length=255, blank=True, help_text="Device identifier and production identifiers [S72].")
    implanted_at = models.DateTimeField()
    implanting_physician = models.CharField(max_length=200, blank=True)
    following_physician = models.CharField(max_length=200, blank=True)
    low_reservoir_alarm_ml = volume_field(
        "low-reservoir alarm (mL)", help_text="As programmed in the pump; the model's default when not given."
    )
    status = models.CharField(max_length=20, choices=PumpStatus.choices, default=PumpStatus.ACTIVE)
    explanted_on = models.DateField(null=True, blank=True)
    explant_reason = models.CharField(max_length=200, blank=True)
    phase = models.CharField(max_length=20, choices=Phase.choices, default=Phase.TITRATION)
    stable_dose_at = models.DateTimeField(null=True, blank=True, help_text="When a clinician recorded the stable dose.")
    # Store the interrogated ERI/EOS date rather than a fixed battery life (clinical.md §10 C1).
    estimated_end_of_service_on = models.DateField(null=True, blank=True)

    alarm_on = models.DateField("low-reservoir alarm date", null=True, blank=True, editable=False)
    refill_by = models.DateField("refill by", null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory(excluded_fields=["alarm_on", "refill_by"])

    class Meta:
        ordering = ["refill_by", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["model", "serial_number"], name="pump_unique_serial_per_model"),
            models.UniqueConstraint(fields=["patient"], condition=Q(status="active"), name="pump_one_active_per_patient"),
            models.CheckConstraint(condition=Q(low_reservoir_alarm_ml__gte=0), name="pump_alarm_volume_non_negative"),
        ]
        indexes = [models.Index(fields=["status", "refill_by"]), models.Index(fields=["status", "alarm_on"])]

    def __str__(self) -> str:
        return f"{self.model.name} {self.model.model_number} #{self.serial_number}"

    @property
    def is_active(self) -> bool:
        return self.status == PumpStatus.ACTIVE


class Catheter(models.Model):
    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, related_name="catheters")
    model = models.CharField(max_length=100, blank=True)
    lot = models.CharField(max_length=100, blank=True)
    tip_level = models.CharField(max_length=10, blank=True, help_text="Vertebral level of the tip, e.g. T10 [S70].")
    implanted_length_cm = models.DecimalField(max_digits=5, decimal_places=1, null=True, blank=True)
    implanted_on = models.DateField(null=True, blank=True)

    history = AuditedHistory()

    def __str__(self) -> str:
        return f"Catheter {self.model or ''} tip {self.tip_level or '?'}".strip()

    def clean(self) -> None:
        if self.implanted_on is None or self.pump_id is None:
            return
        if self.implanted_on > timezone.localdate(timezone.now(), self.pump.patient.clinic.tz):
            raise ValidationError({"implanted_on": "Cannot be in the future."})
        if self.implanted_on < timezone.localdate(self.pump.implanted_at, self.pump.patient.clinic.tz):
            raise ValidationError({"implanted_on": "Cannot be before the pump's implant."})


class RevisionReason(models.TextChoices):
    KINK = "kink", "Kink"
    DISCONNECTION = "disconnection", "Disconnection"
    MIGRATION = "migration", "Migration"
    OCCLUSION = "occlusion", "Occlusion"
    GRANULOMA = "granuloma", "Granuloma / catheter-tip mass"
    INFECTION = "infection", "Infection"
    OTHER = "other", "Other"


class CatheterRevision(models.Model):
    catheter = models.ForeignKey(Catheter, on_delete=models.CASCADE, related_name="revisions")
    revised_on = models.DateField()
    reason = models.CharField(max_length=20, choices=RevisionReason.choices)
    notes = models.TextField(blank=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-revised_on"]

    def clean(self) -> None:
        if self.revised_on is None or self.catheter_id is None:
            return
        if self.revised_on > timezone.localdate(timezone.now(), self.catheter.pump.patient.clinic.tz):
            raise ValidationError({"revised_on": "Cannot be in the future."})
        if self.catheter.implanted_on and self.revised_on < self.catheter.implanted_on:
            raise ValidationError({"revised_on": "Cannot be before the catheter was implanted."})


class ScreeningRoute(models.TextChoices):
    LUMBAR_PUNCTURE = "lp", "Lumbar puncture"
    CATHETER = "catheter", "Intrathecal catheter"


class ScreeningOutcome(models.TextChoices):
    PENDING = "pending", "Pending"
    POSITIVE = "positive", "Positive"
    NEGATIVE = "negative", "Negative"


class ScreeningTrial(models.Model):
    """A screening (test) bolus (clinical.md §3, R1). Implant needs a positive one."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="screening_trials")
    given_at = models.DateTimeField()
    dose_mcg = models.PositiveSmallIntegerField("dose (mcg)", choices=[(int(d), f"{d} mcg") for d in domain.SCREENING_DOSES_MCG])
    route = models.CharField(max_length=20, choices=ScreeningRoute.choices, default=ScreeningRoute.LUMBAR_PUNCTURE)
    outcome = models.CharField(max_length=20, choices=ScreeningOutcome.choices, default=ScreeningOutcome.PENDING)
    effect_duration_hours = models.DecimalField(
        max_digits=4, decimal_places=1, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))]
    )
    notes = models.TextField(blank=True)
    performed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    history = AuditedHistory()

    class Meta:
        ordering = ["given_at"]

    def __str__(self) -> str:
        return f"{self.dose_mcg} mcg on {self.given_at:%Y-%m-%d}: {self.get_outcome_display()}"


class ProgramMode(models.TextChoices):
    SIMPLE = "simple", "Simple continuous"
    FLEX = "flex", "Flex (steps)"
    PERIODIC_BOLUS = "periodic_bolus", "Periodic bolus"


class Program(models.Model):
    """A programming of the pump, in force from `effective_at` until the next one."""

    pump = models.ForeignKey(Pump, on_delete=models.PROTECT, related_name="programs")
    effective_at = models.DateTimeField()
    mode = models.CharField(max_length=20, choices=ProgramMode.choices, default=ProgramMode.SIMPLE)
    dose_mcg_per_day = dose_field("dose (mcg/day)", help_text="For flex: computed from the steps.")
    concentration_mcg_per_ml = concentration_field("concentration (mcg/mL)")
    # Flex: [{"starts": "HH:MM", "mcg_per_hour": "12.5"}, ...]; periodic bolus: a basal dose
    # plus `boluses_per_day` boluses of `bolus_mcg` (their total is in dose_mcg_per_day).
    flex_steps = models.JSONField(default=list, blank=True)
    basal_mcg_per_day = dose_field(null=True, blank=True)
    bolus_mcg = dose_field(null=True, blank=True)
    boluses_per_day = models.PositiveSmallIntegerField(null=True, blank=True)

    previous_dose_mcg_per_day = dose_field(null=True, blank=True, editable=False)
    acknowledged_warnings = models.JSONField(default=list, blank=True, editable=False)
    reason = models.TextField(blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-effective_at"]
        constraints = [
            models.UniqueConstraint(fields=["pump", "effective_at"], name="program_unique_time_per_pump"),
            models.CheckConstraint(condition=Q(concentration_mcg_per_ml__gt=0), name="program_concentration_positive"),
            models.CheckConstraint(condition=Q(dose_mcg_per_day__gte=0), name="program_dose_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.dose_mcg_per_day.normalize():f} mcg/day at {self.concentration_mcg_per_ml.normalize():f} mcg/mL"

    @property
    def rate_ml_per_day(self) -> Decimal:
        return domain.rate_ml_per_day(self.dose_mcg_per_day, self.concentration_mcg_per_ml)

    @property
    def change_pct(self) -> Decimal | None:
        if not self.previous_dose_mcg_per_day:
            return None
        return domain.percent_change(self.previous_dose_mcg_per_day, self.dose_mcg_per_day)


class DrugProduct(models.TextChoices):
    LIORESAL = "lioresal", "Lioresal Intrathecal"
    GABLOFEN = "gablofen", "Gablofen"
    GENERIC = "generic", "Generic baclofen injection"
    COMPOUNDED = "compounded", "Compounded / diluted"


class RefillMethod(models.TextChoices):
    PALPATION = "palpation", "Palpation"
    TEMPLATE = "template", "Template"
    ULTRASOUND = "ultrasound", "Ultrasound guided"


class Refill(models.Model):
    """A refill (or the initial fill at implant). The residual is withdrawn completely
    before the new drug goes in [S80], so the volume after the fill is the volume added."""

    pump = models.ForeignKey(Pump, on_delete=models.PROTECT, related_name="refills")
    performed_at = models.DateTimeField()
    withdrawn_ml = volume_field("volume withdrawn (mL)")
    volume_added_ml = volume_field("volume added (mL)")
    concentration_mcg_per_ml = concentration_field("concentration (mcg/mL)")
    drug_product = models.CharField(max_length=20, choices=DrugProduct.choices, default=DrugProduct.LIORESAL)
    drug_lot = models.CharField(max_length=64, blank=True)
    expires_on = models.DateField(null=True, blank=True)
    method = models.CharField(max_length=20, choices=RefillMethod.choices, blank=True)
    notes = models.TextField("observation notes", blank=True)
    performed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")

    # Computed by services.record_refill and stored with the record.
    is_initial_fill = models.BooleanField(default=False, editable=False)
    expected_residual_ml = volume_field(null=True, editable=False)
    discrepancy_ml = volume_field(null=True, editable=False)
    discrepancy_band_ml = volume_field(null=True, editable=False)
    discrepancy_flagged = models.BooleanField(default=False, editable=False)
    volume_after_fill_ml = volume_field(editable=False)
    low_reservoir_alarm_ml = volume_field(editable=False)
    alarm_on = models.DateField(null=True, editable=False)
    refill_by = models.DateField(editable=False)
    acknowledged_warnings = models.JSONField(default=list, blank=True, editable=False)
    reason = models.TextField("reason for acknowledging", blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-performed_at"]
        constraints = [
            models.UniqueConstraint(fields=["pump", "performed_at"], name="refill_unique_time_per_pump"),
            models.CheckConstraint(
                condition=Q(withdrawn_ml__gte=0, volume_added_ml__gt=0, concentration_mcg_per_ml__gt=0),
                name="refill_volumes_valid",
            ),
        ]
        indexes = [models.Index(fields=["pump", "-performed_at"])]

    def __str__(self) -> str:
        return f"Refill {self.performed_at:%Y-%m-%d %H:%M} of {self.pump}"


class EventKind(models.TextChoices):
    LOW_RESERVOIR_ALARM = "low_reservoir_alarm", "Low-reservoir alarm"
    CRITICAL_ALARM = "critical_alarm", "Critical alarm"
    REPLACEMENT_INDICATOR = "replacement_indicator", "Elective replacement indicator (ERI)"
    MRI_PLANNED = "mri_planned", "MRI planned"
    MRI_DONE = "mri_done", "MRI done"
    POST_MRI_CHECK = "post_mri_check", "Post-MRI pump check"
    INFECTION = "infection", "Infection"
    WITHDRAWAL_SYMPTOMS = "withdrawal_symptoms", "Withdrawal symptoms"
    OVERDOSE_SYMPTOMS = "overdose_symptoms", "Overdose symptoms"
    CATHETER_REVISION = "catheter_revision", "Catheter revision"
    PUMP_REPLACEMENT = "pump_replacement", "Pump replacement"


class ClinicalEvent(models.Model):
    """Alarms, MRIs, infections, withdrawal or overdose episodes, revisions (clinical.md §9)."""

    pump = models.ForeignKey(Pump, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=30, choices=EventKind.choices)
    occurred_at = models.DateTimeField(help_text="For a planned MRI: when the scan is scheduled.")
    field_strength_tesla = models.DecimalField(
        "MRI field strength (T)",
        max_digits=3,
        decimal_places=1,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.1")), MaxValueValidator(Decimal("12"))],
    )
    notes = models.TextField(blank=True)
    recorded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    history = AuditedHistory()

    class Meta:
        ordering = ["-occurred_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.occurred_at:%Y-%m-%d}"


class AppointmentStatus(models.TextChoices):
    BOOKED = "booked", "Booked"
    DONE = "done", "Done (refill recorded)"
    MISSED = "missed", "Missed"
    CANCELLED = "cancelled", "Cancelled"


class Appointment(models.Model):
    """A booked refill visit (issue 5). A booked appointment takes the pump off the
    "due without an appointment" worklist group; reminders name its date and time."""

    pump = models.ForeignKey(Pump, on_delete=models.CASCADE, related_name="appointments")
    starts_at = models.DateTimeField(help_text="When the visit starts (typed on the clinic's wall clock).")
    location = models.CharField(max_length=200, blank=True, help_text="Where, e.g. 'Neuro day unit, room 3' or 'home visit'.")
    notes = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=AppointmentStatus.choices, default=AppointmentStatus.BOOKED)
    # Booking after the refill-by date is refused unless acknowledged with a reason.
    after_refill_by = models.BooleanField(default=False, editable=False)
    reason = models.TextField("reason for booking after the refill-by date", blank=True)
    refill = models.ForeignKey(Refill, on_delete=models.SET_NULL, null=True, blank=True, editable=False, related_name="+")
    booked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, editable=False, related_name="+"
    )
    created_at = models.DateTimeField(editable=False)
    updated_at = models.DateTimeField(editable=False)
    # When it stopped being booked (done, missed or cancelled), and why a person cancelled it.
    closed_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancellation_reason = models.CharField(max_length=200, blank=True, editable=False)

    history = AuditedHistory()

    class Meta:
        ordering = ["starts_at", "pk"]
        constraints = [
            # One booked visit per pump at a time: the next refill.
            models.UniqueConstraint(fields=["pump"], condition=Q(status="booked"), name="appointment_one_booked_per_pump"),
        ]
        indexes = [models.Index(fields=["status", "starts_at"])]

    def __str__(self) -> str:
        return f"Refill visit {self.starts_at:%Y-%m-%d %H:%M} for {self.pump}"
