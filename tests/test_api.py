"""The REST API (/api/v1/): tokens, clinic scoping, the services' rules, filters, budgets."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from admin_support import NOW, VISIT_AT, client_for, staff
from api_support import api_client, token_for
from django.db import connection
from django.test.utils import CaptureQueriesContext
from factories import IMPLANTED_AT, CaregiverFactory, fill, implanted_pump, screened_patient
from rest_framework.test import APIClient

from api.models import ApiToken, digest
from api.services import revoke_token
from integrations.services import issue_feed
from notifications import services as notification_services
from notifications.models import Escalation, EscalationReason, Message, Severity, Status
from patients.models import Clinic, Patient, Role
from pumps.appointments import book_appointment
from pumps.models import ClinicalEvent, EventKind, Program, Pump, PumpStatus, Refill
from webhooks import services as webhook_services

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]


def refill_body(pump: Pump, **changes: Any) -> dict[str, Any]:
    """The worked example's visit: 28 days at 0.4 mL/day leave 28.8 mL of the 40 mL fill."""
    return {
        "pump": pump.pk,
        "performed_at": VISIT_AT.isoformat(),
        "withdrawn_ml": "28.80",
        "volume_added_ml": "40.00",
        "concentration_mcg_per_ml": "500",
        **changes,
    }


# ----------------------------------------------------------------------------- tokens


def test_a_token_is_stored_as_a_digest_only(clinic_a: Clinic) -> None:
    user = staff((clinic_a, Role.NURSE))
    key = token_for(user)
    token = ApiToken.objects.get(user=user)
    assert token.key_digest == digest(key) and key not in token.key_digest
    assert token.prefix == key[:10]
    assert not ApiToken.objects.filter(key_digest=key).exists()


def test_it_answers_401_without_a_token_or_with_a_bad_one() -> None:
    assert APIClient().get("/api/v1/pumps/").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token pt_not-a-key")
    response = client.get("/api/v1/pumps/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid, expired or revoked token."}


def test_a_revoked_or_expired_token_is_refused(clinic_a: Clinic) -> None:
    user = staff((clinic_a, Role.NURSE))
    key = token_for(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/pumps/").status_code == 200
    revoke_token(ApiToken.objects.get(user=user), now=NOW)
    assert client.get("/api/v1/pumps/").status_code == 401

    other = token_for(user, "short-lived")
    ApiToken.objects.filter(name="short-lived").update(expires_at=NOW - timedelta(seconds=1))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other}")
    assert client.get("/api/v1/pumps/").status_code == 401


def test_a_token_records_its_last_use(clinic_a: Clinic) -> None:
    user = staff((clinic_a, Role.NURSE))
    api_client(user).get("/api/v1/pumps/")
    assert ApiToken.objects.get(user=user).last_used_at == NOW


def test_a_user_without_a_clinic_role_is_refused(clinic_a: Clinic) -> None:
    assert api_client(staff()).get("/api/v1/pumps/").status_code == 403


# ----------------------------------------------------------------------------- the README session


def test_a_nurse_records_a_refill_and_reads_the_new_refill_by(pump_a: Pump) -> None:
    nurse = staff((pump_a.patient.clinic, Role.NURSE))
    client = api_client(nurse)
    before = client.get(f"/api/v1/pumps/{pump_a.pk}/").json()
    assert before["expected_volume_ml"] == "28.75"  # 40 − 0.4 × 28.125 days (NOW is 3 h after the visit), rounded down
    response = client.post("/api/v1/refills/", refill_body(pump_a), format="json")
    assert response.status_code == 201, response.json()
    refill = response.json()
    assert refill["expected_residual_ml"] == "28.80"
    assert refill["discrepancy_ml"] == "0.00" and refill["discrepancy_flagged"] is False
    assert refill["volume_after_fill_ml"] == "40.00"
    # Titration: the visit + 30 days comes before the alarm date (95 days) − 3.
    assert refill["refill_by"] == "2027-03-03" and refill["alarm_on"] == "2027-05-07"
    pump = client.get(f"/api/v1/pumps/{pump_a.pk}/").json()
    assert pump["refill_by"] == "2027-03-03" and pump["alarm_on"] == "2027-05-07"
    assert pump["current_dose_mcg_per_day"] == "200.000"
    assert pump["current_concentration_mcg_per_ml"] == "500.00"
    assert pump["reservoir_capacity_ml"] == "40.00"
    assert pump["implanted_on"] == "2027-01-04" and pump["phase"] == "titration" and pump["status"] == "active"
    assert refill["performed_by"] == nurse.username


