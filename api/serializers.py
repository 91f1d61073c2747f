"""Serializers: they shape and validate fields; every write goes through a service.

Field names follow DESIGN.md "API contract". Times are ISO 8601 with a UTC offset (a time
without one is refused: an integration and a clinic may be in different zones).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from rest_framework import serializers

from api.fields import AwareDateTimeField, LocalTimeField
from api.models import ApiToken
from api.viewsets import WritableRelatedField
from notifications.models import Escalation, Message
from patients.models import Caregiver, Clinic, Patient
from pumps import domain
from pumps.models import Appointment, ClinicalEvent, Program, ProgramMode, Pump, PumpModel, Refill, ScreeningTrial
from pumps.services import IMPLANT_FIELDS, PumpState

WARNING_CODES = [(r.value, r.value) for r in domain.Rule]


class ModelSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.DateTimeField: AwareDateTimeField,
        models.TimeField: LocalTimeField,
    }


class UserField(serializers.SlugRelatedField):  # type: ignore[type-arg]
    """Who recorded something, by username (read-only)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="username", read_only=True, allow_null=True, **kwargs)


# ----------------------------------------------------------------------------- clinics and patients


class ClinicSerializer(ModelSerializer):
    class Meta:
        model = Clinic
        exclude: list[str] = []
        read_only_fields = ["id", "name"]


class CaregiverSerializer(ModelSerializer):
    id = serializers.IntegerField(required=False, help_text="Give it to update that caregiver; leave it out to add one.")

    class Meta:
        model = Caregiver
        fields = ["id", "name", "relationship", "email", "phone", "language", "receives_safety_messages"]


class PatientSerializer(ModelSerializer):
    clinic = WritableRelatedField(clinic_lookup="", queryset=Clinic.objects.all())
    caregivers = CaregiverSerializer(
        many=True, required=False, help_text="On update, the complete list: caregivers left out are removed."
    )
    high_risk = serializers.BooleanField(read_only=True, help_text="Boxed-warning risk group (clinical.md §6.1).")
    spasticity_origin = serializers.ChoiceField(
        choices=Patient._meta.get_field("spasticity_origin").choices,
        required=False,
        help_text="Defaults from the diagnosis (MS, SCI: spinal; CP, brain injury, stroke: cerebral).",
    )

    class Meta:
        model = Patient
        fields = [
            "id",
            "clinic",
            "mrn",
            "given_name",
            "family_name",
            "birth_date",
            "diagnosis",
            "spasticity_origin",
            "sci_t6_or_above",
            "communication_difficulty",
            "withdrawal_history",
            "hearing_impairment",
            "high_risk",
            "screened_elsewhere",
            "email",
            "phone",
            "language",
            "time_zone",
            "contact_by_email",
            "contact_by_sms",
            "caregivers",
            "created_at",
        ]
        validators: list[Any] = []  # MRN uniqueness is checked by the service, naming the field


# ----------------------------------------------------------------------------- pumps


class PumpModelSerializer(ModelSerializer):
    class Meta:
        model = PumpModel
        fields = "__all__"


class PumpSerializer(ModelSerializer):
    """A pump as DESIGN.md's API contract names it, with its state now."""

    implanted_on = serializers.SerializerMethodField(help_text="The implant date in the clinic's time zone.")
    reservoir_capacity_ml = serializers.DecimalField(source="model.reservoir_ml", max_digits=7, decimal_places=2, read_only=True)
    current_dose_mcg_per_day = serializers.SerializerMethodField()
    current_concentration_mcg_per_ml = serializers.SerializerMethodField()
    current_mode = serializers.SerializerMethodField()
    expected_volume_ml = serializers.SerializerMethodField(
        help_text="Volume in the reservoir now by the refill arithmetic, rounded down (null before the first fill)."
    )
    last_refill_at = serializers.SerializerMethodField()

    class Meta:
        model = Pump
        fields = [
            "id",
            "patient",
            "model",
            "serial_number",
            "udi",
            "implanted_at",
            "implanted_on",
            "implanting_physician",
            "following_physician",
            "phase",
            "stable_dose_at",
            "status",
            "explanted_on",
            "explant_reason",
            "reservoir_capacity_ml",
            "low_reservoir_alarm_ml",
            "current_dose_mcg_per_day",
            "current_concentration_mcg_per_ml",
            "current_mode",
            "expected_volume_ml",
            "last_refill_at",
            "alarm_on",
            "refill_by",
            "estimated_end_of_service_on",
        ]
        read_only_fields = fields

    def _state(self, pump: Pump) -> PumpState:
        return self.context["states"][pump.pk]  # type: ignore[no-any-return]

    def get_implanted_on(self, pump: Pump) -> str:
        return domain.local_date(pump.implanted_at, pump.patient.clinic.tz).isoformat()

    def get_current_dose_mcg_per_day(self, pump: Pump) -> str | None:
        program = self._state(pump).program
        return str(program.dose_mcg_per_day) if program else None

    def get_current_concentration_mcg_per_ml(self, pump: Pump) -> str | None:
        program = self._state(pump).program
        return str(program.concentration_mcg_per_ml) if program else None

    def get_current_mode(self, pump: Pump) -> str | None:
        program = self._state(pump).program
        return program.mode if program else None

    def get_expected_volume_ml(self, pump: Pump) -> str | None:
        volume = self._state(pump).volume_ml
        return str(volume) if volume is not None else None

    def get_last_refill_at(self, pump: Pump) -> datetime | None:
        fill = self._state(pump).last_fill
        return fill.performed_at if fill else None


