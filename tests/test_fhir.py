"""The read-only FHIR R4 face (/fhir/): every resource validated with fhir.resources' R4B
models, exact clinical values, clinic scoping on every endpoint, and a constant query count.

Requests go through the real stack with real tokens (tests/api_support.py). The views read
the clock, so the visit time is frozen (`frozen_clock`: 2027-02-01 12:00 UTC, 28 days after
the factories' implant of a 40 mL pump filled at 500 mcg/mL, 200 mcg/day).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from admin_support import NOW, VISIT_AT, client_for, staff
from api_support import api_client
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.generators import SchemaGenerator
from factories import IMPLANTED_AT, CaregiverFactory, UserFactory, fill, implanted_pump, screened_patient
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient
from rest_framework.test import APIClient

from integrations.fhir.resources import instant, local_midnight, parse_udi
from pumps import services
from pumps.models import Program, Pump, PumpStatus

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

SITE_URL = "https://pumps.example.org"
BASE = f"{SITE_URL}/fhir"
FHIR_JSON = "application/fhir+json; charset=utf-8"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
GS1_UDI = "(01)00643169001763(17)291231(10)LOT42A(21)SN0000001"
MODELS = {
    "Patient": FhirPatient,
    "Device": Device,
    "MedicationRequest": MedicationRequest,
    "Appointment": Appointment,
    "Flag": Flag,
}


@pytest.fixture(autouse=True)
def site_url(settings: Any) -> None:
    settings.SITE_URL = SITE_URL + "/"  # a trailing slash in the setting must not double up


@pytest.fixture
def client_a(clinic_a: Any) -> APIClient:
    return api_client(staff((clinic_a, "nurse")))


@pytest.fixture
def client_b(clinic_b: Any) -> APIClient:
    return api_client(staff((clinic_b, "nurse")))


def fhir_get(client: Any, url: str, status: int = 200, **extra: Any) -> dict[str, Any]:
    response = client.get(url, **extra)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == FHIR_JSON
    body: dict[str, Any] = response.json()
    if status != 200:
        OperationOutcome.model_validate(body)
        assert body["resourceType"] == "OperationOutcome"
    return body


def read(client: Any, resource_type: str, resource_id: Any) -> dict[str, Any]:
    """Read and validate with the resource type's R4B model."""
    body = fhir_get(client, f"/fhir/{resource_type}/{resource_id}")
    assert body["resourceType"] == resource_type
    assert body["id"] == str(resource_id)
    MODELS[resource_type].model_validate(body)
    return body


def search(client: Any, resource_type: str, query: str) -> dict[str, Any]:
    body = fhir_get(client, f"/fhir/{resource_type}?{query}")
    Bundle.model_validate(body)
    assert body["type"] == "searchset"
    assert body["total"] == len(body.get("entry", []))
    for entry in body.get("entry", []):
        MODELS[resource_type].model_validate(entry["resource"])
        assert entry["fullUrl"] == f"{BASE}/{resource_type}/{entry['resource']['id']}"
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def resource_ids(pump: Pump) -> dict[str, str]:
    """The id of each of the pump's resources (documented in integrations/fhir/resources.py)."""
    program = Program.objects.filter(pump=pump).latest("effective_at")
    return {
        "Patient": str(pump.patient_id),
        "Device": str(pump.pk),
        "MedicationRequest": str(program.pk),
        "Appointment": f"pump-{pump.pk}",
        "Flag": f"withdrawal-{pump.patient_id}",
    }


# ----------------------------------------------------------------------------- resources


