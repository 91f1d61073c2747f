"""Guards from the second read of the FHIR face and the calendar feeds (issue 4).

What the review checked and found holding, so that a later change cannot quietly undo it:
tokens that no longer work answer a FHIR 401, a member of two clinics reads both and a
member of one only that one (token or session), MRNs are per clinic, a replaced pump's
resources follow the new pump, the refill-by day spans a DST change in the clinic's zone,
and a feed's URL, revocation and conditional GET, and its RFC 5545 shape (folding in
octets, CRLF, DTSTAMP in UTC, exclusive all-day DTEND, escaped text) hold.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import icalendar
import pytest
import time_machine
from admin_support import NOW, VISIT_AT, client_for, staff
from api_support import api_client, token_for
from django.test import Client
from factories import ClinicFactory, implanted_pump, screened_patient
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from rest_framework.test import APIClient

from api.models import ApiToken
from integrations import services as feed_services
from integrations.models import CalendarFeed
from patients.models import Clinic, Language, Patient
from pumps import services
from pumps.models import Program, Pump, PumpStatus

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json; charset=utf-8"


# ----------------------------------------------------------------------------- FHIR helpers


def _bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _get(client: Any, url: str, status: int = 200) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == FHIR_JSON
    body: dict[str, Any] = response.json()
    if status != 200:
        OperationOutcome.model_validate(body)
    return body


def _ids(bundle: dict[str, Any]) -> list[str]:
    Bundle.model_validate(bundle)
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


# ----------------------------------------------------------------------------- FHIR: who may read


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("how", ["revoked", "expired", "user deactivated"])
def test_a_token_that_no_longer_works_answers_a_fhir_401(clinic_a: Clinic, pump_a: Pump, how: str) -> None:
    user = staff((clinic_a, "nurse"))
    key = token_for(user)
    client = _bearer(key)
    _get(client, f"/fhir/Device/{pump_a.pk}")  # it works first

    token = ApiToken.objects.get(user=user)
    if how == "revoked":
        token.revoked_at = NOW
        token.save()
    elif how == "expired":
        token.expires_at = NOW - timedelta(seconds=1)
        token.save()
    else:
        user.is_active = False
        user.save()

    for url in (f"/fhir/Device/{pump_a.pk}", f"/fhir/Device?patient={pump_a.patient_id}"):
        body = _get(client, url, status=401)
        assert body["issue"][0]["code"] == "login"
        assert str(pump_a.pk) not in body["issue"][0]["diagnostics"]


@pytest.mark.usefixtures("frozen_clock")
def test_a_member_of_two_clinics_reads_both_and_a_member_of_one_only_that_one(
    clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump, pump_b: Pump
) -> None:
    both = api_client(staff((clinic_a, "nurse"), (clinic_b, "viewer")))
    only_b_by_session = client_for(staff((clinic_b, "viewer")))

    assert _get(both, f"/fhir/Device/{pump_a.pk}")["id"] == str(pump_a.pk)
    assert _get(both, f"/fhir/Device/{pump_b.pk}")["id"] == str(pump_b.pk)
    assert _get(only_b_by_session, f"/fhir/Device/{pump_b.pk}")["id"] == str(pump_b.pk)
    _get(only_b_by_session, f"/fhir/Device/{pump_a.pk}", status=404)
    _get(only_b_by_session, f"/fhir/Flag/withdrawal-{pump_a.patient_id}", status=404)
    assert _ids(_get(only_b_by_session, f"/fhir/Appointment?patient={pump_a.patient_id}")) == []


@pytest.mark.usefixtures("frozen_clock")
def test_a_member_who_loses_every_role_is_refused(clinic_a: Clinic, pump_a: Pump) -> None:
    user = staff((clinic_a, "nurse"))
    client = api_client(user)
    _get(client, f"/fhir/Patient/{pump_a.patient_id}")

    user.memberships.all().delete()

    body = _get(client, f"/fhir/Patient/{pump_a.patient_id}", status=403)
    assert body["issue"][0]["code"] == "forbidden"


@pytest.mark.usefixtures("frozen_clock")
def test_the_same_mrn_in_two_clinics_finds_only_the_readers_patient(clinic_a: Clinic, clinic_b: Clinic) -> None:
    mine = screened_patient(clinic=clinic_a, mrn="MRN-1")
    theirs = screened_patient(clinic=clinic_b, mrn="MRN-1")
    client = api_client(staff((clinic_a, "nurse")))
    theirs_system = f"http://127.0.0.1:8000/fhir/sid/clinic-{clinic_b.pk}-mrn"

    assert _ids(_get(client, "/fhir/Patient?identifier=MRN-1")) == [str(mine.pk)]
    assert _ids(_get(client, f"/fhir/Patient?identifier={theirs_system}|MRN-1")) == []
    assert _ids(_get(client, f"/fhir/Patient?_id={theirs.pk}")) == []


# ----------------------------------------------------------------------------- FHIR: what the resources say


@pytest.mark.usefixtures("frozen_clock")
def test_a_replaced_pump_leaves_the_order_and_refill_to_the_new_pump(clinic_a: Clinic, pump_a: Pump) -> None:
    patient = pump_a.patient
    services.end_pump(pump_a, status=PumpStatus.REPLACED, on=date(2027, 1, 20), reason="battery", now=NOW)
    new = implanted_pump(patient=patient, implanted_at=datetime(2027, 1, 20, 9, tzinfo=UTC))
    new_program = Program.objects.get(pump=new)
    client = api_client(staff((clinic_a, "nurse")))
    query = f"patient={patient.pk}"

    assert _ids(_get(client, f"/fhir/MedicationRequest?{query}")) == [str(new_program.pk)]
    assert _ids(_get(client, f"/fhir/Appointment?{query}")) == [f"pump-{new.pk}"]
    assert sorted(_ids(_get(client, f"/fhir/Device?{query}"))) == sorted([str(pump_a.pk), str(new.pk)])
    flag = _get(client, f"/fhir/Flag/withdrawal-{patient.pk}")
    assert (flag["status"], flag["period"]) == ("active", {"start": "2027-01-20T09:00:00+00:00"})
    _get(client, f"/fhir/Appointment/pump-{pump_a.pk}", status=404)


@pytest.mark.parametrize(
    ("zone", "implanted_at", "refill_by", "start", "end"),
    [
        # London springs forward at 01:00 on 28 March 2027: the refill-by day lasts 23 hours.
        (
            "Europe/London",
            datetime(2027, 2, 26, 9, tzinfo=UTC),
            date(2027, 3, 28),
            "2027-03-28T00:00:00+00:00",
            "2027-03-29T00:00:00+01:00",
        ),
        # Havana falls back from 01:00 to 00:00 on 7 November 2027: the day starts at the first midnight.
        (
            "America/Havana",
            datetime(2027, 10, 8, 14, tzinfo=UTC),
            date(2027, 11, 7),
            "2027-11-07T00:00:00-04:00",
            "2027-11-08T00:00:00-05:00",
        ),
    ],
)
def test_the_refill_by_day_spans_a_dst_change_in_the_clinics_zone(
    zone: str, implanted_at: datetime, refill_by: date, start: str, end: str
) -> None:
    clinic = ClinicFactory(time_zone=zone)
    pump = implanted_pump(
        patient=screened_patient(clinic=clinic, screened_at=implanted_at - timedelta(days=14)), implanted_at=implanted_at
    )
    assert pump.refill_by == refill_by

    with time_machine.travel(implanted_at + timedelta(days=1), tick=False):
        body = _get(api_client(staff((clinic, "nurse"))), f"/fhir/Appointment/pump-{pump.pk}")

    Appointment.model_validate(body)
    assert (body["start"], body["end"]) == (start, end)


# ----------------------------------------------------------------------------- feeds


def _issue(clinic: Clinic, patient: Patient | None = None) -> CalendarFeed:
    return feed_services.issue_feed(clinic=clinic, patient=patient, label="Refill nurses", by=None, now=NOW)


def _fetch(feed: CalendarFeed, *, at: datetime = NOW, method: str = "get", **headers: Any) -> Any:
    with time_machine.travel(at, tick=False):
        return getattr(Client(), method)(feed_services.feed_path(feed), **headers)


def test_a_revoked_feed_is_404_even_to_a_client_holding_its_etag(pump_a: Pump) -> None:
    feed = _issue(pump_a.patient.clinic)
    etag = _fetch(feed)["ETag"]

    feed_services.revoke_feed(feed, now=NOW)

    response = _fetch(feed, HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 404
    assert "ETag" not in response


def test_a_changed_feed_answers_200_to_the_old_etag(pump_a: Pump) -> None:
    feed = _issue(pump_a.patient.clinic)
    before = _fetch(feed, at=VISIT_AT - timedelta(hours=1))

    services.change_program(
        pump_a,
        services.ProgramInput(effective_at=VISIT_AT, dose_mcg_per_day=Decimal("250"), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=VISIT_AT,
    )
    after = _fetch(feed, HTTP_IF_NONE_MATCH=before["ETag"])

    assert after.status_code == 200
    assert after["ETag"] != before["ETag"]


def test_a_head_request_answers_the_headers_without_the_calendar(pump_a: Pump) -> None:
    response = _fetch(_issue(pump_a.patient.clinic), method="head")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/calendar; charset=utf-8"
    assert response.content == b""


def test_a_feed_stays_with_its_clinic_when_a_patient_moves(clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump) -> None:
    feed_a, feed_b = _issue(clinic_a), _issue(clinic_b)
    Patient.objects.filter(pk=pump_a.patient_id).update(clinic=clinic_b)

    assert not icalendar.Calendar.from_ical(_fetch(feed_a).content).events
    assert {str(e.uid).split("-pump-")[1].split("-")[0] for e in icalendar.Calendar.from_ical(_fetch(feed_b).content).events} == {
        str(pump_a.pk)
    }


def test_a_long_spanish_patient_feed_is_valid_rfc_5545(clinic_a: Clinic) -> None:
    clinic_a.name = "Clínica Neurológica, Hospital Señor; Unidad de Espasticidad"
    clinic_a.phone = "+34911234567"
    clinic_a.save()
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, language=Language.SPANISH))

    raw = _fetch(_issue(clinic_a, pump.patient)).content

    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    for line in raw.split(b"\r\n"):
        assert len(line) <= 75, line
        line.decode()  # no line is cut inside a UTF-8 sequence
    cal = icalendar.Calendar.from_ical(raw)
    assert cal.events
    for event in cal.events:
        assert event["DTSTAMP"].dt.tzinfo is not None and event["DTSTAMP"].to_ical().endswith(b"Z")
        assert event.end > event.start  # all-day DTEND is exclusive
    unfolded = raw.replace(b"\r\n ", b"").decode()
    assert "Clínica Neurológica\\, Hospital Señor\\; Unidad de Espasticidad" in unfolded


# ----------------------------------------------------------------------------- defects found and fixed


# D1
@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("value", ["MRN%00", "http://127.0.0.1:8000/fhir/sid/clinic-{clinic}-mrn|MRN%00"])
def test_a_nul_character_in_a_search_value_is_a_400_operation_outcome_not_a_500(clinic_a: Clinic, value: str) -> None:
    client = api_client(staff((clinic_a, "nurse")))
    client.raise_request_exception = False

    response = client.get("/fhir/Patient?identifier=" + value.format(clinic=clinic_a.pk))

    assert response.status_code == 400
    assert response["Content-Type"] == FHIR_JSON
    assert OperationOutcome.model_validate(response.json()).issue[0].code == "invalid"


# D2
def test_an_overdue_refill_appointment_says_it_is_overdue(clinic_a: Clinic, pump_a: Pump) -> None:
    # Refill by 2027-02-03 and none recorded; a week later:
    with time_machine.travel(datetime(2027, 2, 10, 12, tzinfo=UTC), tick=False):
        body = api_client(staff((clinic_a, "nurse"))).get(f"/fhir/Appointment/pump-{pump_a.pk}").json()

    # A past "proposed" appointment reads as a lapsed proposal; the feed stretches an overdue
    # refill to today and says OVERDUE. The FHIR face says nothing.
    assert "overdue" in body["description"].lower()


# D3
@pytest.mark.usefixtures("frozen_clock")
def test_a_periodic_bolus_order_states_its_basal_rate_and_its_boluses(clinic_a: Clinic, pump_a: Pump) -> None:
    program = services.change_program(
        pump_a,
        services.ProgramInput(
            effective_at=VISIT_AT,
            concentration_mcg_per_ml=Decimal("500"),
            mode="periodic_bolus",
            basal_mcg_per_day=Decimal("100"),
            bolus_mcg=Decimal("25"),
            boluses_per_day=4,
        ),
        by=None,
        now=VISIT_AT,
    )

    body = api_client(staff((clinic_a, "nurse"))).get(f"/fhir/MedicationRequest/{program.pk}").json()

    dosages = body["dosageInstruction"]
    ordered_rates = [
        dr["rateQuantity"]["value"]
        for d in dosages
        for dr in d.get("doseAndRate", [])
        if "rateQuantity" in dr and dr["type"]["coding"][0]["code"] == "ordered"
    ]
    # 200 ug/d is the daily total; the pump's ordered continuous rate is the 100 ug/d basal.
    assert ordered_rates == [100]
    text = " ".join(d["text"] for d in dosages)
    assert "100 mcg/day" in text and "25 mcg" in text  # the basal and the bolus, for people too


# D4
@pytest.mark.usefixtures("frozen_clock")
def test_a_device_that_claims_us_core_has_a_udi_device_identifier(clinic_a: Clinic, pump_a: Pump) -> None:
    services.update_pump_details(pump_a, {"udi": "+H123PUMP40001/$$3291231LOT7Y"})  # HIBCC, not read

    body = api_client(staff((clinic_a, "nurse"))).get(f"/fhir/Device/{pump_a.pk}").json()

    # US Core Implantable Device: udiCarrier 0..1, udiCarrier.deviceIdentifier 1..1. A label
    # whose device identifier is not read stays as an identifier, not a broken carrier.
    assert "udiCarrier" not in body
    assert body["identifier"] == [{"type": {"text": "UDI as entered"}, "value": "+H123PUMP40001/$$3291231LOT7Y"}]


# D5
@pytest.mark.usefixtures("frozen_clock")
def test_an_empty_searchset_has_no_empty_entry_array(clinic_a: Clinic) -> None:
    body = api_client(staff((clinic_a, "nurse"))).get("/fhir/Device?patient=999999").json()

    assert body["total"] == 0
    assert "entry" not in body  # FHIR JSON: arrays are never empty


# D6
@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("suffix", ["_format=json", "_format=application/fhir%2Bjson"])
def test_the_format_parameter_is_honoured_on_reads_and_searches(clinic_a: Clinic, pump_a: Pump, suffix: str) -> None:
    client = api_client(staff((clinic_a, "nurse")))

    assert client.get(f"/fhir/Device/{pump_a.pk}?{suffix}").status_code == 200
    assert client.get(f"/fhir/Device?patient={pump_a.patient_id}&{suffix}").status_code == 200


# D7
def test_a_feed_with_no_dates_is_still_a_valid_icalendar_object(clinic_a: Clinic, pump_a: Pump) -> None:
    feed = feed_services.issue_feed(clinic=clinic_a, patient=pump_a.patient, label="Ann", by=None, now=NOW)
    services.end_pump(pump_a, status=PumpStatus.EXPLANTED, on=NOW.date(), reason="infection", now=NOW)

    with time_machine.travel(NOW, tick=False):
        response = Client().get(feed_services.feed_path(feed))

    # RFC 5545 §3.6: icalbody = calprops component, component = 1*(...): at least one.
    assert icalendar.Calendar.from_ical(response.content).subcomponents


# D8
def test_the_calendar_name_escapes_commas_and_semicolons(clinic_a: Clinic, pump_a: Pump) -> None:
    clinic_a.name = "St Mary, Leeds; Neuro"
    clinic_a.save()
    feed = feed_services.issue_feed(clinic=clinic_a, label="x", by=None, now=NOW)

    with time_machine.travel(NOW, tick=False):
        raw = Client().get(feed_services.feed_path(feed)).content.decode()

    lines = raw.replace("\r\n ", "").split("\r\n")
    # RFC 7986 NAME is TEXT: "," and ";" are escaped, as DESCRIPTION's already are.
    assert [line for line in lines if line.startswith("NAME:")] == ["NAME:St Mary\\, Leeds\\; Neuro: ITB refills"]
