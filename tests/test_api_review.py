"""A second read of the REST API (issue 4): the role matrix and clinic scoping on paths the
first tests did not take (moving a patient, nested caregivers), and odd JSON answering 400."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from admin_support import VISIT_AT, staff
from api_support import api_client
from django.db import connection
from django.test.utils import CaptureQueriesContext
from factories import MembershipFactory, PatientFactory, UserFactory
from rest_framework.test import APIClient

from notifications import services as notification_services
from notifications.models import EscalationReason, Severity
from patients.models import Clinic, Patient, Role
from pumps.models import Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

EVERY_CODE = [
    "increase_over_limit",
    "decrease_over_limit",
    "increase_too_soon",
    "dose_above_1000",
    "initial_dose_unusual",
    "concentration_unusual",
]


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


# ----------------------------------------------------------------------------- no 500 for odd input


def test_a_huge_due_within_is_a_field_error_not_a_server_error(clinic_a: Clinic) -> None:
    client = quiet(api_client(staff((clinic_a, Role.VIEWER))))
    for value in ("100000000", "1e30"):
        response = client.get(f"/api/v1/pumps/?due_within={value}")
        assert response.status_code == 400, (value, response.status_code)
        assert "due_within" in response.json()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"mode": "flex", "flex_steps": [{"starts": "00:00", "mcg_per_hour": "1e30"}]}, "flex_steps"),
        ({"mode": "flex", "flex_steps": [{"starts": "00:00", "mcg_per_hour": 1e308}]}, "flex_steps"),
        (
            {"mode": "periodic_bolus", "basal_mcg_per_day": "999999.999", "bolus_mcg": "999999.999", "boluses_per_day": 32767},
            "bolus_mcg",
        ),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/programs/preview/", "/api/v1/programs/"])
def test_a_daily_dose_beyond_what_can_be_stored_is_a_field_error(
    pump_a: Pump, path: str, changes: dict[str, Any], field: str
) -> None:
    client = quiet(api_client(staff((pump_a.patient.clinic, Role.CLINICIAN))))
    body = program_body(pump_a, **changes, acknowledged_warnings=EVERY_CODE, reason="typed by the bridge")
    response = client.post(path, body, format="json")
    assert response.status_code == 400, response.status_code
    assert field in response.json() or "dose_mcg_per_day" in response.json()
    assert pump_a.programs.count() == 1


def test_a_recorded_change_is_answered_and_listed_whatever_its_percentage(pump_a: Pump) -> None:
    """0.001 → 100000 mcg/day is a change of 10^10 %: a typo, but one the rules let a
    clinician acknowledge. The record is written, so its answer and every later list must work."""
    client = quiet(api_client(staff((pump_a.patient.clinic, Role.CLINICIAN))))
    ack = {"acknowledged_warnings": EVERY_CODE, "reason": "typed by the bridge"}
    low = client.post(
        "/api/v1/programs/",
        program_body(pump_a, effective_at="2027-02-01T08:00:00Z", dose_mcg_per_day="0.001", **ack),
        format="json",
    )
    assert low.status_code == 201, low.json()
    high = client.post("/api/v1/programs/", program_body(pump_a, dose_mcg_per_day="100000", **ack), format="json")
    written = pump_a.programs.count()
    assert (high.status_code, written) in {(201, 3), (400, 2)}, (high.status_code, written)
    assert client.get("/api/v1/programs/").status_code == 200
    assert client.get(f"/api/v1/pumps/{pump_a.pk}/").status_code == 200


def test_a_flex_dose_is_judged_as_it_is_stored(pump_a: Pump) -> None:
    """8.33333 mcg/h × 24 h = 199.99992 mcg/day: the service rounds it to the 0.001 mcg a
    record holds before the rules judge it, so what was judged is what is stored."""
    client = api_client(staff((pump_a.patient.clinic, Role.CLINICIAN)))
    body = program_body(pump_a, mode="flex", flex_steps=[{"starts": "00:00", "mcg_per_hour": "8.33333"}])
    preview = client.post("/api/v1/programs/preview/", body, format="json").json()
    response = client.post("/api/v1/programs/", body, format="json")
    assert response.status_code == 201, response.json()
    stored = pump_a.programs.get(pk=response.json()["id"])
    assert preview["dose_mcg_per_day"] == response.json()["dose_mcg_per_day"] == f"{stored.dose_mcg_per_day}" == "200.000"


# ----------------------------------------------------------------------------- throttling and paging


def test_password_guesses_at_the_token_endpoint_are_throttled(clinic_a: Clinic, settings: Any) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "3/min", "password": "3/min"}}
    user = UserFactory(is_staff=True, password="the-right-password-1")
    MembershipFactory(user=user, clinic=clinic_a, role=Role.NURSE)
    codes = []
    for i in range(10):
        client = APIClient()
        basic = base64.b64encode(f"{user.username}:guess-{i}".encode()).decode()
        client.credentials(HTTP_AUTHORIZATION=f"Basic {basic}")
        codes.append(client.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code)
    assert 429 in codes, codes


# ----------------------------------------------------------------------------- ordering and paging


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/patients/",
        "/api/v1/patients/?ordering=family_name",
        "/api/v1/pumps/?ordering=refill_by",
        "/api/v1/programs/",
        "/api/v1/refills/",
        "/api/v1/refills/?ordering=refill_by",
        "/api/v1/screenings/",
    ],
)
def test_every_page_is_cut_from_a_total_order(pump_a: Pump, url: str) -> None:
    """LIMIT/OFFSET over ties is not deterministic in PostgreSQL: a bridge paging through
    would see some rows twice and miss others. The last sort key must be unique."""
    client = api_client(staff((pump_a.patient.clinic, Role.VIEWER)))
    table = {
        "patients": "patients_patient",
        "pumps": "pumps_pump",
        "programs": "pumps_program",
        "refills": "pumps_refill",
        "screenings": "pumps_screeningtrial",
        "events": "pumps_clinicalevent",
        "escalations": "notifications_escalation",
        "messages": "notifications_message",
    }[url.split("/")[3]]
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    pages = [q["sql"] for q in ctx.captured_queries if f'FROM "{table}"' in q["sql"] and "ORDER BY" in q["sql"]]
    for sql in pages:
        order = sql[sql.index("ORDER BY") :].split("LIMIT")[0].strip()
        assert re.sub(r"\s+(ASC|DESC)$", "", order).endswith(f'"{table}"."id"'), order


def test_paging_through_patients_with_the_same_name_sees_each_once(clinic_a: Clinic) -> None:
    ids = {PatientFactory(clinic=clinic_a, family_name="Garcia", given_name="Maria").pk for _ in range(40)}
    client = api_client(staff((clinic_a, Role.VIEWER)))
    seen: list[int] = []
    url: str | None = "/api/v1/patients/?page_size=7"
    while url:
        body = client.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert sorted(seen) == sorted(ids)


def test_most_severe_escalations_first_means_critical_first(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    for severity, cycle in [(Severity.CRITICAL, "c1"), (Severity.WARNING, "c2"), (Severity.INFO, "c3")]:
        notification_services.raise_escalation(
            clinic=clinic, reason=EscalationReason.OVERDUE, severity=severity, cycle=cycle, detail="d", now=VISIT_AT, pump=pump_a
        )
    client = api_client(staff((clinic, Role.VIEWER)))
    rows = client.get("/api/v1/escalations/?ordering=-severity").json()["results"]
    assert [r["severity"] for r in rows] == ["critical", "warning", "info"]


@pytest.mark.parametrize("path", ["/api/v1/nothing-here/", "/api/v1/screenings/%0A/", "/api/v1/%C3%B6%0A%18/"])
def test_any_other_path_under_the_api_is_a_json_404(path: str, pump_a: Pump) -> None:
    # Schemathesis found a newline in a path falling through to Django's HTML 404 page.
    response = api_client(staff((pump_a.patient.clinic, Role.VIEWER))).get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}