class PumpCreateSerializer(ModelSerializer):
    """An implant: the patient must be eligible (a positive screening trial, R1)."""

    patient = WritableRelatedField(clinic_lookup="clinic", queryset=Patient.objects.all())
    low_reservoir_alarm_ml = serializers.DecimalField(
        max_digits=7, decimal_places=2, required=False, help_text="As programmed; the model's default when left out."
    )

    class Meta:
        model = Pump
        fields = list(IMPLANT_FIELDS)
        validators: list[Any] = []  # serial uniqueness is checked by the service, naming the field


class PumpUpdateSerializer(ModelSerializer):
    """Device details staff may correct; everything else has its own action."""

    class Meta:
        model = Pump
        fields = ["udi", "implanting_physician", "following_physician", "low_reservoir_alarm_ml", "estimated_end_of_service_on"]


class PumpEndSerializer(serializers.Serializer):  # type: ignore[type-arg]
    status = serializers.ChoiceField(choices=[("explanted", "Explanted"), ("replaced", "Replaced")])
    explanted_on = serializers.DateField()
    explant_reason = serializers.CharField(max_length=200)


class PumpPhaseSerializer(serializers.Serializer):  # type: ignore[type-arg]
    phase = serializers.ChoiceField(choices=Pump._meta.get_field("phase").choices)


# ----------------------------------------------------------------------------- programs and refills


class WarningSerializer(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.ChoiceField(choices=WARNING_CODES)
    message = serializers.CharField()


class AcknowledgementMixin(serializers.Serializer):  # type: ignore[type-arg]
    acknowledged_warnings = serializers.ListField(
        child=serializers.ChoiceField(choices=WARNING_CODES),
        required=False,
        help_text="Codes of the warnings a refused request answered with, to record the change anyway.",
    )
    reason = serializers.CharField(required=False, allow_blank=True, help_text="Required with acknowledged_warnings.")


class ProgramSerializer(AcknowledgementMixin, ModelSerializer):
    pump = WritableRelatedField(clinic_lookup="patient__clinic", queryset=Pump.objects.all())
    dose_mcg_per_day = serializers.DecimalField(
        max_digits=9,
        decimal_places=3,
        required=False,
        help_text="Required for simple mode; computed for flex and periodic bolus.",
    )
    mode = serializers.ChoiceField(choices=ProgramMode.choices, default=ProgramMode.SIMPLE)
    flex_steps = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text='Flex mode: [{"starts": "HH:MM", "mcg_per_hour": "12.5"}, ...] covering 24 h.',
    )
    author = UserField()
    change_pct = serializers.DecimalField(max_digits=None, decimal_places=1, read_only=True, allow_null=True)

    class Meta:
        model = Program
        fields = [
            "id",
            "pump",
            "effective_at",
            "mode",
            "dose_mcg_per_day",
            "concentration_mcg_per_ml",
            "flex_steps",
            "basal_mcg_per_day",
            "bolus_mcg",
            "boluses_per_day",
            "previous_dose_mcg_per_day",
            "change_pct",
            "acknowledged_warnings",
            "reason",
            "author",
            "created_at",
        ]
        validators: list[Any] = []


class ProgramPreviewSerializer(serializers.Serializer):  # type: ignore[type-arg]
    dose_mcg_per_day = serializers.DecimalField(max_digits=9, decimal_places=3)
    previous_dose_mcg_per_day = serializers.DecimalField(max_digits=9, decimal_places=3, allow_null=True)
    change_pct = serializers.DecimalField(max_digits=None, decimal_places=1, allow_null=True)
    warnings = WarningSerializer(many=True)
    alarm_on = serializers.DateField(allow_null=True)
    refill_by = serializers.DateField(allow_null=True)


class RefillSerializer(AcknowledgementMixin, ModelSerializer):
    pump = WritableRelatedField(clinic_lookup="patient__clinic", queryset=Pump.objects.all())
    performed_by = UserField()

    class Meta:
        model = Refill
        fields = [
            "id",
            "pump",
            "performed_at",
            "withdrawn_ml",
            "volume_added_ml",
            "concentration_mcg_per_ml",
            "drug_product",
            "drug_lot",
            "expires_on",
            "method",
            "notes",
            "is_initial_fill",
            "expected_residual_ml",
            "discrepancy_ml",
            "discrepancy_band_ml",
            "discrepancy_flagged",
            "volume_after_fill_ml",
            "low_reservoir_alarm_ml",
            "alarm_on",
            "refill_by",
            "acknowledged_warnings",
            "reason",
            "performed_by",
            "created_at",
        ]
        validators: list[Any] = []