def test_patient_carries_the_mrn_name_birth_date_and_caregivers(client_a: APIClient, pump_a: Pump) -> None:
    patient = pump_a.patient
    patient.phone, patient.email = "+442071234567", "ann@example.org"
    patient.save()
    CaregiverFactory(patient=patient, name="Bo Carer", relationship="son", phone="+442071234568")

    body = read(client_a, "Patient", patient.pk)

    assert body["identifier"][0]["value"] == patient.mrn
    assert body["identifier"][0]["system"] == f"{BASE}/sid/clinic-{patient.clinic_id}-mrn"
    assert body["identifier"][0]["type"]["coding"][0]["code"] == "MR"
    assert body["name"] == [{"use": "official", "family": patient.family_name, "given": ["Alex"]}]
    assert body["birthDate"] == "1980-05-17"
    assert {"system": "phone", "value": "+442071234567", "use": "mobile"} in body["telecom"]
    assert body["communication"][0]["language"]["coding"][0]["code"] == "en"
    assert body["contact"] == [
        {
            "name": {"text": "Bo Carer"},
            "relationship": [{"text": "son"}],
            "telecom": [{"system": "phone", "value": "+442071234568", "use": "mobile"}],
        }
    ]


def test_device_is_shaped_like_a_us_core_implantable_device(client_a: APIClient, pump_a: Pump) -> None:
    services.update_pump_details(pump_a, {"udi": GS1_UDI})

    body = read(client_a, "Device", pump_a.pk)

    assert body["meta"]["profile"] == ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-implantable-device"]
    assert body["type"]["coding"] == [{"system": SNOMED, "code": "430033006", "display": "Infusion pump"}]
    assert body["patient"] == {"reference": f"Patient/{pump_a.patient_id}"}
    assert body["serialNumber"] == pump_a.serial_number
    assert body["status"] == "active"
    assert body["manufacturer"] == "Medtronic"
    assert body["modelNumber"] == "8637-40"
    assert {"name": "SynchroMed II", "type": "model-name"} in body["deviceName"]
    assert body["udiCarrier"] == [
        {
            "deviceIdentifier": "00643169001763",
            "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di",
            "carrierHRF": GS1_UDI,
            "entryType": "manual",
        }
    ]
    assert body["lotNumber"] == "LOT42A"
    assert body["expirationDate"] == "2029-12-31"


def test_device_without_a_udi_has_no_udi_carrier(client_a: APIClient, pump_a: Pump) -> None:
    assert "udiCarrier" not in read(client_a, "Device", pump_a.pk)


@pytest.mark.parametrize(
    ("text", "device_identifier", "lot", "expires"),
    [
        (GS1_UDI, "00643169001763", "LOT42A", date(2029, 12, 31)),
        ("(01)00643169001763(17)290200", "00643169001763", "", date(2029, 2, 28)),  # day 00: the month's last
        ("00643169001763", "00643169001763", "", None),  # the device identifier alone
        ("0100643169001763172912311012", "00643169001763", "", None),  # GS1 without parentheses
        ("+H123PUMP40001/$$3291231LOT7Y", "", "", None),  # HIBCC: kept as text, not guessed
    ],
)
def test_udi_parsing(text: str, device_identifier: str, lot: str, expires: date | None) -> None:
    udi = parse_udi(text)
    assert (udi.carrier_hrf, udi.device_identifier, udi.lot_number, udi.expiration_date) == (
        text,
        device_identifier,
        lot,
        expires,
    )


def test_medication_request_is_the_current_programming(client_a: APIClient, pump_a: Pump) -> None:
    program = Program.objects.get(pump=pump_a)

    body = read(client_a, "MedicationRequest", program.pk)

    assert (body["status"], body["intent"]) == ("active", "order")
    assert body["subject"] == {"reference": f"Patient/{pump_a.patient_id}"}
    assert body["authoredOn"] == "2027-01-04T09:00:00+00:00"  # the program's effective_at
    dosage = body["dosageInstruction"][0]
    assert dosage["route"]["coding"] == [{"system": SNOMED, "code": "72607000", "display": "Intrathecal route"}]
    assert dosage["doseAndRate"][0]["rateQuantity"] == {"value": 200, "unit": "ug/d", "system": UCUM, "code": "ug/d"}
    assert dosage["text"].startswith("200 mcg/day intrathecal baclofen 500 mcg/mL (0.4 mL/day)")
    # Baclofen (RxNorm 1292) at 500 mcg/mL: the contained Medication's ingredient strength.
    assert body["medicationReference"]["reference"] == "#baclofen"
    medication = body["contained"][0]
    assert medication["code"]["coding"] == [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1292", "display": "baclofen"}
    ]
    strength = medication["ingredient"][0]["strength"]
    assert strength["numerator"] == {"value": 500, "unit": "ug", "system": UCUM, "code": "ug"}
    assert strength["denominator"] == {"value": 1, "unit": "mL", "system": UCUM, "code": "mL"}
    assert body["supportingInformation"] == [{"reference": f"Device/{pump_a.pk}"}]


