"""Factories and builders shared by the suite (STYLE.md §11: set only what matters).

The factories make the records a clinic types in (clinics, staff, patients, caregivers).
Pumps are never made by a factory: the builders below record them through
`pumps.services`, as staff would, so that every stored date was computed by the real code.
Pump models come from the catalogue the data migration seeds (`pump_model("8637-40")`).

Every moment is explicit and fixed (no wall clock): the default implant is the worked
example of the refill arithmetic, 2027-01-04.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import factory
from django.conf import settings

from patients.models import Caregiver, Clinic, Diagnosis, Membership, Patient, Role, SpasticityOrigin
from pumps import services
from pumps.models import Phase, Pump, PumpModel, Refill, ScreeningOutcome, ScreeningTrial

IMPLANTED_AT = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
SCREENED_AT = IMPLANTED_AT - timedelta(days=14)

_serials = itertools.count(1)


class ClinicFactory(factory.django.DjangoModelFactory[Clinic]):
    class Meta:
        model = Clinic

    name = factory.Sequence(lambda n: f"Clinic {n}")


class UserFactory(factory.django.DjangoModelFactory[Any]):
    """A staff user. No usable password unless one is given: hashing costs ~0.2 s a user,
    so only tests that log in through a form pay for it (`UserFactory(password="...")`)."""

    class Meta:
        model = settings.AUTH_USER_MODEL
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"staff{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")

    @factory.post_generation
    def password(self, create: bool, extracted: str | None, **kwargs: Any) -> None:
        if extracted:
            self.set_password(extracted)
        else:
            self.set_unusable_password()
        if create:
            self.save(update_fields=["password"])


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    clinic = factory.SubFactory(ClinicFactory)
    role = Role.NURSE


class PatientFactory(factory.django.DjangoModelFactory[Patient]):
    """An adult with spinal-origin spasticity (multiple sclerosis): the widest dose limits.
    `PatientFactory(cerebral=True)` for cerebral palsy, `birth_date=` for a child."""

    class Meta:
        model = Patient

    class Params:
        cerebral = factory.Trait(diagnosis=Diagnosis.CEREBRAL_PALSY, spasticity_origin=SpasticityOrigin.CEREBRAL)

    clinic = factory.SubFactory(ClinicFactory)
    mrn = factory.Sequence(lambda n: f"MRN{n:06d}")
    given_name = "Alex"
    family_name = factory.Sequence(lambda n: f"Patient{n}")
    birth_date = date(1980, 5, 17)
    diagnosis = Diagnosis.MULTIPLE_SCLEROSIS
    spasticity_origin = SpasticityOrigin.SPINAL


class CaregiverFactory(factory.django.DjangoModelFactory[Caregiver]):
    class Meta:
        model = Caregiver

    patient = factory.SubFactory(PatientFactory)
    name = factory.Sequence(lambda n: f"Caregiver {n}")


# ----------------------------------------------------------------------------- builders


def pump_model(model_number: str = "8637-40") -> PumpModel:
    """A model from the seeded catalogue: 8637-20/8637-40 (SynchroMed II), 13827/16827 (Prometra II)."""
    return PumpModel.objects.get(model_number=model_number)


def screen(
    patient: Patient,
    *,
    dose_mcg: int = 100,
    given_at: datetime = SCREENED_AT,
    outcome: str = ScreeningOutcome.POSITIVE,
    effect_duration_hours: Decimal | None = None,
) -> ScreeningTrial:
    """Record a screening bolus through the service (its rules apply)."""
    return services.record_screening(
        patient=patient,
        given_at=given_at,
        dose_mcg=dose_mcg,
        now=given_at,
        outcome=outcome,
        effect_duration_hours=effect_duration_hours,
    )


def screened_patient(
    *,
    dose_mcg: int = 100,
    effect_duration_hours: Decimal | None = None,
    screened_at: datetime = SCREENED_AT,
    **patient_fields: Any,
) -> Patient:
    """A patient with one positive screening trial: eligible for an implant, first dose 2× it."""
    patient = PatientFactory(**patient_fields)
    screen(patient, dose_mcg=dose_mcg, given_at=screened_at, effect_duration_hours=effect_duration_hours)
    return patient


def implant(
    patient: Patient | None = None,
    *,
    model_number: str = "8637-40",
    implanted_at: datetime = IMPLANTED_AT,
    **details: Any,
) -> Pump:
    """An implanted pump with no program and no fill yet (a new patient is screened 14 days before)."""
    return services.implant_pump(
        patient=patient or screened_patient(screened_at=implanted_at - timedelta(days=14)),
        model=pump_model(model_number),
        serial_number=f"SN{next(_serials):07d}",
        implanted_at=implanted_at,
        now=implanted_at,
        **details,
    )


def fill(
    pump: Pump,
    *,
    at: datetime,
    volume_added_ml: Decimal | str,
    concentration_mcg_per_ml: Decimal | str = "500",
    withdrawn_ml: Decimal | str = "0",
    by: Any = None,
    acknowledged: Iterable[str] = (),
    reason: str = "",
) -> Refill:
    """Record a refill (or the initial fill) at `at` through the service."""
    return services.record_refill(
        pump,
        services.RefillInput(
            performed_at=at,
            withdrawn_ml=Decimal(withdrawn_ml),
            volume_added_ml=Decimal(volume_added_ml),
            concentration_mcg_per_ml=Decimal(concentration_mcg_per_ml),
        ),
        by=by,
        now=at,
        acknowledged=acknowledged,
        reason=reason,
    )


def implanted_pump(
    *,
    patient: Patient | None = None,
    model_number: str = "8637-40",
    implanted_at: datetime = IMPLANTED_AT,
    dose_mcg_per_day: Decimal | str = "200",
    concentration_mcg_per_ml: Decimal | str = "500",
    fill_ml: Decimal | str | None = None,
    phase: str = Phase.TITRATION,
    by: Any = None,
    acknowledged: Iterable[str] = (),
    reason: str = "",
) -> Pump:
    """A pump implanted, programmed and filled at `implanted_at`, as a clinic records it.

    Defaults are the worked example of DESIGN's refill arithmetic: a 40 mL SynchroMed II
    filled full at 500 mcg/mL, 200 mcg/day (twice the 100 mcg screening dose), 2 mL alarm.
    `acknowledged`/`reason` pass to the first program, for doses the rules would refuse.
    """
    pump = implant(patient, model_number=model_number, implanted_at=implanted_at)
    services.change_program(
        pump,
        services.ProgramInput(
            effective_at=implanted_at,
            dose_mcg_per_day=Decimal(dose_mcg_per_day),
            concentration_mcg_per_ml=Decimal(concentration_mcg_per_ml),
        ),
        by=by,
        now=implanted_at,
        acknowledged=acknowledged,
        reason=reason,
    )
    fill(
        pump,
        at=implanted_at,
        volume_added_ml=pump.model.reservoir_ml if fill_ml is None else Decimal(fill_ml),
        concentration_mcg_per_ml=concentration_mcg_per_ml,
        by=by,
    )
    if phase != Phase.TITRATION:
        services.set_phase(pump, phase, now=implanted_at)
    pump.refresh_from_db()
    return pump
