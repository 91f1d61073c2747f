"""Documents from the pump page: the printable refill worksheet and the patient emergency
card (PDF, read back with pypdf), each scoped to the user's clinics and for staff only."""

from __future__ import annotations

import io
from typing import Any

import pytest
from admin_support import VISIT_AT, client_for, staff
from django.urls import reverse
from factories import ClinicFactory, UserFactory, fill, implanted_pump, screened_patient
from pypdf import PdfReader

from patients.models import Language, Role
from pumps import documents
from pumps.models import Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

CLINIC_PHONE = "+442071234567"


@pytest.fixture
def clinic() -> Any:
    return ClinicFactory(name="Neuro Day Unit", phone=CLINIC_PHONE)


def _pump(clinic: Any, **patient: Any) -> Pump:
    pump = implanted_pump(patient=screened_patient(clinic=clinic, **patient))
    fill(pump, at=VISIT_AT, withdrawn_ml="25.00", volume_added_ml="40")
    pump.refresh_from_db()
    return pump


def _card(client: Any, pump: Pump) -> Any:
    return client.get(reverse("admin:pumps_pump_emergency_card", args=[pump.pk]))


def _text(response: Any) -> str:
    reader = PdfReader(io.BytesIO(response.content))
    return "\n".join(page.extract_text() for page in reader.pages)


