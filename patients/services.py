"""Patient workflows shared by the admin and the API: saving a patient with its caregivers
and telling the scheduler what the change affects."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from patients.access import CLINIC_MESSAGE_POLICY_FIELDS
from patients.models import ORIGIN_BY_DIAGNOSIS, Caregiver, Clinic, Diagnosis, Patient
from pumps import services as pump_services
from pumps.models import Pump

# Facts the dose rules and the implant rule depend on: only a clinician changes them.
CLINICAL_FIELDS = ("screened_elsewhere", "spasticity_origin", "birth_date", "diagnosis")

# What the patient's messages depend on: who is reached, how, in which language and zone,
# and the risk flags that add an earlier reminder and tell caregivers (R12).
MESSAGE_FIELDS = frozenset(
    {
        "email",
        "phone",
        "language",
        "time_zone",
        "contact_by_email",
        "contact_by_sms",
        "given_name",
        "sci_t6_or_above",
        "communication_difficulty",
        "withdrawal_history",
    }
)
CAREGIVER_FIELDS = ("name", "relationship", "email", "phone", "language", "receives_safety_messages")


def after_patient_change(patient: Patient, changed: Iterable[str], *, caregivers_changed: bool = False) -> None:
    """Re-store pump dates when the clinic (its policy and zone) or age changed, and re-plan
    messages at once (after commit) when contacts changed: a removed address is not used again."""
    changed = set(changed)
    if {"clinic", "birth_date"} & changed:
        pump_services.recompute_patient(patient)
    if MESSAGE_FIELDS & changed or caregivers_changed:
        pump_services.announce_change(list(patient.pumps.values_list("pk", flat=True)))


def _check_mrn(patient: Patient) -> None:
    if Patient.objects.filter(clinic=patient.clinic_id, mrn=patient.mrn).exclude(pk=patient.pk).exists():
        raise ValidationError({"mrn": ["A patient with this MRN is already recorded in this clinic."]})


def _replace_caregivers(patient: Patient, rows: Sequence[dict[str, Any]]) -> bool:
    """Make the patient's caregivers exactly `rows` (an `id` updates that caregiver)."""
    existing = {c.pk: c for c in patient.caregivers.all()}
    errors: dict[str, list[str]] = {}
    keep: set[int] = set()
    changed = False
    for i, row in enumerate(rows):
        pk = row.get("id")
        if pk is not None and pk not in existing:
            errors.setdefault("caregivers", []).append(f"Item {i + 1}: caregiver {pk} is not this patient's.")
            continue
        caregiver = existing[pk] if pk is not None else Caregiver(patient=patient)
        before = {f: getattr(caregiver, f) for f in CAREGIVER_FIELDS}
        for name in CAREGIVER_FIELDS:
            if name in row:
                setattr(caregiver, name, row[name])
        try:
            caregiver.full_clean()
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault("caregivers", []).extend(f"Item {i + 1}, {name}: {m}" for m in messages)
            continue
        if pk is None or before != {f: getattr(caregiver, f) for f in CAREGIVER_FIELDS}:
            caregiver.save()
            changed = True
        keep.add(caregiver.pk)
    if errors:
        raise ValidationError(errors)
    removed = set(existing) - keep
    if removed:
        Caregiver.objects.filter(pk__in=removed).delete()
        changed = True
    return changed


def create_patient(fields: dict[str, Any], *, caregivers: Sequence[dict[str, Any]] = ()) -> Patient:
    patient = Patient(**fields)
    origin = ORIGIN_BY_DIAGNOSIS.get(Diagnosis(patient.diagnosis)) if patient.diagnosis in Diagnosis.values else None
    if not patient.spasticity_origin and origin is not None:
        patient.spasticity_origin = origin
    patient.full_clean(validate_unique=False, validate_constraints=False)
    _check_mrn(patient)
    try:
        with transaction.atomic():
            patient.save()
            _replace_caregivers(patient, caregivers)
    except IntegrityError:  # a concurrent create with the same MRN
        raise ValidationError({"mrn": ["A patient with this MRN is already recorded in this clinic."]}) from None
    return patient


def update_patient(patient: Patient, changes: dict[str, Any], *, caregivers: Sequence[dict[str, Any]] | None = None) -> Patient:
    """Change the given fields (and replace the caregivers, when given) in one transaction."""
    try:
        with transaction.atomic():
            locked = Patient.objects.select_for_update().select_related("clinic").get(pk=patient.pk)
            changed = {name for name, value in changes.items() if getattr(locked, name) != value}
            for name, value in changes.items():
                setattr(locked, name, value)
            locked.full_clean(validate_unique=False, validate_constraints=False)
            _check_mrn(locked)
            locked.save()
            caregivers_changed = _replace_caregivers(locked, caregivers) if caregivers is not None else False
            after_patient_change(locked, changed, caregivers_changed=caregivers_changed)
    except IntegrityError:
        raise ValidationError({"mrn": ["A patient with this MRN is already recorded in this clinic."]}) from None
    return locked


# ----------------------------------------------------------------------------- clinics

# What the stored refill-by dates depend on (DESIGN "Refill arithmetic").
SCHEDULE_POLICY_FIELDS = frozenset({"refill_margin_days", "titration_interval_days", "maintenance_interval_days", "time_zone"})
# What a message's moment or text depends on (time_zone re-plans through recompute_clinic).
MESSAGE_POLICY_FIELDS = CLINIC_MESSAGE_POLICY_FIELDS | {"name", "phone"}


def after_clinic_change(clinic: Clinic, changed: Iterable[str]) -> tuple[int, int]:
    """Re-store pump dates after a refill-policy change and re-plan messages (after commit)
    after a message-policy change. Returns (pumps recomputed, pumps re-planned)."""
    changed = set(changed)
    recomputed = pump_services.recompute_clinic(clinic) if SCHEDULE_POLICY_FIELDS & changed else 0
    replanned: list[int] = []
    if MESSAGE_POLICY_FIELDS & changed:
        # Pending messages only; sent ones stay as sent.
        replanned = list(Pump.objects.filter(patient__clinic=clinic).values_list("pk", flat=True))
        pump_services.announce_change(replanned)
    return recomputed, len(replanned)


def update_clinic(clinic: Clinic, changes: dict[str, Any]) -> Clinic:
    with transaction.atomic():
        locked = Clinic.objects.select_for_update().get(pk=clinic.pk)
        changed = {name for name, value in changes.items() if getattr(locked, name) != value}
        for name, value in changes.items():
            setattr(locked, name, value)
        locked.full_clean()
        locked.save()
    # Outside the lock: recompute_clinic takes each pump's lock in its own transaction.
    after_clinic_change(locked, changed)
    return locked
