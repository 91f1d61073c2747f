"""Audit history (issue 6): who, when, what and why for every change to clinical, contact
and access records; visible per record in the admin, exportable per patient and range."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from admin_support import NOW, VISIT_AT, client_for, staff
from api_support import api_client
from django.core.management import CommandError, call_command
from factories import CaregiverFactory, ClinicFactory, screened_patient

from notifications import services as notification_services
from notifications.models import ContactBlock, Escalation, EscalationReason, EscalationStatus, Severity
from patients import audit
from patients.models import Patient, Role
from pumps import services
from pumps.appointments import book_appointment, cancel_appointment, close_past_visits
from pumps.models import Appointment, Program, Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _admin_patient_form(patient: Patient, **changes: Any) -> dict[str, Any]:
    """The patient change form as the admin posts it (no caregivers)."""
    data: dict[str, Any] = {
        "clinic": patient.clinic_id,
        "mrn": patient.mrn,
        "given_name": patient.given_name,
        "family_name": patient.family_name,
        "birth_date": patient.birth_date.isoformat(),
        "diagnosis": patient.diagnosis,
        "spasticity_origin": patient.spasticity_origin,
        "email": patient.email,
        "phone": str(patient.phone or ""),
        "language": patient.language,
        "time_zone": patient.time_zone,
        "contact_by_email": "on" if patient.contact_by_email else "",
        "contact_by_sms": "on" if patient.contact_by_sms else "",
        "caregivers-TOTAL_FORMS": "0",
        "caregivers-INITIAL_FORMS": "0",
        "caregivers-MIN_NUM_FORMS": "0",
        "caregivers-MAX_NUM_FORMS": "1000",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


# ----------------------------------------------------------------------------- who, when, what, why


def test_an_admin_change_records_who_what_and_the_reason_typed_on_the_form(clinic_a: Any) -> None:
    patient = screened_patient(clinic=clinic_a, email="old@example.org")
    nurse = staff((clinic_a, Role.NURSE))
    response = client_for(nurse).post(
        f"/admin/patients/patient/{patient.pk}/change/",
        _admin_patient_form(
            patient, email="new@example.org", contact_by_sms="", change_reason="Patient phoned with a new address."
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    row = Patient.history.filter(id=patient.pk).latest("history_date", "history_id")
    assert row.history_type == "~"
    assert row.history_user_id == nurse.pk
    assert row.history_date == NOW
    assert row.history_change_reason == "Patient phoned with a new address."
    entry = audit.record_entries(patient, clinic_a.tz)[0]
    changes = {c.label: (c.before, c.after) for c in entry.changes}
    assert changes == {"Email": ("old@example.org", "new@example.org"), "Contact by sms": ("yes", "no")}
    assert entry.who == nurse.username


def test_the_reason_field_does_not_count_as_a_pump_detail_change(pump_a: Pump) -> None:
    """The pump page saves exactly the changed fields through a service that refuses others."""
    nurse = staff((pump_a.patient.clinic, Role.NURSE))
    page = client_for(nurse).get(f"/admin/pumps/pump/{pump_a.pk}/change/")
    assert "Reason for change" in page.content.decode()
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if k in form.fields and v is not None}
    data.update(
        {"udi": "(01)00643169001763", "change_reason": "UDI read from the implant card."}
        | {
            f"catheters-{k}": v
            for k, v in {"TOTAL_FORMS": 0, "INITIAL_FORMS": 0, "MIN_NUM_FORMS": 0, "MAX_NUM_FORMS": 1000}.items()
        }
    )
    data.pop("stable_dose_at", None)
    response = client_for(nurse).post(f"/admin/pumps/pump/{pump_a.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    row = Pump.history.filter(id=pump_a.pk).latest("history_date", "history_id")
    assert (row.udi, row.history_user_id, row.history_change_reason) == (
        "(01)00643169001763",
        nurse.pk,
        "UDI read from the implant card.",
    )


def test_an_api_dose_change_records_the_token_user_and_its_reason_and_warnings(pump_a: Pump) -> None:
    clinician = staff((pump_a.patient.clinic, Role.CLINICIAN))
    response = api_client(clinician).post(
        "/api/v1/programs/",
        {
            "pump": pump_a.pk,
            "effective_at": VISIT_AT.isoformat(),
            "dose_mcg_per_day": "300",  # +50 % in titration: over the 30 % limit
            "concentration_mcg_per_ml": "500",
            "acknowledged_warnings": ["increase_over_limit"],
            "reason": "Severe spasms; physician present.",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    row = Program.history.get(id=response.json()["id"])
    assert row.history_user_id == clinician.pk
    assert row.history_change_reason == "Severe spasms; physician present. · Acknowledged: increase_over_limit"


def test_an_api_patient_change_records_the_token_user(clinic_a: Any) -> None:
    patient = screened_patient(clinic=clinic_a)
    coordinator = staff((clinic_a, Role.COORDINATOR))
    response = api_client(coordinator).patch(f"/api/v1/patients/{patient.pk}/", {"email": "api@example.org"}, format="json")
    assert response.status_code == 200, response.json()
    row = Patient.history.filter(id=patient.pk).latest("history_date", "history_id")
    assert (row.email, row.history_user_id) == ("api@example.org", coordinator.pk)


def test_acknowledging_and_resolving_an_escalation_through_update_are_recorded(pump_a: Pump) -> None:
    esc, _ = notification_services.raise_escalation(
        clinic=pump_a.patient.clinic,
        pump=pump_a,
        reason=EscalationReason.OVERDUE,
        severity=Severity.WARNING,
        cycle="c1",
        detail="",
        now=NOW,
    )
    nurse = staff((pump_a.patient.clinic, Role.NURSE))
    notification_services.acknowledge_escalation(esc, by=nurse, now=NOW)
    notification_services.resolve_escalation(esc, by=nurse, now=NOW, resolution="Refill booked for Monday.")
    rows = list(Escalation.history.filter(id=esc.pk).order_by("history_date", "history_id"))
    assert [(r.history_type, r.status, r.history_user_id) for r in rows] == [
        ("+", EscalationStatus.OPEN, None),
        ("~", EscalationStatus.ACKNOWLEDGED, nurse.pk),
        ("~", EscalationStatus.RESOLVED, nurse.pk),
    ]
    assert rows[-1].history_change_reason == "Refill booked for Monday."


def test_cancelling_an_appointment_and_lifting_a_block_are_recorded(pump_a: Pump) -> None:
    coordinator = staff((pump_a.patient.clinic, Role.COORDINATOR))
    visit = book_appointment(pump_a, NOW + timedelta(days=1), location="", notes="", by=coordinator, now=NOW)
    cancel_appointment(visit, by=coordinator, now=NOW, reason="Patient in hospital.")
    last = Appointment.history.filter(id=visit.pk).latest("history_date", "history_id")
    assert (last.status, last.history_user_id, last.history_change_reason) == ("cancelled", None, "Patient in hospital.")

    notification_services.block_contact("sms", "+15555550100", reason="opted_out", method="sms_keyword", now=NOW)
    notification_services.lift_block("sms", "+15555550100", method="staff", now=NOW)
    block = ContactBlock.objects.get(address="+15555550100")
    assert [r.lifted_at for r in ContactBlock.history.filter(id=block.pk).order_by("history_id")] == [None, NOW]


def test_a_system_change_shows_as_system(pump_a: Pump) -> None:
    visit = book_appointment(pump_a, NOW + timedelta(hours=1), location="", notes="", by=None, now=NOW)
    close_past_visits([(visit.pk, False, None)], NOW + timedelta(days=1))
    entry = audit.record_entries(visit, pump_a.patient.clinic.tz)[0]
    assert (entry.who, entry.action, entry.reason) == ("system", "changed", "The visit's day ended.")
    assert ("Status", "Booked", "Missed") in {(c.label, c.before, c.after) for c in entry.changes}


# ----------------------------------------------------------------------------- the machine writes none


def test_machine_recomputes_and_the_planning_sweep_write_no_history(pump_a: Pump) -> None:
    """A planning sweep over a million pumps every 15 minutes must not add a row per pump."""
    notification_services.plan_all(NOW)  # the first sweep may raise what is due: a real event
    counts = {m: m.history.count() for m in (Pump, Program, Patient, Appointment, Escalation)}  # type: ignore[attr-defined]
    services.recompute_schedule(pump_a)
    services.recompute_clinic(pump_a.patient.clinic)
    services.recompute_patient(pump_a.patient)
    notification_services.plan_all(NOW)
    notification_services.plan_all(NOW)
    assert {m: m.history.count() for m in counts} == counts  # type: ignore[attr-defined]


def test_computed_pump_dates_are_not_in_the_pump_history(pump_a: Pump) -> None:
    fields = {f.name for f in Pump.history.model.tracked_fields}
    assert "refill_by" not in fields and "alarm_on" not in fields and "serial_number" in fields


# ----------------------------------------------------------------------------- the History page


def test_the_history_page_shows_the_diff_with_labels_and_the_reason(pump_a: Pump) -> None:
    clinician = staff((pump_a.patient.clinic, Role.CLINICIAN))
    services.set_phase(pump_a, "maintenance", now=NOW)
    viewer = staff((pump_a.patient.clinic, Role.VIEWER))
    page = client_for(viewer).get(f"/admin/pumps/pump/{pump_a.pk}/history/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Phase:</strong> Titration &rarr; Maintenance" in text
    assert "system" in text
    program = pump_a.programs.get()
    page = client_for(clinician).get(f"/admin/pumps/program/{program.pk}/history/")
    assert "Dose (mcg/day):</strong> <em>(blank)</em> &rarr; 200" in page.content.decode()


def test_another_clinics_history_answers_404(pump_a: Pump, pump_b: Pump) -> None:
    client = client_for(staff((pump_a.patient.clinic, Role.CLINICIAN)))
    assert client.get(f"/admin/pumps/pump/{pump_b.pk}/history/").status_code == 404
    assert client.get(f"/admin/patients/patient/{pump_b.patient_id}/history/").status_code == 404
    assert client.get(f"/admin/pumps/program/{pump_b.programs.get().pk}/history/").status_code == 404
    assert client.get(f"/admin/patients/patient/{pump_b.patient_id}/audit/?start=2027-01-01&end=2027-12-31").status_code == 404
    assert client.get(f"/admin/pumps/pump/{pump_a.pk}/history/").status_code == 200


def test_nothing_can_be_reverted_from_the_history(pump_a: Pump) -> None:
    clinician = staff((pump_a.patient.clinic, Role.CLINICIAN))
    patient = pump_a.patient
    first = Patient.history.filter(id=patient.pk).earliest("history_id")
    Patient.objects.filter(pk=patient.pk).update(given_name="Changed")
    client = client_for(clinician)
    page = client.get(f"/admin/patients/patient/{patient.pk}/history/")
    text = page.content.decode()
    assert "Revert" not in text and f"/history/{first.history_id}/" not in text
    client.post(f"/admin/patients/patient/{patient.pk}/history/{first.history_id}/", _admin_patient_form(patient))
    patient.refresh_from_db()
    assert patient.given_name == "Changed"


# ----------------------------------------------------------------------------- the export


def test_the_export_covers_the_range_inclusively_in_the_clinics_zone() -> None:
    clinic = ClinicFactory(time_zone="America/New_York")
    with time_machine.travel(datetime(2027, 3, 1, 4, 59, tzinfo=UTC), tick=False):  # 2027-02-28 23:59 New York
        patient = screened_patient(clinic=clinic, email="a@example.org")
    with time_machine.travel(datetime(2027, 3, 1, 5, 0, tzinfo=UTC), tick=False):  # 2027-03-01 00:00 New York
        CaregiverFactory(patient=patient, name="Ann Carer")
    with time_machine.travel(datetime(2027, 3, 3, 4, 59, tzinfo=UTC), tick=False):  # 2027-03-02 23:59
        patient.email = "b@example.org"
        patient.save()
    with time_machine.travel(datetime(2027, 3, 3, 5, 0, tzinfo=UTC), tick=False):  # 2027-03-03 00:00
        patient.email = "c@example.org"
        patient.save()
    rows = _rows(audit.to_csv(audit.patient_entries(patient, *audit.parse_range("2027-03-01", "2027-03-02"))))
    assert {(r["record_type"], r["action"]) for r in rows} == {("Caregiver", "created"), ("Patient", "changed")}
    email = next(r for r in rows if r["field"] == "Email")
    assert (email["before"], email["after"], email["who"]) == ("a@example.org", "b@example.org", "system")
    assert email["when_utc"] == "2027-03-03T04:59:00+00:00" and email["when_local"] == "2027-03-02T23:59:00-05:00"
    assert list(rows[0]) == audit.CSV_COLUMNS


def test_exported_cells_cannot_run_as_spreadsheet_formulas() -> None:
    with time_machine.travel(datetime(2027, 3, 1, 12, tzinfo=UTC), tick=False):
        patient = screened_patient(email="a@example.org")
        patient.given_name = '=HYPERLINK("http://evil.example","Ann")'
        patient._change_reason = "+1 asked by phone"  # simple-history's reason attribute
        patient.save()
    rows = _rows(audit.to_csv(audit.patient_entries(patient, *audit.parse_range("2027-03-01", "2027-03-01"))))
    given = next(r for r in rows if r["action"] == "changed" and r["after"].startswith("'="))
    assert given["after"] == "'" + patient.given_name
    assert given["reason"] == "'+1 asked by phone"


def test_the_export_shows_dose_before_and_after_with_acknowledged_warnings(pump_a: Pump) -> None:
    clinician = staff((pump_a.patient.clinic, Role.CLINICIAN))
    program = services.change_program(
        pump_a,
        services.ProgramInput(effective_at=VISIT_AT, dose_mcg_per_day=Decimal("300"), concentration_mcg_per_ml=Decimal("500")),
        by=clinician,
        now=NOW,
        acknowledged=["increase_over_limit"],
        reason="Severe spasms.",
    )
    client = client_for(staff((pump_a.patient.clinic, Role.VIEWER)))
    response = client.get(f"/admin/patients/patient/{pump_a.patient_id}/audit/?start=2027-02-01&end=2027-02-01&fmt=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = [r for r in _rows(response.content.decode()) if r["record_type"] == "Program" and r["record_id"] == str(program.pk)]
    by_field = {r["field"]: r for r in rows}
    assert (by_field["Dose (mcg/day)"]["before"], by_field["Dose (mcg/day)"]["after"]) == ("200", "300")
    assert by_field["Mode"]["before"] == by_field["Mode"]["after"] == "Simple continuous"
    assert by_field["Acknowledged warnings"]["after"] == "increase_over_limit"
    assert {r["reason"] for r in rows} == {"Severe spasms. · Acknowledged: increase_over_limit"}
    assert {r["who"] for r in rows} == {clinician.username}


def test_the_patient_page_links_to_the_export(pump_a: Pump) -> None:
    client = client_for(staff((pump_a.patient.clinic, Role.VIEWER)))
    page = client.get(f"/admin/patients/patient/{pump_a.patient_id}/change/")
    assert f"/admin/patients/patient/{pump_a.patient_id}/audit/" in page.content.decode()
    form = client.get(f"/admin/patients/patient/{pump_a.patient_id}/audit/")
    assert form.status_code == 200 and "From" in form.content.decode()


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("start=2027-02-30&end=2027-03-01", "start", "YYYY-MM-DD"),
        ("start=2027-03-01&end=", "end", "YYYY-MM-DD"),
        ("start=2027-03-02&end=2027-03-01", "end", "on or after"),
    ],
)
def test_bad_export_dates_name_the_field(pump_a: Pump, query: str, field: str, message: str) -> None:
    client = client_for(staff((pump_a.patient.clinic, Role.VIEWER)))
    response = client.get(f"/admin/patients/patient/{pump_a.patient_id}/audit/?{query}")
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]


def test_the_export_command_writes_csv_and_json(pump_a: Pump) -> None:
    out = io.StringIO()
    call_command("export_audit", "--patient", str(pump_a.patient_id), "--from", "2027-02-01", "--to", "2027-02-01", stdout=out)
    rows = _rows(out.getvalue())
    assert {r["record_type"] for r in rows} >= {"Patient", "Pump", "Program", "Refill", "Screening trial"}
    out = io.StringIO()
    call_command(
        "export_audit",
        "--patient",
        str(pump_a.patient_id),
        "--from",
        "2027-02-01",
        "--to",
        "2027-02-01",
        "--format",
        "json",
        stdout=out,
    )
    assert {e["record_type"] for e in json.loads(out.getvalue())} == {r["record_type"] for r in rows}
    with pytest.raises(CommandError, match="--from"):
        call_command("export_audit", "--patient", str(pump_a.patient_id), "--from", "yesterday", "--to", "2027-02-01")


def _every_kind(pump: Pump) -> dict[type[Any], Any]:
    """One record of each tracked kind, made through its service by a clinician."""
    from api import services as api_services
    from integrations import services as feed_services
    from pumps.models import EventKind
    from webhooks import services as webhook_services
    from workspace.services import log_outreach

    clinic, patient = pump.patient.clinic, pump.patient
    user = staff((clinic, Role.CLINICIAN))
    esc, _ = notification_services.raise_escalation(
        clinic=clinic, pump=pump, reason=EscalationReason.OVERDUE, severity=Severity.WARNING, cycle="k", detail="", now=NOW
    )
    block = notification_services.block_contact("email", "gone@example.org", reason="bounced", method="provider", now=NOW)
    return {
        "clinic": clinic,
        "membership": user.memberships.get(),
        "patient": patient,
        "caregiver": CaregiverFactory(patient=patient),
        "pump": pump,
        "catheter": pump.catheters.create(model="8709SC", tip_level="T10"),
        "screening trial": patient.screening_trials.get(),
        "program": pump.programs.get(),
        "refill": pump.refills.get(),
        "clinical event": services.record_event(pump=pump, kind=EventKind.INFECTION, occurred_at=NOW, now=NOW, by=user),
        "appointment": book_appointment(pump, NOW + timedelta(days=1), location="", notes="", by=user, now=NOW),
        "escalation": esc,
        "contact block": block,
        "outreach attempt": log_outreach(pump, at=NOW, channel="phone", outcome="reached", by=user, now=NOW),
        "API token": api_services.issue_token(user=user, name="EHR", by=user)[0],
        "calendar feed": feed_services.issue_feed(clinic=clinic, label="Nurses", by=user, now=NOW),
        "webhook endpoint": webhook_services.create_endpoint(clinic=clinic, url="https://ehr.example.org/hook", by=user),
    }


def test_every_tracked_kind_records_its_creation(pump_a: Pump) -> None:
    for kind, obj in _every_kind(pump_a).items():
        history = type(obj).history.filter(id=obj.pk)
        assert history.filter(history_type="+").exists(), kind
        assert type(obj)._meta.verbose_name == kind


def test_secrets_and_token_digests_stay_out_of_the_history(pump_a: Pump) -> None:
    from api.models import ApiToken
    from webhooks.models import WebhookEndpoint

    kinds = _every_kind(pump_a)
    assert not hasattr(WebhookEndpoint.history.get(id=kinds["webhook endpoint"].pk), "secret")
    assert not hasattr(ApiToken.history.get(id=kinds["API token"].pk), "key_digest")


def test_revoking_a_token_in_the_admin_is_recorded_with_who(pump_a: Pump) -> None:
    from api.models import ApiToken

    token = _every_kind(pump_a)["API token"]
    response = client_for(token.user).post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    row = ApiToken.history.filter(id=token.pk).latest("history_id")
    assert (row.revoked_at, row.history_user_id) == (NOW, token.user.pk)


def test_the_patient_history_page_shows_caregiver_changes(clinic_a: Any) -> None:
    patient = screened_patient(clinic=clinic_a)
    carer = CaregiverFactory(patient=patient, name="Old Name")
    carer.name = "New Name"
    carer.save()
    page = client_for(staff((clinic_a, Role.VIEWER))).get(f"/admin/patients/patient/{patient.pk}/history/")
    assert "Name:</strong> Old Name &rarr; New Name" in page.content.decode()