def test_a_dose_change_is_a_new_medication_request_and_the_old_one_is_gone(client_a: APIClient, pump_a: Pump) -> None:
    old = Program.objects.get(pump=pump_a)
    new = services.change_program(
        pump_a,
        services.ProgramInput(effective_at=VISIT_AT, dose_mcg_per_day=Decimal("240"), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=VISIT_AT,
    )

    assert read(client_a, "MedicationRequest", new.pk)["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"]["value"] == 240
    fhir_get(client_a, f"/fhir/MedicationRequest/{old.pk}", status=404)
    assert ids(search(client_a, "MedicationRequest", f"patient={pump_a.patient_id}")) == [str(new.pk)]


def test_a_fractional_dose_keeps_its_digits(client_a: APIClient, clinic_a: Any) -> None:
    pump = implanted_pump(
        patient=screened_patient(clinic=clinic_a), dose_mcg_per_day="187.5", acknowledged=["initial_dose_unusual"], reason="test"
    )
    program = Program.objects.get(pump=pump)
    rate = read(client_a, "MedicationRequest", program.pk)["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"]
    assert rate["value"] == 187.5


def test_appointment_spans_the_refill_by_day_in_the_clinic_zone(client_a: APIClient, clinic_a: Any) -> None:
    # 09:00 UTC on 4 January is 22:00 on 3 January in Pago Pago (UTC-11): the titration
    # interval (30 days) runs from the clinic-local date, so refill-by is 2 February there.
    clinic_a.time_zone = "Pacific/Pago_Pago"
    clinic_a.save()
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a))
    assert pump.refill_by == date(2027, 2, 2)

    body = read(client_a, "Appointment", f"pump-{pump.pk}")

    assert body["status"] == "proposed"
    assert body["start"] == "2027-02-02T00:00:00-11:00"
    assert body["end"] == "2027-02-03T00:00:00-11:00"
    assert body["serviceType"] == [{"text": "ITB pump refill"}]
    assert body["description"].startswith("ITB pump refill due by 2027-02-02")
    assert body["participant"] == [
        {"actor": {"reference": f"Patient/{pump.patient_id}"}, "required": "required", "status": "needs-action"}
    ]


def test_appointment_in_a_utc_clinic(client_a: APIClient, pump_a: Pump) -> None:
    body = read(client_a, "Appointment", f"pump-{pump_a.pk}")
    assert (body["start"], body["end"]) == ("2027-02-03T00:00:00+00:00", "2027-02-04T00:00:00+00:00")


def test_a_refill_moves_the_appointment_and_keeps_its_id(client_a: APIClient, pump_a: Pump) -> None:
    fill(pump_a, at=VISIT_AT, volume_added_ml="40", withdrawn_ml="28.8")  # 40 - 28 days x 0.4 mL

    body = read(client_a, "Appointment", f"pump-{pump_a.pk}")

    # The next titration visit, 30 days after the refill on 1 February.
    assert (body["start"], body["end"]) == ("2027-03-03T00:00:00+00:00", "2027-03-04T00:00:00+00:00")


@pytest.mark.parametrize(
    ("day", "zone", "expected"),
    [
        (date(2027, 7, 1), "Europe/London", "2027-07-01T00:00:00+01:00"),
        (date(2027, 12, 1), "Europe/London", "2027-12-01T00:00:00+00:00"),
        # Chile moves its clocks at midnight: 5 September 2027 starts at 01:00.
        (date(2027, 9, 5), "America/Santiago", "2027-09-05T01:00:00-03:00"),
    ],
)
def test_local_midnight(day: date, zone: str, expected: str) -> None:
    assert instant(local_midnight(day, ZoneInfo(zone))) == expected


