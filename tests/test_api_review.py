"""A second read of the REST API (issue 4): the role matrix and clinic scoping on paths the
first tests did not take (moving a patient, nested caregivers), and odd JSON answering 400."""

from __future__ import annotations

from typing import Any

import pytest
from admin_support import VISIT_AT, staff
from api_support import api_client
from rest_framework.test import APIClient

from patients.models import Clinic, Patient, Role
from pumps.models import Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]


def quiet(client: APIClient) -> APIClient:
    """Let a server error come back as a 500 answer, as an integration would see it."""
    client.raise_request_exception = False
    return client


def program_body(pump: Pump, **changes: Any) -> dict[str, Any]:
    return {"pump": pump.pk, "effective_at": VISIT_AT.isoformat(), "concentration_mcg_per_ml": "500", **changes}


# ----------------------------------------------------------------------------- role matrix and scoping


def test_a_patient_cannot_be_moved_to_a_clinic_where_the_user_only_reads(pump_a: Pump, clinic_b: Clinic) -> None:
    nurse = staff((pump_a.patient.clinic, Role.NURSE), (clinic_b, Role.VIEWER))
    response = api_client(nurse).patch(f"/api/v1/patients/{pump_a.patient_id}/", {"clinic": clinic_b.pk}, format="json")
    assert response.status_code == 400 and "clinic" in response.json()
    assert Patient.objects.get(pk=pump_a.patient_id).clinic_id == pump_a.patient.clinic_id


def test_a_nurse_cannot_change_clinical_facts_even_while_moving_the_patient(pump_a: Pump, clinic_b: Clinic) -> None:
    user = staff((pump_a.patient.clinic, Role.NURSE), (clinic_b, Role.CLINICIAN))
    body = {"clinic": clinic_b.pk, "diagnosis": "cp"}
    response = api_client(user).patch(f"/api/v1/patients/{pump_a.patient_id}/", body, format="json")
    assert response.status_code == 403 and "diagnosis" in response.json()
    patient = Patient.objects.get(pk=pump_a.patient_id)
    assert patient.clinic_id == pump_a.patient.clinic_id and patient.diagnosis == "ms"


def test_another_clinics_caregiver_id_is_refused_like_an_unknown_one(pump_a: Pump, pump_b: Pump) -> None:
    from factories import CaregiverFactory

    theirs = CaregiverFactory(patient=pump_b.patient)
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    url = f"/api/v1/patients/{pump_a.patient_id}/"
    known = client.patch(url, {"caregivers": [{"id": theirs.pk, "name": "Taken over"}]}, format="json")
    unknown = client.patch(url, {"caregivers": [{"id": 10**9, "name": "Taken over"}]}, format="json")
    assert known.status_code == unknown.status_code == 400
    assert known.json() == {"caregivers": [f"Item 1: caregiver {theirs.pk} is not this patient's."]}
    assert unknown.json() == {"caregivers": [f"Item 1: caregiver {10**9} is not this patient's."]}
    theirs.refresh_from_db()
    assert theirs.patient_id == pump_b.patient_id and theirs.name != "Taken over"


def test_odd_json_shapes_answer_400_naming_the_field(pump_a: Pump) -> None:
    client = quiet(api_client(staff((pump_a.patient.clinic, Role.CLINICIAN))))
    cases = [
        ("/api/v1/programs/", program_body(pump_a, dose_mcg_per_day=None), "dose_mcg_per_day"),
        ("/api/v1/programs/", program_body(pump_a, dose_mcg_per_day="200", acknowledged_warnings=None), "acknowledged_warnings"),
        ("/api/v1/programs/", program_body(pump_a, mode="flex", flex_steps={"starts": "00:00"}), "flex_steps"),
        ("/api/v1/programs/", program_body(pump_a, mode="flex", flex_steps=["x"]), "flex_steps"),
        (
            "/api/v1/programs/",
            program_body(pump_a, mode="flex", flex_steps=[{"starts": None, "mcg_per_hour": None}]),
            "flex_steps",
        ),
        ("/api/v1/programs/", {**program_body(pump_a, dose_mcg_per_day="200"), "pump": "abc"}, "pump"),
        (
            "/api/v1/refills/",
            {"pump": pump_a.pk, "performed_at": VISIT_AT.isoformat(), "withdrawn_ml": "28.8001"},
            "withdrawn_ml",
        ),
        ("/api/v1/patients/", {"caregivers": {"name": "x"}}, "caregivers"),
    ]
    for path, body, field in cases:
        response = client.post(path, body, format="json")
        assert response.status_code == 400 and field in response.json(), (path, body, response.status_code)
    assert client.post("/api/v1/programs/", [1, 2], format="json").status_code == 400
    assert pump_a.programs.count() == 1
