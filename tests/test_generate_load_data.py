"""The load-data generator (bench/generate.py) writes data the services would have written."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Min

from bench.generate import Options, generate
from notifications.models import ContactBlock
from patients.models import Caregiver, Clinic, Membership, Patient
from pumps import services
from pumps.models import ClinicalEvent, Program, Pump, PumpStatus, Refill, ScreeningOutcome, ScreeningTrial

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
OPTIONS = Options(pumps=30, clinics=3, now=NOW, seed=7, tag="T", batch=8)

pytestmark = pytest.mark.django_db


def test_it_creates_the_requested_pumps_clinics_and_memberships() -> None:
    result = generate(OPTIONS)

    assert Pump.objects.count() == result.pumps == 30
    assert Clinic.objects.filter(name__startswith="T clinic ").count() == 3
    for clinic in Clinic.objects.filter(name__startswith="T clinic "):
        assert set(Membership.objects.filter(clinic=clinic).values_list("role", flat=True)) == {
            "clinician",
            "nurse",
            "coordinator",
            "viewer",
        }
    assert result.rows > 30 * 10  # histories, not one row a pump


def test_every_pump_has_a_program_and_a_fill_and_stores_the_services_dates() -> None:
    generate(OPTIONS)

    for pump in Pump.objects.select_related("patient__clinic", "model"):
        assert pump.programs.exists(), pump
        assert pump.refills.filter(is_initial_fill=True).count() == 1, pump
        stored = (pump.alarm_on, pump.refill_by)
        services.recompute_schedule(pump, announce=False)
        assert (pump.alarm_on, pump.refill_by) == stored, pump
        if pump.is_active:
            assert pump.refill_by is not None


def test_every_implant_follows_a_positive_screening_trial() -> None:
    generate(OPTIONS)

    first_implants = Patient.objects.annotate(first=Min("pumps__implanted_at")).filter(first__isnull=False)
    assert first_implants.count() == Patient.objects.count()
    for patient in first_implants:
        assert ScreeningTrial.objects.filter(
            patient=patient, outcome=ScreeningOutcome.POSITIVE, given_at__lt=patient.first
        ).exists(), patient
        assert services.is_eligible(patient, implanted_at=patient.first)


def test_refills_never_exceed_capacity_and_start_after_the_program() -> None:
    generate(OPTIONS)

    for refill in Refill.objects.select_related("pump__model"):
        capacity = refill.pump.model.reservoir_ml
        assert 0 < refill.volume_added_ml <= capacity
        assert 0 <= refill.withdrawn_ml <= capacity
        assert refill.performed_at <= NOW
        assert refill.pump.programs.filter(effective_at__lte=refill.performed_at).exists()


def test_histories_look_like_a_clinics() -> None:
    generate(Options(pumps=120, clinics=4, now=NOW, seed=3, tag="H", batch=50))

    assert Program.objects.count() > Pump.objects.count()  # titration, then maintenance
    assert Refill.objects.filter(is_initial_fill=False).count() > 5 * Pump.objects.count()
    # Discrepancies flagged in a few refills, not most.
    flagged = Refill.objects.filter(discrepancy_flagged=True).count()
    assert 0 < flagged < Refill.objects.count() // 10
    assert Pump.objects.exclude(status=PumpStatus.ACTIVE).exists()
    assert Patient.objects.exclude(email="").count() > Patient.objects.count() // 2
    assert Patient.objects.values("language").distinct().count() == 2
    assert Clinic.objects.values("time_zone").distinct().count() == 4


def test_the_same_seed_gives_the_same_data() -> None:
    def fingerprint() -> list[tuple[object, ...]]:
        return list(
            Refill.objects.order_by("pump__serial_number", "performed_at").values_list(
                "pump__serial_number", "performed_at", "withdrawn_ml", "volume_added_ml", "alarm_on", "refill_by"
            )
        )

    class Undo(Exception):
        pass

    prints = []
    for _ in range(2):
        try:
            with transaction.atomic():
                generate(OPTIONS)
                prints.append(fingerprint())
                raise Undo
        except Undo:
            pass

    assert prints[0] == prints[1]
    assert prints[0]


def test_copy_and_bulk_create_write_the_same_rows() -> None:
    """PostgreSQL's COPY path (the default there) stores what Django's bulk_create stores."""

    def snapshot() -> dict[str, list[tuple[object, ...]]]:
        def rows(model: type[Any], order: str, skip: set[str]) -> list[tuple[object, ...]]:
            names = [f.attname for f in model._meta.concrete_fields if f.attname not in skip]
            return list(model.objects.order_by(*order.split(",")).values_list(*names))

        keys = {"id", "patient_id", "pump_id", "created_at", "author_id", "performed_by_id", "updated_at"}
        return {
            "patients": rows(Patient, "mrn", keys | {"clinic_id"}),
            "pumps": rows(Pump, "serial_number", keys),
            "programs": rows(Program, "pump__serial_number,effective_at", keys),
            "refills": rows(Refill, "pump__serial_number,performed_at", keys),
            "screenings": rows(ScreeningTrial, "patient__mrn,given_at", keys),
            "caregivers": rows(Caregiver, "patient__mrn", keys),
            "events": rows(ClinicalEvent, "pump__serial_number,occurred_at,kind", keys),
            "blocks": rows(ContactBlock, "channel,address", keys),
            "program authors": list(
                Program.objects.order_by("pump__serial_number", "effective_at").values_list("author__username")
            ),
            "owners": list(Pump.objects.order_by("serial_number").values_list("patient__mrn", "patient__clinic__name")),
        }

    class Undo(Exception):
        pass

    snapshots = []
    for copy in (True, False):
        try:
            with transaction.atomic():
                generate(replace(OPTIONS, pumps=60, copy=copy))
                snapshots.append(snapshot())
                raise Undo
        except Undo:
            pass

    assert snapshots[0]["refills"]
    for name in snapshots[0]:
        assert snapshots[0][name] == snapshots[1][name], name