def test_flag_warns_of_withdrawal_for_a_patient_with_an_active_pump(client_a: APIClient, pump_a: Pump) -> None:
    body = read(client_a, "Flag", f"withdrawal-{pump_a.patient_id}")

    assert body["status"] == "active"
    assert body["code"] == {"text": "Intrathecal baclofen: abrupt withdrawal risk — never miss a refill"}
    assert [c["coding"][0]["code"] for c in body["category"]] == ["safety", "clinical"]
    assert body["subject"] == {"reference": f"Patient/{pump_a.patient_id}"}
    assert body["period"] == {"start": "2027-01-04T09:00:00+00:00"}
    assert "extension" not in body  # not a high-risk patient


def test_flag_marks_a_high_risk_patient(client_a: APIClient, clinic_a: Any) -> None:
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, withdrawal_history=True, sci_t6_or_above=True))

    body = read(client_a, "Flag", f"withdrawal-{pump.patient_id}")

    assert body["code"]["text"] == (
        "Intrathecal baclofen: abrupt withdrawal risk — never miss a refill. "
        "HIGH RISK: spinal cord injury at T-6 or above, history of withdrawal symptoms"
    )
    assert body["extension"] == [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/flag-priority",
            "valueCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/flag-priority-code", "code": "PH", "display": "High priority"}]
            },
        }
    ]


def test_an_explanted_pump_is_an_inactive_device_with_no_order_no_refill_and_an_inactive_flag(
    client_a: APIClient, pump_a: Pump
) -> None:
    names = resource_ids(pump_a)
    services.end_pump(pump_a, status=PumpStatus.EXPLANTED, on=date(2027, 2, 1), reason="infection", now=NOW)

    device = read(client_a, "Device", pump_a.pk)
    assert device["status"] == "inactive"
    assert device["note"] == [{"text": "Explanted on 2027-02-01: infection"}]
    fhir_get(client_a, f"/fhir/MedicationRequest/{names['MedicationRequest']}", status=404)
    fhir_get(client_a, f"/fhir/Appointment/{names['Appointment']}", status=404)
    flag = read(client_a, "Flag", names["Flag"])
    assert flag["status"] == "inactive"
    assert flag["period"]["end"] == "2027-02-01"
    patient = f"patient={pump_a.patient_id}"
    assert search(client_a, "MedicationRequest", patient)["total"] == 0
    assert search(client_a, "Appointment", patient)["total"] == 0
    assert ids(search(client_a, "Device", patient)) == [str(pump_a.pk)]


def test_a_patient_who_never_had_a_pump_has_no_flag(client_a: APIClient, clinic_a: Any) -> None:
    patient = screened_patient(clinic=clinic_a)
    fhir_get(client_a, f"/fhir/Flag/withdrawal-{patient.pk}", status=404)
    assert search(client_a, "Flag", f"patient={patient.pk}")["total"] == 0


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("resource_type", ["Device", "MedicationRequest", "Appointment", "Flag"])
def test_search_by_patient_finds_the_patients_resources_only(
    client_a: APIClient, pump_a: Pump, clinic_a: Any, resource_type: str
) -> None:
    other = implanted_pump(patient=screened_patient(clinic=clinic_a))
    expected = [resource_ids(pump_a)[resource_type]]

    for value in (pump_a.patient_id, f"Patient/{pump_a.patient_id}", f"{BASE}/Patient/{pump_a.patient_id}"):
        assert ids(search(client_a, resource_type, f"patient={value}")) == expected
    both = search(client_a, resource_type, f"patient={pump_a.patient_id},{other.patient_id}")
    assert sorted(ids(both)) == sorted([*expected, resource_ids(other)[resource_type]])


def test_patient_search_by_id_and_by_mrn(client_a: APIClient, pump_a: Pump, clinic_a: Any) -> None:
    patient = pump_a.patient
    system = f"{BASE}/sid/clinic-{clinic_a.pk}-mrn"
    assert ids(search(client_a, "Patient", f"_id={patient.pk}")) == [str(patient.pk)]
    assert ids(search(client_a, "Patient", f"identifier={patient.mrn}")) == [str(patient.pk)]
    assert ids(search(client_a, "Patient", f"identifier={system}|{patient.mrn}")) == [str(patient.pk)]
    assert search(client_a, "Patient", f"identifier={BASE}/sid/clinic-999999-mrn|{patient.mrn}")["total"] == 0