def _flat(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- emergency card


def test_the_emergency_card_is_a_pdf_named_by_mrn(clinic: Any) -> None:
    pump = _pump(clinic, mrn="MRN-0042")
    response = _card(client_for(staff((clinic, Role.NURSE))), pump)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="emergency-card-MRN-0042-{pump.serial_number}.pdf"'
    assert "no-store" in response["Cache-Control"]
    assert response.content.startswith(b"%PDF-")


def test_the_card_is_card_sized_front_and_back(clinic: Any) -> None:
    reader = PdfReader(io.BytesIO(_card(client_for(staff((clinic, Role.NURSE))), _pump(clinic)).content))

    assert len(reader.pages) == 2
    for page in reader.pages:
        width_mm, height_mm = (float(v) * 25.4 / 72 for v in (page.mediabox.width, page.mediabox.height))
        assert (round(width_mm, 1), round(height_mm, 1)) == (85.6, 54.0)


def test_the_english_card_names_pump_drug_dose_clinic_and_the_signs(clinic: Any) -> None:
    pump = _pump(clinic)
    text = _flat(_text(_card(client_for(staff((clinic, Role.NURSE))), pump)))

    assert pump.serial_number in text
    assert "SynchroMed II 8637-40" in text
    assert "baclofen intrathecal, 500 mcg/mL" in text
    assert "200 mcg/day" in text
    assert CLINIC_PHONE in text and "Neuro Day Unit" in text
    assert "DO NOT DISCONTINUE ABRUPTLY" in text
    # Withdrawal (clinical.md §6.1 #75-76, #81) and overdose (§6.2 #83, #86).
    assert "return of baseline spasticity, pruritus (itching), hypotension, paresthesias" in text
    assert "high fever, altered mental status, exaggerated rebound spasticity, and muscle rigidity" in text
    assert "go to a hospital IMMEDIATELY" in text
    assert "Drowsiness, lightheadedness, dizziness, somnolence" in text and "possible emptying of the pump" in text
    # SynchroMed II: the infusion stops during an MRI; checked after (§7.4 #91-93).
    assert "checked after the scan" in text and "3 T" in text


def test_a_spanish_patient_gets_the_card_in_spanish_with_accents(clinic: Any) -> None:
    pump = _pump(clinic, language=Language.SPANISH)
    text = _flat(_text(_card(client_for(staff((clinic, Role.NURSE))), pump)))

    assert "INFORMACIÓN MÉDICA DE URGENCIA" in text
    assert pump.serial_number in text and "200 mcg/día" in text and CLINIC_PHONE in text
    assert "baclofeno intratecal, 500 mcg/mL" in text
    assert "vuelve la espasticidad habitual, picor (prurito), tensión baja (hipotensión), hormigueo (parestesias)" in text
    assert "fiebre alta, alteración del estado mental" in text
    assert "Somnolencia, aturdimiento, mareo" in text and "posible vaciado de la bomba" in text
    assert "revisar la bomba después" in text
    assert "withdrawal" not in text.lower() and "Early signs" not in text


def test_a_prometra_card_says_empty_the_pump_before_an_mri(clinic: Any) -> None:
    pump = implanted_pump(patient=screened_patient(clinic=clinic), model_number="16827", fill_ml="20")
    text = _flat(_text(_card(client_for(staff((clinic, Role.NURSE))), pump)))

    assert "EMPTIED BEFORE any MRI" in text


def test_long_names_still_fit_on_two_card_pages(clinic: Any) -> None:
    pump = _pump(clinic, given_name="María de los Ángeles", family_name="Fernández-Villaverde de la Concepción", language="es")
    response = _card(client_for(staff((clinic, Role.NURSE))), pump)

    assert len(PdfReader(io.BytesIO(response.content)).pages) == 2
    assert "María de los Ángeles Fernández-Villaverde de la Concepción" in _flat(_text(response))


# ----------------------------------------------------------------------------- worksheet


def test_the_worksheet_shows_the_visit_facts_and_blank_fields(clinic: Any) -> None:
    pump = _pump(clinic, mrn="MRN-0042")
    page = client_for(staff((clinic, Role.NURSE))).get(reverse("admin:pumps_pump_worksheet", args=[pump.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    for fact in (
        pump.patient.full_name,
        "MRN-0042",
        "SynchroMed II 8637-40",
        pump.serial_number,
        "200 mcg/day",
        "500 mcg/mL",
        "Simple continuous",
        "2.00 mL",  # alarm volume
        "2027-05-07",  # alarm date
        "2027-03-03",  # refill by
    ):
        assert fact in html, fact
    # Expected residual now: 3 hours after refilling to 40 mL at 0.4 mL/day (rounded down).
    assert "<strong>39.95 mL</strong>" in html
    for blank in ("Volume withdrawn (mL)", "Volume added (mL)", "Drug product and lot", "Expiry date", "Date and time of refill"):
        assert f"<th>{blank}</th><td></td>" in html
    assert "signature" in html and "@media print" in html


def test_the_worksheet_names_the_booked_visit(clinic: Any) -> None:
    from datetime import timedelta

    from pumps.models import Appointment

    pump = _pump(clinic)
    Appointment.objects.create(
        pump=pump, starts_at=VISIT_AT + timedelta(days=20), location="Room 3", created_at=VISIT_AT, updated_at=VISIT_AT
    )
    html = client_for(staff((clinic, Role.NURSE))).get(reverse("admin:pumps_pump_worksheet", args=[pump.pk])).content.decode()

    assert "Booked visit: 2027-02-21 09:00, Room 3" in html


def test_the_pump_page_links_both_documents(clinic: Any) -> None:
    pump = _pump(clinic)
    html = client_for(staff((clinic, Role.NURSE))).get(reverse("admin:pumps_pump_change", args=[pump.pk])).content.decode()

    assert reverse("admin:pumps_pump_worksheet", args=[pump.pk]) in html
    assert reverse("admin:pumps_pump_emergency_card", args=[pump.pk]) in html


# ----------------------------------------------------------------------------- scoping


@pytest.mark.parametrize("name", ["admin:pumps_pump_worksheet", "admin:pumps_pump_emergency_card"])
def test_another_clinics_pump_is_not_found(clinic: Any, name: str) -> None:
    other = _pump(ClinicFactory())
    response = client_for(staff((clinic, Role.NURSE))).get(reverse(name, args=[other.pk]))

    assert response.status_code == 404
    assert other.serial_number.encode() not in response.content


@pytest.mark.parametrize("name", ["admin:pumps_pump_worksheet", "admin:pumps_pump_emergency_card"])
def test_a_viewer_of_the_clinic_may_print(clinic: Any, name: str) -> None:
    pump = _pump(clinic)
    assert client_for(staff((clinic, Role.VIEWER))).get(reverse(name, args=[pump.pk])).status_code == 200


@pytest.mark.parametrize("name", ["admin:pumps_pump_worksheet", "admin:pumps_pump_emergency_card"])
def test_documents_are_for_staff_members_only(clinic: Any, name: str) -> None:
    pump = _pump(clinic)
    url = reverse(name, args=[pump.pk])

    anonymous = client_for(UserFactory(is_staff=False)).get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]  # the admin's login
    no_membership = client_for(UserFactory(is_staff=True)).get(url)
    assert no_membership.status_code in (403, 404) and pump.serial_number.encode() not in no_membership.content


def test_the_card_filename_is_ascii_safe() -> None:
    class _P:
        mrn = 'A/1 "x"'

    class _Pump:
        patient = _P()
        serial_number = "SN 1"

    assert documents.card_filename(_Pump()) == "emergency-card-A-1--x--SN-1.pdf"  # type: ignore[arg-type]