class RefillPreviewSerializer(serializers.Serializer):  # type: ignore[type-arg]
    is_initial_fill = serializers.BooleanField()
    expected_residual_ml = serializers.DecimalField(max_digits=7, decimal_places=2, allow_null=True)
    discrepancy_ml = serializers.DecimalField(max_digits=7, decimal_places=2, allow_null=True)
    discrepancy_flagged = serializers.BooleanField()
    volume_after_fill_ml = serializers.DecimalField(max_digits=7, decimal_places=2)
    warnings = WarningSerializer(many=True)
    alarm_on = serializers.DateField(allow_null=True)
    refill_by = serializers.DateField()


# ----------------------------------------------------------------------------- screening and events


class ScreeningSerializer(ModelSerializer):
    patient = WritableRelatedField(clinic_lookup="clinic", queryset=Patient.objects.all())
    performed_by = UserField()

    class Meta:
        model = ScreeningTrial
        fields = ["id", "patient", "given_at", "dose_mcg", "route", "outcome", "effect_duration_hours", "notes", "performed_by"]


class ScreeningUpdateSerializer(ModelSerializer):
    """The outcome is known hours after the bolus; the dose and time stay as given."""

    class Meta:
        model = ScreeningTrial
        fields = ["outcome", "effect_duration_hours", "notes"]


class EventSerializer(ModelSerializer):
    pump = WritableRelatedField(clinic_lookup="patient__clinic", queryset=Pump.objects.all())
    recorded_by = UserField()

    class Meta:
        model = ClinicalEvent
        fields = ["id", "pump", "kind", "occurred_at", "field_strength_tesla", "notes", "recorded_by", "created_at"]


# ----------------------------------------------------------------------------- messages and escalations


class MessageSerializer(ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "clinic",
            "patient",
            "pump",
            "caregiver",
            "recipient_kind",
            "channel",
            "address",
            "kind",
            "stage",
            "cycle",
            "language",
            "critical",
            "status",
            "status_reason",
            "due_at",
            "attempt_count",
            "next_attempt_at",
            "sent_at",
            "delivered_at",
            "rendered_subject",
            "rendered_body",
            "created_at",
        ]
        read_only_fields = fields


class EscalationSerializer(ModelSerializer):
    acknowledged_by = UserField()
    resolved_by = UserField()

    class Meta:
        model = Escalation
        fields = [
            "id",
            "clinic",
            "patient",
            "pump",
            "reason",
            "severity",
            "cycle",
            "detail",
            "status",
            "raised_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "resolution",
        ]
        read_only_fields = fields


class ResolveSerializer(serializers.Serializer):  # type: ignore[type-arg]
    resolution = serializers.CharField(max_length=300, help_text="What was done.")


# ----------------------------------------------------------------------------- tokens


class ApiTokenSerializer(ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    key = serializers.SerializerMethodField(help_text="Only in the answer that creates the token: it is not stored.")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "user", "prefix", "key", "read_only", "created_at", "expires_at", "last_used_at", "revoked_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]

    def get_key(self, token: ApiToken) -> str | None:
        return self.context.get("key")


# ----------------------------------------------------------------------------- appointments


class AppointmentSerializer(ModelSerializer):
    pump = WritableRelatedField(clinic_lookup="patient__clinic", queryset=Pump.objects.all())
    acknowledged_late = serializers.BooleanField(
        write_only=True, required=False, default=False, help_text="Book after the refill-by date (give a reason)."
    )
    booked_by = UserField()

    class Meta:
        model = Appointment
        fields = [
            "id",
            "pump",
            "starts_at",
            "location",
            "notes",
            "status",
            "after_refill_by",
            "acknowledged_late",
            "reason",
            "refill",
            "booked_by",
            "created_at",
            "closed_at",
            "cancellation_reason",
        ]
        read_only_fields = ["status", "refill", "closed_at", "cancellation_reason"]
        validators: list[Any] = []  # one booked visit per pump: the service names the field


class AppointmentChangeSerializer(ModelSerializer):
    """A new time reschedules the visit (the old booking is cancelled, history kept); a new
    place or note only updates it."""

    acknowledged_late = serializers.BooleanField(required=False, default=False)

    class Meta:
        model = Appointment
        fields = ["starts_at", "location", "notes", "acknowledged_late", "reason"]


class CancelSerializer(serializers.Serializer):  # type: ignore[type-arg]
    cancellation_reason = serializers.CharField(max_length=200, required=False, allow_blank=True)