def test_search_bundle_links_itself(client_a: APIClient, pump_a: Pump) -> None:
    body = search(client_a, "Device", f"patient={pump_a.patient_id}")
    assert body["link"] == [{"relation": "self", "url": f"{BASE}/Device?patient={pump_a.patient_id}"}]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("/fhir/Device?status=active", "'status' is not supported"),
        ("/fhir/Patient?patient=1", "'patient' is not supported"),
        ("/fhir/Device?patient=1&patient=2", "Give 'patient' once"),
        ("/fhir/Device", "by patient"),
        ("/fhir/Patient", "by _id or identifier"),
        ("/fhir/Device/1?_summary=true", "A read takes no parameters"),
    ],
)
def test_unsupported_or_missing_search_parameters_are_refused(client_a: APIClient, url: str, fragment: str) -> None:
    body = fhir_get(client_a, url, status=400)
    assert fragment in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Device/999999",
        "/fhir/Patient/999999",
        "/fhir/MedicationRequest/999999",
        "/fhir/Appointment/pump-999999",
        "/fhir/Flag/withdrawal-999999",
        "/fhir/Device/abc",
        "/fhir/Appointment/999999",  # an Appointment id is pump-<id>
        "/fhir/Observation/1",
        "/fhir/Observation?patient=1",
        "/fhir/Device/1/_history/1",
        "/fhir/Device/%0A",  # a newline in the path: still FHIR's answer, not Django's HTML page
    ],
)
def test_an_unknown_resource_is_a_404_operation_outcome(client_a: APIClient, url: str) -> None:
    body = fhir_get(client_a, url, status=404)
    assert body["issue"][0]["code"] == "not-found"


def test_an_unknown_reference_finds_nothing(client_a: APIClient, pump_a: Pump) -> None:
    for value in ("999999", "Patient/abc", f"Device/{pump_a.pk}"):
        assert search(client_a, "Device", f"patient={value}")["total"] == 0


# ----------------------------------------------------------------------------- access


@pytest.mark.parametrize("resource_type", list(MODELS))
def test_another_clinic_reads_404_and_searches_empty(
    client_a: APIClient, client_b: APIClient, pump_a: Pump, resource_type: str
) -> None:
    resource_id = resource_ids(pump_a)[resource_type]
    query = f"_id={pump_a.patient_id}" if resource_type == "Patient" else f"patient={pump_a.patient_id}"
    read(client_a, resource_type, resource_id)  # it exists, for clinic A
    assert search(client_a, resource_type, query)["total"] == 1

    body = fhir_get(client_b, f"/fhir/{resource_type}/{resource_id}", status=404)
    assert body["issue"][0]["diagnostics"] == f"{resource_type}/{resource_id} is not known."
    assert search(client_b, resource_type, query)["total"] == 0
    if resource_type != "Patient":
        assert search(client_b, resource_type, f"patient=Patient/{pump_a.patient_id}")["total"] == 0


def test_another_clinic_cannot_find_a_patient_by_mrn(client_b: APIClient, pump_a: Pump) -> None:
    assert search(client_b, "Patient", f"identifier={pump_a.patient.mrn}")["total"] == 0


@pytest.mark.parametrize("resource_type", list(MODELS))
def test_without_a_token_every_endpoint_is_401(pump_a: Pump, resource_type: str) -> None:
    resource_id = resource_ids(pump_a)[resource_type]
    query = f"_id={pump_a.patient_id}" if resource_type == "Patient" else f"patient={pump_a.patient_id}"
    for client in (APIClient(), _with_header("Token pt_not-a-key"), _with_header("Bearer pt_not-a-key")):
        for url in (f"/fhir/{resource_type}/{resource_id}", f"/fhir/{resource_type}?{query}"):
            response = client.get(url)
            assert response.status_code == 401, url
            assert response["Content-Type"] == FHIR_JSON
            assert response["WWW-Authenticate"] == 'Token realm="api"'
            assert OperationOutcome.model_validate(response.json()).issue[0].code == "login"