def test_pump_shows_every_contract_field(pump_a: Pump) -> None:
    body = api_client(staff((pump_a.patient.clinic, Role.VIEWER))).get(f"/api/v1/pumps/{pump_a.pk}/").json()
    contract = {
        "id",
        "patient",
        "model",
        "serial_number",
        "implanted_on",
        "phase",
        "status",
        "reservoir_capacity_ml",
        "low_reservoir_alarm_ml",
        "current_dose_mcg_per_day",
        "current_concentration_mcg_per_ml",
        "expected_volume_ml",
        "alarm_on",
        "refill_by",
    }
    assert contract <= set(body)


# ----------------------------------------------------------------------------- the services' rules


def test_an_overfill_is_refused_naming_the_field_and_nothing_is_written(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    response = client.post("/api/v1/refills/", refill_body(pump_a, volume_added_ml="41.00"), format="json")
    assert response.status_code == 400
    assert response.json() == {"volume_added_ml": ["Exceeds the reservoir capacity of 40 mL."]}
    assert pump_a.refills.count() == 1  # the initial fill only


def test_a_time_without_an_offset_is_refused(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    response = client.post("/api/v1/refills/", refill_body(pump_a, performed_at="2027-02-01T09:00:00"), format="json")
    assert response.status_code == 400
    assert "performed_at" in response.json() and "offset" in response.json()["performed_at"][0]


def test_a_refill_in_the_future_is_a_field_error(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    response = client.post(
        "/api/v1/refills/", refill_body(pump_a, performed_at=(NOW + timedelta(hours=1)).isoformat()), format="json"
    )
    assert response.status_code == 400 and response.json() == {"performed_at": ["Cannot be in the future."]}


def test_a_refused_dose_change_names_its_warnings_then_succeeds_when_acknowledged(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.CLINICIAN)))
    body = {
        "pump": pump_a.pk,
        "effective_at": VISIT_AT.isoformat(),
        "dose_mcg_per_day": "300",  # +50 % in titration, spinal origin: over the 30 % limit
        "concentration_mcg_per_ml": "500",
    }
    refused = client.post("/api/v1/programs/", body, format="json")
    assert refused.status_code == 400
    assert [w["code"] for w in refused.json()["warnings"]] == ["increase_over_limit"]
    assert refused.json()["warnings"][0]["message"]
    assert pump_a.programs.count() == 1

    no_reason = client.post("/api/v1/programs/", {**body, "acknowledged_warnings": ["increase_over_limit"]}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()

    accepted = client.post(
        "/api/v1/programs/",
        {**body, "acknowledged_warnings": ["increase_over_limit"], "reason": "Severe spasms; physician present."},
        format="json",
    )
    assert accepted.status_code == 201, accepted.json()
    program = Program.objects.get(pk=accepted.json()["id"])
    assert program.acknowledged_warnings == ["increase_over_limit"]
    assert program.reason == "Severe spasms; physician present."
    assert accepted.json()["previous_dose_mcg_per_day"] == "200.000"


def test_an_unknown_warning_code_is_a_field_error(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.CLINICIAN)))
    response = client.post(
        "/api/v1/programs/",
        {
            "pump": pump_a.pk,
            "effective_at": VISIT_AT.isoformat(),
            "dose_mcg_per_day": "210",
            "concentration_mcg_per_ml": "500",
            "acknowledged_warnings": ["whatever"],
        },
        format="json",
    )
    assert response.status_code == 400 and "acknowledged_warnings" in response.json()


def test_program_preview_writes_nothing(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.CLINICIAN)))
    body = {"pump": pump_a.pk, "effective_at": VISIT_AT.isoformat(), "dose_mcg_per_day": "300", "concentration_mcg_per_ml": "500"}
    response = client.post("/api/v1/programs/preview/", body, format="json")
    assert response.status_code == 200
    assert [w["code"] for w in response.json()["warnings"]] == ["increase_over_limit"]
    assert response.json()["change_pct"] == "50.0"
    assert pump_a.programs.count() == 1