def _with_header(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=value)
    return client


def test_a_bearer_token_works_as_fhir_clients_send_it(clinic_a: Any, pump_a: Pump) -> None:
    from api_support import token_for

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(staff((clinic_a, 'viewer')))}")
    read(client, "Device", pump_a.pk)


def test_a_user_with_no_clinic_is_forbidden(pump_a: Pump) -> None:
    body = fhir_get(api_client(UserFactory(is_staff=True)), f"/fhir/Device/{pump_a.pk}", status=403)
    assert body["issue"][0]["code"] == "forbidden"


def test_a_superuser_reads_every_clinic(pump_a: Pump) -> None:
    read(api_client(UserFactory(is_staff=True, is_superuser=True)), "Device", pump_a.pk)


def test_a_staff_session_reads_too(clinic_a: Any, pump_a: Pump) -> None:
    read(client_for(staff((clinic_a, "nurse"))), "Device", pump_a.pk)


def test_it_is_read_only(client_a: APIClient, pump_a: Pump) -> None:
    response = client_a.post(f"/fhir/Device/{pump_a.pk}", {"resourceType": "Device"}, format="json")
    assert response.status_code == 405
    assert response["Content-Type"] == FHIR_JSON
    assert OperationOutcome.model_validate(response.json()).issue[0].code == "not-supported"


def test_fhir_json_whatever_the_client_accepts(client_a: APIClient, pump_a: Pump) -> None:
    for accept in ("application/json", "application/fhir+json", "*/*", "text/html"):
        read_url = f"/fhir/Device/{pump_a.pk}"
        assert fhir_get(client_a, read_url, HTTP_ACCEPT=accept)["resourceType"] == "Device"


# ----------------------------------------------------------------------------- metadata and schema


def test_capability_statement_lists_what_is_supported_without_a_token() -> None:
    body = fhir_get(APIClient(), "/fhir/metadata")

    CapabilityStatement.model_validate(body)
    assert (body["fhirVersion"], body["kind"], body["format"]) == ("4.0.1", "instance", ["application/fhir+json"])
    assert body["implementation"]["url"] == BASE
    rest = body["rest"][0]
    assert {r["type"]: [p["name"] for p in r["searchParam"]] for r in rest["resource"]} == {
        "Patient": ["_id", "identifier"],
        "Device": ["patient"],
        "MedicationRequest": ["patient"],
        "Appointment": ["patient"],
        "Flag": ["patient"],
    }
    assert all([i["code"] for i in r["interaction"]] == ["read", "search-type"] for r in rest["resource"])


def test_fhir_is_not_in_the_rest_api_schema() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert schema["paths"]  # the REST API is there
    assert not [path for path in schema["paths"] if path.startswith("/fhir")]


# ----------------------------------------------------------------------------- query budget


@pytest.mark.parametrize(
    ("resource_type", "param"),
    [
        ("Patient", "_id"),
        ("Device", "patient"),
        ("MedicationRequest", "patient"),
        ("Appointment", "patient"),
        ("Flag", "patient"),
    ],
)
def test_a_search_runs_the_same_queries_for_one_pump_or_five(
    client_a: APIClient, clinic_a: Any, resource_type: str, param: str
) -> None:
    pumps = [implanted_pump(patient=screened_patient(clinic=clinic_a)) for _ in range(5)]
    for pump in pumps:
        CaregiverFactory(patient=pump.patient)
    # A replaced pump too: a patient's pumps are not one each.
    services.end_pump(pumps[0], status=PumpStatus.REPLACED, on=date(2027, 1, 20), reason="battery", now=NOW)
    implanted_pump(patient=pumps[0].patient, implanted_at=IMPLANTED_AT + timedelta(days=16))
    search(client_a, resource_type, f"{param}={pumps[0].patient_id}")  # the token's first use writes last_used_at

    counts = []
    for chosen in (pumps[:1], pumps):
        with CaptureQueriesContext(connection) as queries:
            body = search(client_a, resource_type, f"{param}={','.join(str(p.patient_id) for p in chosen)}")
        assert body["total"] >= len(chosen)
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
    assert counts[1] <= 5