def test_a_nurse_may_not_program_and_a_viewer_may_not_refill(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    nurse = api_client(staff((clinic, Role.NURSE)))
    body = {"pump": pump_a.pk, "effective_at": VISIT_AT.isoformat(), "dose_mcg_per_day": "210", "concentration_mcg_per_ml": "500"}
    assert nurse.post("/api/v1/programs/", body, format="json").status_code == 403
    viewer = api_client(staff((clinic, Role.VIEWER)))
    assert viewer.post("/api/v1/refills/", refill_body(pump_a), format="json").status_code == 403
    assert pump_a.programs.count() == 1 and pump_a.refills.count() == 1


def test_implant_through_the_api_needs_a_positive_screening(clinic_a: Clinic) -> None:
    client = api_client(staff((clinic_a, Role.NURSE)))
    unscreened = Patient.objects.create(
        clinic=clinic_a, mrn="U1", given_name="Ann", family_name="Lee", birth_date=date(1980, 1, 1), diagnosis="ms"
    )
    body = {"patient": unscreened.pk, "model": 2, "serial_number": "NEW1", "implanted_at": VISIT_AT.isoformat()}
    from factories import pump_model

    body["model"] = pump_model().pk
    response = client.post("/api/v1/pumps/", body, format="json")
    assert response.status_code == 400 and "patient" in response.json()
    screened = screened_patient(clinic=clinic_a)
    response = client.post("/api/v1/pumps/", {**body, "patient": screened.pk}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["refill_by"] == "2027-02-01"  # contents unknown until programmed and filled: due at once


def test_pump_details_change_and_other_fields_stay(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    response = client.patch(f"/api/v1/pumps/{pump_a.pk}/", {"udi": "(01)00643169001763", "phase": "maintenance"}, format="json")
    assert response.status_code == 200
    pump_a.refresh_from_db()
    assert pump_a.udi == "(01)00643169001763" and pump_a.phase == "titration"


def test_the_stable_dose_is_a_clinicians_decision(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    nurse = api_client(staff((clinic, Role.NURSE)))
    assert nurse.post(f"/api/v1/pumps/{pump_a.pk}/phase/", {"phase": "maintenance"}, format="json").status_code == 403
    clinician = api_client(staff((clinic, Role.CLINICIAN)))
    response = clinician.post(f"/api/v1/pumps/{pump_a.pk}/phase/", {"phase": "maintenance"}, format="json")
    assert response.status_code == 200 and response.json()["phase"] == "maintenance"


def test_explant_takes_the_pump_off_the_due_list(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    response = client.post(
        f"/api/v1/pumps/{pump_a.pk}/end/",
        {"status": "explanted", "explanted_on": "2027-02-01", "explant_reason": "Infection"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "explanted" and response.json()["refill_by"] is None
    missing = client.post(f"/api/v1/pumps/{pump_a.pk}/end/", {"status": "explanted"}, format="json")
    assert missing.status_code == 400 and {"explanted_on", "explant_reason"} <= set(missing.json())


def test_events_are_recorded_through_the_service(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    planned = client.post(
        "/api/v1/events/",
        {"pump": pump_a.pk, "kind": "mri_planned", "occurred_at": (NOW + timedelta(days=3)).isoformat()},
        format="json",
    )
    assert planned.status_code == 201
    future_alarm = client.post(
        "/api/v1/events/",
        {"pump": pump_a.pk, "kind": "low_reservoir_alarm", "occurred_at": (NOW + timedelta(days=3)).isoformat()},
        format="json",
    )
    assert future_alarm.status_code == 400 and future_alarm.json() == {"occurred_at": ["Cannot be in the future."]}


def test_screening_doses_follow_the_rules(clinic_a: Clinic) -> None:
    client = api_client(staff((clinic_a, Role.NURSE)))
    patient = Patient.objects.create(
        clinic=clinic_a, mrn="S1", given_name="Bo", family_name="Ng", birth_date=date(1990, 1, 1), diagnosis="sci"
    )
    first = client.post(
        "/api/v1/screenings/", {"patient": patient.pk, "given_at": VISIT_AT.isoformat(), "dose_mcg": 50}, format="json"
    )
    assert first.status_code == 201, first.json()
    too_soon = client.post(
        "/api/v1/screenings/",
        {"patient": patient.pk, "given_at": (VISIT_AT + timedelta(hours=2)).isoformat(), "dose_mcg": 75},
        format="json",
    )
    assert too_soon.status_code == 400 and "given_at" in too_soon.json()
    outcome = client.patch(f"/api/v1/screenings/{first.json()['id']}/", {"outcome": "positive"}, format="json")
    assert outcome.status_code == 200 and outcome.json()["outcome"] == "positive" and outcome.json()["dose_mcg"] == 50


# ----------------------------------------------------------------------------- patients


def test_a_patient_is_created_with_caregivers_and_origin_from_diagnosis(clinic_a: Clinic) -> None:
    client = api_client(staff((clinic_a, Role.COORDINATOR)))
    response = client.post(
        "/api/v1/patients/",
        {
            "clinic": clinic_a.pk,
            "mrn": "P-100",
            "given_name": "Ada",
            "family_name": "Ray",
            "birth_date": "1975-05-01",
            "diagnosis": "cp",
            "phone": "+442071234567",
            "caregivers": [{"name": "Sam Ray", "relationship": "son", "phone": "+442071234568"}],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["spasticity_origin"] == "cerebral"
    assert [c["name"] for c in body["caregivers"]] == ["Sam Ray"]
    duplicate = client.post(
        "/api/v1/patients/",
        {
            "clinic": clinic_a.pk,
            "mrn": "P-100",
            "given_name": "X",
            "family_name": "Y",
            "birth_date": "1970-01-01",
            "diagnosis": "ms",
        },
        format="json",
    )
    assert duplicate.status_code == 400 and list(duplicate.json()) == ["mrn"]


def test_bad_caregiver_rows_are_refused_and_nothing_is_written(clinic_a: Clinic) -> None:
    client = api_client(staff((clinic_a, Role.COORDINATOR)))
    response = client.post(
        "/api/v1/patients/",
        {
            "clinic": clinic_a.pk,
            "mrn": "P-101",
            "given_name": "Ada",
            "family_name": "Ray",
            "birth_date": "1975-05-01",
            "diagnosis": "ms",
            "caregivers": [{"name": "Sam", "phone": "not a number"}],
        },
        format="json",
    )
    assert response.status_code == 400 and "caregivers" in response.json()
    assert not Patient.objects.filter(mrn="P-101").exists()


def test_a_contact_change_replans_the_patients_messages(pump_a: Pump, django_capture_on_commit_callbacks: Any) -> None:
    patient = pump_a.patient
    Patient.objects.filter(pk=patient.pk).update(email="old@example.org")
    patient.refresh_from_db()
    notification_services.replan_pumps([pump_a.pk], NOW)
    assert Message.objects.filter(patient=patient, address=patient.email, status=Status.PLANNED).exists()
    client = api_client(staff((patient.clinic, Role.COORDINATOR)))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(f"/api/v1/patients/{patient.pk}/", {"email": "new@example.org"}, format="json")
    assert response.status_code == 200
    open_states = (Status.PLANNED, Status.DUE)
    assert Message.objects.filter(patient=patient, address="new@example.org", status__in=open_states).exists()
    assert not Message.objects.filter(patient=patient, address=patient.email, status__in=open_states).exists()


def test_caregivers_are_replaced_by_the_list_given(pump_a: Pump) -> None:
    patient = pump_a.patient
    keep, drop = CaregiverFactory(patient=patient, name="Keep"), CaregiverFactory(patient=patient, name="Drop")
    client = api_client(staff((patient.clinic, Role.COORDINATOR)))
    response = client.patch(
        f"/api/v1/patients/{patient.pk}/",
        {"caregivers": [{"id": keep.pk, "name": "Kept"}, {"name": "New"}]},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert sorted(c["name"] for c in response.json()["caregivers"]) == ["Kept", "New"]
    assert not patient.caregivers.filter(pk=drop.pk).exists()


def test_clinical_facts_are_a_clinicians_to_change(pump_a: Pump) -> None:
    patient = pump_a.patient
    nurse = api_client(staff((patient.clinic, Role.NURSE)))
    response = nurse.patch(f"/api/v1/patients/{patient.pk}/", {"spasticity_origin": "cerebral"}, format="json")
    assert response.status_code == 403 and "spasticity_origin" in response.json()
    patient.refresh_from_db()
    assert patient.spasticity_origin == "spinal"
    # Sending an unchanged value is not a change.
    assert nurse.patch(f"/api/v1/patients/{patient.pk}/", {"spasticity_origin": "spinal"}, format="json").status_code == 200


def test_a_clinic_policy_change_recomputes_refill_by(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    client = api_client(staff((clinic, Role.CLINICIAN)))
    response = client.patch(f"/api/v1/clinics/{clinic.pk}/", {"titration_interval_days": 20}, format="json")
    assert response.status_code == 200
    pump_a.refresh_from_db()
    assert pump_a.refill_by == date(2027, 1, 24)  # implant + 20 days
    bad = client.patch(f"/api/v1/clinics/{clinic.pk}/", {"titration_interval_days": 365}, format="json")
    assert bad.status_code == 400 and "titration_interval_days" in bad.json()
    nurse = api_client(staff((clinic, Role.NURSE)))
    assert nurse.patch(f"/api/v1/clinics/{clinic.pk}/", {"refill_margin_days": 5}, format="json").status_code == 403


# ----------------------------------------------------------------------------- escalations


def escalation_for(pump: Pump) -> Escalation:
    esc, _ = notification_services.raise_escalation(
        clinic=pump.patient.clinic,
        reason=EscalationReason.OVERDUE,
        severity=Severity.WARNING,
        cycle="2027-02-01",
        detail="Refill overdue",
        now=NOW,
        pump=pump,
    )
    return esc


def test_an_escalation_is_acknowledged_then_resolved_with_a_note(pump_a: Pump) -> None:
    esc = escalation_for(pump_a)
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    assert client.post(f"/api/v1/escalations/{esc.pk}/acknowledge/").json()["status"] == "acknowledged"
    assert client.post(f"/api/v1/escalations/{esc.pk}/resolve/", {}, format="json").json() == {
        "resolution": ["This field is required."]
    }
    done = client.post(f"/api/v1/escalations/{esc.pk}/resolve/", {"resolution": "Refill booked for Monday."}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "resolved"
    assert done.json()["resolution"] == "Refill booked for Monday."


# ----------------------------------------------------------------------------- filters


def test_pump_filters_due_overdue_and_past_alarm(clinic_a: Clinic) -> None:
    soon = implanted_pump(patient=screened_patient(clinic=clinic_a))  # refill by 2027-02-03 (implant + 30)
    later = implanted_pump(patient=screened_patient(clinic=clinic_a), implanted_at=IMPLANTED_AT + timedelta(days=20))
    client = api_client(staff((clinic_a, Role.VIEWER)))

    def ids(query: str) -> set[int]:
        return {p["id"] for p in client.get(f"/api/v1/pumps/?{query}").json()["results"]}

    assert ids("due_within=7") == {soon.pk}
    assert ids("due_within=60") == {soon.pk, later.pk}
    assert ids("overdue=true") == set()
    with time_machine.travel(datetime(2027, 2, 10, 12, tzinfo=UTC), tick=False):
        assert ids("overdue=true") == {soon.pk}
        assert ids("overdue=false") == {later.pk}
        assert ids("past_alarm=true") == set()
    with time_machine.travel(datetime(2027, 4, 15, 12, tzinfo=UTC), tick=False):
        assert ids("past_alarm=true") == {soon.pk}  # alarm on 2027-04-08: (40 − 2) / 0.4 = 95 days
    assert ids("phase=maintenance") == set()
    assert ids(f"patient={soon.patient_id}") == {soon.pk}
    assert client.get("/api/v1/pumps/?due_within=-1").status_code == 400


def test_due_is_by_the_clinics_own_calendar(clinic_a: Clinic) -> None:
    clinic_a.time_zone = "Pacific/Honolulu"
    clinic_a.save()
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a))
    pump.refresh_from_db()
    client = api_client(staff((clinic_a, Role.VIEWER)))
    # Implanted 2027-01-03 23:00 local: refill by 2027-01-03 + 30 days. At 2027-02-03 05:00 UTC
    # it is still 2027-02-02 in Honolulu (the refill-by day, not overdue yet), though not in UTC.
    assert pump.refill_by == date(2027, 2, 2)
    with time_machine.travel(datetime(2027, 2, 3, 5, tzinfo=UTC), tick=False):
        assert client.get("/api/v1/pumps/?overdue=true").json()["count"] == 0
    with time_machine.travel(datetime(2027, 2, 3, 11, tzinfo=UTC), tick=False):
        assert client.get("/api/v1/pumps/?overdue=true").json()["count"] == 1


def test_refills_filter_by_date_range_and_messages_by_state(pump_a: Pump) -> None:
    Patient.objects.filter(pk=pump_a.patient_id).update(email="patient-a@example.org")
    fill(pump_a, at=VISIT_AT, withdrawn_ml="28.80", volume_added_ml="40")
    client = api_client(staff((pump_a.patient.clinic, Role.VIEWER)))
    in_range = client.get(
        "/api/v1/refills/", {"performed_at_after": "2027-01-20T00:00:00Z", "performed_at_before": "2027-02-02T00:00:00Z"}
    )
    assert [r["performed_at"] for r in in_range.json()["results"]] == ["2027-02-01T09:00:00Z"]
    notification_services.replan_pumps([pump_a.pk], NOW)
    planned = client.get("/api/v1/messages/", {"status": "planned"}).json()
    assert planned["count"] > 0 and {m["status"] for m in planned["results"]} == {"planned"}
    assert client.get("/api/v1/messages/", {"status": "sent"}).json()["count"] == 0


def test_lists_are_ordered_and_paginated(clinic_a: Clinic) -> None:
    pumps = [
        implanted_pump(patient=screened_patient(clinic=clinic_a), implanted_at=IMPLANTED_AT + timedelta(days=i)) for i in range(3)
    ]
    client = api_client(staff((clinic_a, Role.VIEWER)))
    page = client.get("/api/v1/pumps/", {"ordering": "-implanted_at", "page_size": 2}).json()
    assert page["count"] == 3 and page["next"] and [p["id"] for p in page["results"]] == [pumps[2].pk, pumps[1].pk]


# ----------------------------------------------------------------------------- clinic scoping


@pytest.fixture
def clinic_a_records(pump_a: Pump) -> dict[str, int]:
    """One record of every kind in clinic A."""
    Patient.objects.filter(pk=pump_a.patient_id).update(email="patient-a@example.org")
    fill(pump_a, at=VISIT_AT, withdrawn_ml="28.80", volume_added_ml="40")
    event = ClinicalEvent.objects.create(pump=pump_a, kind=EventKind.LOW_RESERVOIR_ALARM, occurred_at=VISIT_AT)
    notification_services.replan_pumps([pump_a.pk], NOW)
    return {
        "clinics": pump_a.patient.clinic_id,
        "patients": pump_a.patient_id,
        "pumps": pump_a.pk,
        "programs": pump_a.programs.first().pk,
        "refills": pump_a.refills.first().pk,
        "screenings": pump_a.patient.screening_trials.first().pk,
        "events": event.pk,
        "messages": Message.objects.filter(pump=pump_a).first().pk,
        "escalations": escalation_for(pump_a).pk,
    }


@pytest.mark.parametrize(
    "endpoint", ["clinics", "patients", "pumps", "programs", "refills", "screenings", "events", "messages", "escalations"]
)
def test_another_clinics_records_are_neither_listed_nor_found(
    endpoint: str, clinic_a_records: dict[str, int], clinic_b: Clinic
) -> None:
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    listed = outsider.get(f"/api/v1/{endpoint}/").json()
    assert clinic_a_records[endpoint] not in {r["id"] for r in listed["results"]}
    assert outsider.get(f"/api/v1/{endpoint}/{clinic_a_records[endpoint]}/").status_code == 404
    member = api_client(staff((Clinic.objects.get(pk=clinic_a_records["clinics"]), Role.VIEWER)))
    assert member.get(f"/api/v1/{endpoint}/{clinic_a_records[endpoint]}/").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "clinics/{clinics}/", {"refill_margin_days": 5}),
        ("patch", "patients/{patients}/", {"email": "x@example.org"}),
        ("patch", "pumps/{pumps}/", {"udi": "x"}),
        ("post", "pumps/{pumps}/end/", {"status": "explanted", "explanted_on": "2027-02-01", "explant_reason": "x"}),
        ("post", "pumps/{pumps}/phase/", {"phase": "maintenance"}),
        ("patch", "screenings/{screenings}/", {"outcome": "negative"}),
        ("post", "escalations/{escalations}/acknowledge/", {}),
        ("post", "escalations/{escalations}/resolve/", {"resolution": "x"}),
    ],
)
def test_another_clinics_records_cannot_be_changed(
    method: str, path: str, body: dict[str, Any], clinic_a_records: dict[str, int], clinic_b: Clinic
) -> None:
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    response = getattr(outsider, method)(f"/api/v1/{path.format(**clinic_a_records)}", body, format="json")
    assert response.status_code == 404
    assert not Escalation.objects.exclude(status="open").exists()
    assert Pump.objects.get(pk=clinic_a_records["pumps"]).status == PumpStatus.ACTIVE


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        (
            "patients/",
            {
                "clinic": "{clinics}",
                "mrn": "Z",
                "given_name": "A",
                "family_name": "B",
                "birth_date": "1970-01-01",
                "diagnosis": "ms",
            },
            "clinic",
        ),
        (
            "pumps/",
            {"patient": "{patients}", "model": 1, "serial_number": "Z9", "implanted_at": "2027-01-10T09:00:00Z"},
            "patient",
        ),
        (
            "programs/",
            {
                "pump": "{pumps}",
                "effective_at": "2027-02-01T10:00:00Z",
                "dose_mcg_per_day": "200",
                "concentration_mcg_per_ml": "500",
            },
            "pump",
        ),
        (
            "programs/preview/",
            {
                "pump": "{pumps}",
                "effective_at": "2027-02-01T10:00:00Z",
                "dose_mcg_per_day": "200",
                "concentration_mcg_per_ml": "500",
            },
            "pump",
        ),
        (
            "refills/",
            {
                "pump": "{pumps}",
                "performed_at": "2027-02-01T10:00:00Z",
                "withdrawn_ml": "1",
                "volume_added_ml": "1",
                "concentration_mcg_per_ml": "500",
            },
            "pump",
        ),
        (
            "refills/preview/",
            {
                "pump": "{pumps}",
                "performed_at": "2027-02-01T10:00:00Z",
                "withdrawn_ml": "1",
                "volume_added_ml": "1",
                "concentration_mcg_per_ml": "500",
            },
            "pump",
        ),
        ("screenings/", {"patient": "{patients}", "given_at": "2027-02-01T10:00:00Z", "dose_mcg": 50}, "patient"),
        ("events/", {"pump": "{pumps}", "kind": "infection", "occurred_at": "2027-02-01T10:00:00Z"}, "pump"),
    ],
)
def test_another_clinics_ids_cannot_be_written_to(
    endpoint: str, body: dict[str, Any], field: str, clinic_a_records: dict[str, int], clinic_b: Clinic
) -> None:
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    filled = {k: (int(v.format(**clinic_a_records)) if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()}
    counts = (Patient.objects.count(), Pump.objects.count(), Program.objects.count(), Refill.objects.count())
    response = outsider.post(f"/api/v1/{endpoint}", filled, format="json")
    assert response.status_code == 400
    assert field in response.json() and "does not exist" in response.json()[field][0]
    assert (Patient.objects.count(), Pump.objects.count(), Program.objects.count(), Refill.objects.count()) == counts


def test_filters_naming_another_clinics_ids_find_nothing(clinic_a_records: dict[str, int], clinic_b: Clinic) -> None:
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    assert outsider.get("/api/v1/refills/", {"pump": clinic_a_records["pumps"]}).json()["count"] == 0
    assert outsider.get("/api/v1/pumps/", {"patient": clinic_a_records["patients"]}).json()["count"] == 0


# ----------------------------------------------------------------------------- query budget


LIST_ENDPOINTS = [
    "appointments",
    "calendar-feeds",
    "tokens",
    "webhook-endpoints",
    "webhook-deliveries",
    "clinics",
    "patients",
    "pump-models",
    "pumps",
    "programs",
    "refills",
    "screenings",
    "events",
    "messages",
    "escalations",
]


def _queries(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("endpoint", LIST_ENDPOINTS)
def test_a_list_runs_the_same_number_of_queries_whatever_the_page_size(endpoint: str, clinic_a: Clinic) -> None:
    for i in range(3):
        webhook_services.create_endpoint(clinic=clinic_a, url=f"http://127.0.0.1:9/hook{i}", by=None)
    for i in range(6):
        patient = screened_patient(clinic=clinic_a, email=f"p{i}@example.org")
        issue_feed(clinic=clinic_a, patient=patient, label=f"portal {i}", by=None, now=NOW)
        pump_for_visit = implanted_pump(
            patient=screened_patient(clinic=clinic_a), implanted_at=IMPLANTED_AT + timedelta(days=20, hours=i)
        )
        book_appointment(pump_for_visit, NOW + timedelta(days=1), "Room 2", "", None, NOW)
        pump = implanted_pump(patient=patient, implanted_at=IMPLANTED_AT + timedelta(hours=i))
        CaregiverFactory(patient=pump.patient)
        fill(pump, at=VISIT_AT, withdrawn_ml="28.80", volume_added_ml="40")
        ClinicalEvent.objects.create(pump=pump, kind=EventKind.INFECTION, occurred_at=VISIT_AT)
        escalation_for(pump)
    notification_services.replan_pumps(list(Pump.objects.values_list("pk", flat=True)), NOW)
    viewer = staff((clinic_a, Role.VIEWER))
    for i in range(3):
        token_for(viewer, f"spare {i}")
    client = api_client(viewer)
    client.get(f"/api/v1/{endpoint}/")  # warm: the token's last use is written once a minute
    one = _queries(client, f"/api/v1/{endpoint}/?page_size=1")
    many = _queries(client, f"/api/v1/{endpoint}/?page_size=100")
    assert one == many, f"{endpoint}: {one} queries for 1 row, {many} for a page"


# ----------------------------------------------------------------------------- throttling


def test_requests_are_limited_per_token(clinic_a: Clinic, settings: Any) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "3/min"}}
    user = staff((clinic_a, Role.VIEWER))
    first, second = api_client(user), api_client(user)
    assert [first.get("/api/v1/pumps/").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert "Retry-After" in first.get("/api/v1/pumps/").headers
    assert second.get("/api/v1/pumps/").status_code == 200  # another token has its own budget


# ----------------------------------------------------------------------------- schema and docs


def test_the_schema_and_docs_are_served_without_a_cdn() -> None:
    client = APIClient()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/pumps/", "/api/v1/refills/", "/api/v1/programs/", "/api/v1/messages/", "/api/v1/escalations/"} <= set(paths)
    html = client.get("/api/docs/").content.decode()
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assert "/static/drf_spectacular_sidecar/" in html


# ----------------------------------------------------------------------------- token endpoint


def test_a_member_creates_a_token_with_their_password_and_uses_it(clinic_a: Clinic) -> None:
    user = staff((clinic_a, Role.NURSE))
    user.set_password("correct horse")
    user.save()
    client = APIClient()
    assert client.post("/api/v1/tokens/", {"name": "scheduler"}, format="json").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{user.username}:wrong".encode()).decode())
    assert client.post("/api/v1/tokens/", {"name": "scheduler"}, format="json").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{user.username}:correct horse".encode()).decode())
    created = client.post("/api/v1/tokens/", {"name": "scheduler"}, format="json")
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("pt_") and created.json()["prefix"] == key[:10]
    assert all(t["key"] is None for t in client.get("/api/v1/tokens/").json()["results"])

    with_token = APIClient()
    with_token.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert with_token.get("/api/v1/pumps/").status_code == 200
    # A token cannot mint more tokens (a leaked key must not outlive its revocation).
    assert with_token.post("/api/v1/tokens/", {"name": "copy"}, format="json").status_code == 403
    assert with_token.post(f"/api/v1/tokens/{created.json()['id']}/revoke/").json()["revoked_at"] is not None
    assert with_token.get("/api/v1/pumps/").status_code == 401


def test_another_users_tokens_are_not_found(clinic_a: Clinic) -> None:
    owner, other = staff((clinic_a, Role.NURSE)), staff((clinic_a, Role.NURSE))
    token_for(owner)
    token = ApiToken.objects.get(user=owner)
    client = api_client(other)
    assert token.pk not in {t["id"] for t in client.get("/api/v1/tokens/").json()["results"]}
    assert client.post(f"/api/v1/tokens/{token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


# ----------------------------------------------------------------------------- tokens in the admin


def test_staff_create_a_token_in_the_admin_and_see_its_key_once(clinic_a: Clinic) -> None:
    nurse, other = staff((clinic_a, Role.NURSE)), staff((clinic_a, Role.NURSE))
    client = client_for(nurse)
    response = client.post("/admin/api/apitoken/add/", {"name": "EHR bridge", "user": other.pk}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    key = shown[0].rsplit(": ", 1)[1]
    token = ApiToken.objects.get(name="EHR bridge")
    assert token.user == nurse  # only a superuser issues tokens for someone else
    assert token.key_digest == digest(key) and key not in str(ApiToken.objects.filter(pk=token.pk).values().get())
    page = client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    assert key not in page and token.prefix in page
    assert (
        client_for(other).get(f"/admin/api/apitoken/{token.pk}/change/").status_code == 302
    )  # "does not exist": back to the list

    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.objects.get(pk=token.pk).revoked_at == NOW
    with_key = APIClient()
    with_key.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert with_key.get("/api/v1/pumps/").status_code == 401


# ----------------------------------------------------------------------------- read-only tokens


def test_a_read_only_token_reads_but_never_writes(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    client = api_client(staff((clinic, Role.CLINICIAN)), read_only=True)
    assert client.get(f"/api/v1/pumps/{pump_a.pk}/").status_code == 200
    assert client.get(f"/fhir/Device/{pump_a.pk}").status_code == 200
    writes = [
        client.post("/api/v1/refills/", refill_body(pump_a), format="json"),
        client.patch(f"/api/v1/patients/{pump_a.patient_id}/", {"email": "x@example.org"}, format="json"),
        client.post(f"/api/v1/pumps/{pump_a.pk}/phase/", {"phase": "maintenance"}, format="json"),
        client.post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "x"}, format="json"),
        client.post("/api/v1/webhook-endpoints/", {"clinic": clinic.pk, "url": "https://ehr.example.org/in"}, format="json"),
    ]
    assert [w.status_code for w in writes] == [403] * len(writes)
    assert writes[0].json() == {"detail": "This API token is read-only."}
    pump_a.refresh_from_db()
    assert pump_a.refills.count() == 1 and pump_a.phase == "titration"
    assert Patient.objects.get(pk=pump_a.patient_id).email == ""


def test_a_read_only_token_is_issued_with_a_password(clinic_a: Clinic) -> None:
    user = staff((clinic_a, Role.NURSE))
    user.set_password("correct horse")
    user.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{user.username}:correct horse".encode()).decode())
    created = client.post("/api/v1/tokens/", {"name": "reporting", "read_only": True}, format="json")
    assert created.status_code == 201 and created.json()["read_only"] is True
    assert ApiToken.objects.get(pk=created.json()["id"]).read_only
