"""FHIR R4 resources built from pumptrack rows: pure functions returning JSON-ready dicts.

Nothing here queries the database: callers pass rows with their relations loaded
(`integrations/fhir/queries.py`). Quantities leave as JSON numbers with the digits we hold
(no float arithmetic on doses), instants with their offset.

Resource ids are stable and name their row, so every id can be read back:

    Patient/<patient id>
    Device/<pump id>
    MedicationRequest/<program id>       the pump's current programming (a new dose, a new id)
    Appointment/pump-<pump id>           the pump's next refill-by day (moves with each refill)
    Flag/withdrawal-<patient id>         the withdrawal-risk warning of a patient with a pump
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from patients.models import Caregiver, Patient
from pumps.domain import quantity_text
from pumps.models import Program, ProgramMode, Pump, PumpStatus

JSON = dict[str, Any]

FHIR_VERSION = "4.0.1"  # FHIR R4
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
BCP47 = "urn:ietf:bcp:47"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
DOSE_RATE_TYPE = "http://terminology.hl7.org/CodeSystem/dose-rate-type"
# Core extension "flag-priority" with its example code system (PN/PL/PM/PH).
FLAG_PRIORITY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/flag-priority"
FLAG_PRIORITY_CODES = "http://hl7.org/fhir/flag-priority-code"
US_CORE_IMPLANTABLE_DEVICE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-implantable-device"
GS1_DI_ISSUER = "http://hl7.org/fhir/NamingSystem/gs1-di"

# SNOMED CT 430033006 |Infusion pump (physical object)|, a descendant of 49062001 |Device|,
# so inside the (extensible) FHIR/US Core device-type value set; FHIR IGs use it for
# infusion pumps. No narrower "implantable intrathecal pump" concept could be confirmed
# here, so the coding stays at this verified parent and the text says what the pump is.
DEVICE_TYPE = {
    "coding": [{"system": SNOMED, "code": "430033006", "display": "Infusion pump"}],
    "text": "Implantable intrathecal drug infusion pump",
}
# RxNorm 1292 is the ingredient concept (TTY IN) "baclofen". Intrathecal products (Lioresal,
# Gablofen, generics, compounded) differ in strength, which the contained Medication states.
BACLOFEN = {"coding": [{"system": RXNORM, "code": "1292", "display": "baclofen"}], "text": "baclofen"}
# SNOMED CT 72607000 |Intrathecal route (qualifier value)|, from the FHIR route-codes value set.
INTRATHECAL_ROUTE = {"coding": [{"system": SNOMED, "code": "72607000", "display": "Intrathecal route"}]}

WITHDRAWAL_WARNING = "Intrathecal baclofen: abrupt withdrawal risk — never miss a refill"
REFILL_SERVICE = "ITB pump refill"


# ----------------------------------------------------------------------------- ids


def appointment_id(pump_id: int) -> str:
    return f"pump-{pump_id}"


def flag_id(patient_id: int) -> str:
    return f"withdrawal-{patient_id}"


_ROW_ID = re.compile(r"[1-9][0-9]{0,17}")
_PREFIXED = {"Appointment": "pump-", "Flag": "withdrawal-"}


def row_id(resource_type: str, resource_id: str) -> int | None:
    """The row behind a resource id (see the module docstring), or None if it names none."""
    prefix = _PREFIXED.get(resource_type, "")
    if not resource_id.startswith(prefix):
        return None
    digits = resource_id[len(prefix) :]
    return int(digits) if _ROW_ID.fullmatch(digits) else None


def reference_row_id(value: str, resource_type: str, base_url: str) -> int | None:
    """A search parameter's reference ("12", "Patient/12" or an absolute URL on this
    server) as a row id; None when it cannot name one of ours (it then matches nothing)."""
    for prefix in (f"{base_url}/{resource_type}/", f"{resource_type}/", ""):
        if value.startswith(prefix):
            return row_id(resource_type, value[len(prefix) :])
    return None


def mrn_system(site_url: str, clinic_id: int) -> str:
    """The identifier system of a clinic's medical record numbers (MRNs are unique per clinic)."""
    return f"{site_url}/fhir/sid/clinic-{clinic_id}-mrn"


def mrn_system_clinic(system: str, site_url: str) -> int | None:
    match = re.fullmatch(re.escape(f"{site_url}/fhir/sid/clinic-") + r"([1-9][0-9]{0,17})-mrn", system)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- values


def number(value: Decimal) -> int | float:
    """A decimal as a JSON number without trailing zeros: 200, 12.5, 0.4.

    float() of a decimal of at most 15 significant digits prints back the same digits,
    and our fields hold at most 9.
    """
    value = value.normalize()
    return int(value) if value == value.to_integral_value() else float(value)


def instant(moment: datetime) -> str:
    """An aware datetime as a FHIR instant (seconds always, explicit offset)."""
    if moment.tzinfo is None:
        raise ValueError("FHIR instants need an aware datetime")
    return moment.isoformat(timespec="seconds")


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The start of `day` in `tz`. A midnight that a DST change skips becomes the first
    local moment that exists (through UTC and back)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC).astimezone(tz)


def quantity(value: Decimal, unit: str, code: str) -> JSON:
    return {"value": number(value), "unit": unit, "system": UCUM, "code": code}


def _reference(resource_type: str, resource_id: int | str, display: str = "") -> JSON:
    ref: JSON = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        ref["display"] = display
    return ref


# ----------------------------------------------------------------------------- UDI


@dataclass(frozen=True)
class Udi:
    """What a UDI's human-readable form tells, as far as we can read it."""

    carrier_hrf: str
    device_identifier: str = ""
    lot_number: str = ""
    expiration_date: date | None = None
    manufacture_date: date | None = None


_GS1_ELEMENT = re.compile(r"\((\d{2,4})\)([^()]*)")


def _gs1_date(yymmdd: str) -> date | None:
    """GS1 dates are YYMMDD; day 00 means the month's last day. Implanted pumps are made
    this century, so YY is 20YY (the general specification's sliding window agrees until 2050)."""
    if not re.fullmatch(r"\d{6}", yymmdd):
        return None
    year, month, day = 2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:])
    if not 1 <= month <= 12:
        return None
    if day == 0:
        day = calendar.monthrange(year, month)[1]
    try:
        return date(year, month, day)
    except ValueError:
        return None


def parse_udi(text: str) -> Udi:
    """Read a UDI as staff type it from the label [S72].

    GS1 (the issuing agency of Medtronic's and Flowonix's labels) in its human-readable form
    "(01)<GTIN-14>(17)<expiry>(10)<lot>(21)<serial>": the device identifier is AI 01; a
    bare GTIN-14, or "01<GTIN-14>..." without parentheses, gives the device identifier only.
    Other agencies' forms (HIBCC "+...", ICCBBA "=...") are kept as the carrier text alone:
    we do not guess their device identifier.
    """
    text = text.strip()
    if text.startswith("("):
        elements = dict(_GS1_ELEMENT.findall(text))
        di = elements.get("01", "")
        return Udi(
            carrier_hrf=text,
            device_identifier=di if re.fullmatch(r"\d{14}", di) else "",
            lot_number=elements.get("10", ""),
            expiration_date=_gs1_date(elements.get("17", "")),
            manufacture_date=_gs1_date(elements.get("11", "")),
        )
    if re.fullmatch(r"\d{14}", text):
        return Udi(carrier_hrf=text, device_identifier=text)
    match = re.match(r"01(\d{14})", text)
    return Udi(carrier_hrf=text, device_identifier=match.group(1) if match else "")


# ----------------------------------------------------------------------------- resources


def patient_resource(patient: Patient, caregivers: Iterable[Caregiver], *, site_url: str) -> JSON:
    """Patient: MRN (per-clinic system), name, birth date, contacts, language, caregivers."""
    clinic = patient.clinic
    resource: JSON = {
        "resourceType": "Patient",
        "id": str(patient.pk),
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "MR", "display": "Medical record number"}]},
                "system": mrn_system(site_url, clinic.pk),
                "value": patient.mrn,
                "assigner": {"display": clinic.name},
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": patient.family_name, "given": [patient.given_name]}],
        "birthDate": patient.birth_date.isoformat(),
        "communication": [
            {
                "language": {
                    "coding": [{"system": BCP47, "code": patient.language}],
                    "text": patient.get_language_display(),
                },
                "preferred": True,
            }
        ],
        "managingOrganization": {"display": clinic.name},
    }
    telecom = _telecom(patient.phone, patient.email)
    if telecom:
        resource["telecom"] = telecom
    contacts = []
    for caregiver in caregivers:
        contact: JSON = {"name": {"text": caregiver.name}}
        if caregiver.relationship:
            contact["relationship"] = [{"text": caregiver.relationship}]
        caregiver_telecom = _telecom(caregiver.phone, caregiver.email)
        if caregiver_telecom:
            contact["telecom"] = caregiver_telecom
        contacts.append(contact)
    if contacts:
        resource["contact"] = contacts
    return resource


def _telecom(phone: Any, email: str) -> list[JSON]:
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone.as_e164, "use": "mobile"})
    if email:
        telecom.append({"system": "email", "value": email})
    return telecom


def device_resource(pump: Pump) -> JSON:
    """Device shaped like US Core Implantable Device (type, patient, UDI, serial number)."""
    model = pump.model
    resource: JSON = {
        "resourceType": "Device",
        "id": str(pump.pk),
        "meta": {"profile": [US_CORE_IMPLANTABLE_DEVICE]},
        "status": "active" if pump.status == PumpStatus.ACTIVE else "inactive",
        "manufacturer": model.manufacturer,
        "deviceName": [
            {"name": model.name, "type": "model-name"},
            {"name": f"{model.name} {model.model_number} #{pump.serial_number}", "type": "user-friendly-name"},
        ],
        "modelNumber": model.model_number,
        "serialNumber": pump.serial_number,
        "type": DEVICE_TYPE,
        "patient": _reference("Patient", pump.patient_id),
        "property": [
            {"type": {"text": "Reservoir capacity"}, "valueQuantity": [quantity(model.reservoir_ml, "mL", "mL")]},
            {
                "type": {"text": "Low-reservoir alarm volume"},
                "valueQuantity": [quantity(pump.low_reservoir_alarm_ml, "mL", "mL")],
            },
        ],
    }
    if pump.status != PumpStatus.ACTIVE:
        # Device.statusReason's codes (online, paused, ...) describe a running device: the
        # explant is told in a note instead.
        ended = f"{pump.get_status_display()} on {pump.explanted_on}" if pump.explanted_on else pump.get_status_display()
        resource["note"] = [{"text": f"{ended}: {pump.explant_reason}" if pump.explant_reason else ended}]
    if pump.udi.strip():
        udi = parse_udi(pump.udi)
        if udi.device_identifier:
            resource["udiCarrier"] = [
                {
                    "deviceIdentifier": udi.device_identifier,
                    "issuer": GS1_DI_ISSUER,
                    "carrierHRF": udi.carrier_hrf,
                    "entryType": "manual",  # typed from the label by staff
                }
            ]
        else:
            # US Core requires udiCarrier.deviceIdentifier, which is read from GS1 UDIs only:
            # another issuer's label text is kept as an identifier rather than a broken carrier.
            resource["identifier"] = [{"type": {"text": "UDI as entered"}, "value": udi.carrier_hrf}]
        if udi.lot_number:
            resource["lotNumber"] = udi.lot_number
        if udi.expiration_date:
            resource["expirationDate"] = udi.expiration_date.isoformat()
        if udi.manufacture_date:
            resource["manufactureDate"] = udi.manufacture_date.isoformat()
    return resource


def medication_request_resource(program: Program, pump: Pump) -> JSON:
    """The pump's current programming as an active order for intrathecal baclofen.

    The rate is the daily dose in mcg/day (UCUM ug/d) in Dosage.doseAndRate. The concentration
    is a property of what is in the reservoir, not of the dosage, and FHIR's place for a
    product's strength is Medication.ingredient.strength (a Ratio, ug per mL): so a contained
    Medication carries baclofen with its strength, which machines can read (a note or a
    private extension could not be), and the medication is that Medication.
    """
    concentration = program.concentration_mcg_per_ml
    strength = quantity_text(concentration)
    medication: JSON = {
        "resourceType": "Medication",
        "id": "baclofen",
        "code": BACLOFEN,
        "ingredient": [
            {
                "itemCodeableConcept": BACLOFEN,
                "isActive": True,
                "strength": {
                    "numerator": quantity(concentration, "ug", "ug"),
                    "denominator": quantity(Decimal(1), "mL", "mL"),
                },
            }
        ],
    }
    dose, rate_ml = program.dose_mcg_per_day, program.rate_ml_per_day
    mode = {
        ProgramMode.SIMPLE: "simple continuous",
        ProgramMode.FLEX: "flex schedule, total over 24 h",
        ProgramMode.PERIODIC_BOLUS: "periodic bolus, basal and boluses over 24 h",
    }.get(program.mode, program.get_mode_display())
    # The volume rate is for people reading the text: rounded to 0.001 mL/day there only.
    text = (
        f"{quantity_text(dose)} mcg/day intrathecal baclofen {strength} mcg/mL "
        f"({quantity_text(rate_ml.quantize(Decimal('0.001')))} mL/day) by implanted pump, {mode}"
    )
    if program.mode == ProgramMode.PERIODIC_BOLUS and program.basal_mcg_per_day is not None and program.bolus_mcg is not None:
        text = (
            f"{quantity_text(program.basal_mcg_per_day)} mcg/day basal plus {program.boluses_per_day} boluses of "
            f"{quantity_text(program.bolus_mcg)} mcg a day ({text})"
        )
    elif program.mode == ProgramMode.FLEX and program.flex_steps:
        steps = "; ".join(f"from {step['starts']} {step['mcg_per_hour']} mcg/hour" for step in program.flex_steps)
        text = f"{text}: {steps}"
    return {
        "resourceType": "MedicationRequest",
        "id": str(program.pk),
        "contained": [medication],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#baclofen", "display": f"baclofen {strength} mcg/mL intrathecal"},
        "subject": _reference("Patient", pump.patient_id),
        "authoredOn": instant(program.effective_at),
        "supportingInformation": [_reference("Device", pump.pk)],
        "dosageInstruction": _dosages(program, text),
    }


def _rate_type(code: str) -> JSON:
    return {"coding": [{"system": DOSE_RATE_TYPE, "code": code, "display": code.capitalize()}]}


def _dosages(program: Program, text: str) -> list[JSON]:
    """What the pump is programmed to do, as concurrent dosages (one `sequence`).

    Simple: the ordered rate in ug/d. Periodic bolus: the ordered basal rate plus a dosage of
    N boluses a day, with the daily total as a calculated rate. Flex: one ordered ug/h rate
    per step from its start time, with the daily total as a calculated rate. An EHR can then
    rebuild the programming, not only its total.
    """
    total = {"type": _rate_type("calculated"), "rateQuantity": quantity(program.dose_mcg_per_day, "ug/d", "ug/d")}
    main: JSON = {"sequence": 1, "text": text, "route": INTRATHECAL_ROUTE}
    if program.mode == ProgramMode.PERIODIC_BOLUS and program.basal_mcg_per_day is not None and program.bolus_mcg is not None:
        main["doseAndRate"] = [
            {"type": _rate_type("ordered"), "rateQuantity": quantity(program.basal_mcg_per_day, "ug/d", "ug/d")},
            total,
        ]
        bolus: JSON = {
            "sequence": 1,
            "text": f"{quantity_text(program.bolus_mcg)} mcg bolus, {program.boluses_per_day} times a day",
            "route": INTRATHECAL_ROUTE,
            "timing": {"repeat": {"frequency": program.boluses_per_day or 0, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"type": _rate_type("ordered"), "doseQuantity": quantity(program.bolus_mcg, "ug", "ug")}],
        }
        return [main, bolus]
    if program.mode == ProgramMode.FLEX and program.flex_steps:
        main["doseAndRate"] = [total]
        steps = [
            {
                "sequence": 1,
                "text": f"from {step['starts']}: {step['mcg_per_hour']} mcg/hour",
                "route": INTRATHECAL_ROUTE,
                "timing": {"repeat": {"timeOfDay": [f"{step['starts']}:00"[:8]]}},
                "doseAndRate": [
                    {"type": _rate_type("ordered"), "rateQuantity": quantity(Decimal(str(step["mcg_per_hour"])), "ug/h", "ug/h")}
                ],
            }
            for step in program.flex_steps
        ]
        return [main, *steps]
    main["doseAndRate"] = [{"type": _rate_type("ordered"), "rateQuantity": quantity(program.dose_mcg_per_day, "ug/d", "ug/d")}]
    return [main]


def appointment_resource(pump: Pump, tz: ZoneInfo, *, today: date, filled: bool = True) -> JSON | None:
    """The next refill as a proposed appointment that spans the refill-by day in the clinic's
    zone (the day the refill is due by, not a booked time); None without a date.

    An overdue refill runs from its refill-by day through `today` (the clinic's date) and
    says so, with the highest priority: a past "proposed" appointment would read as a
    lapsed proposal and drop off an EHR's upcoming lists (as the calendar feeds do).
    """
    if pump.status != PumpStatus.ACTIVE or pump.refill_by is None:
        return None
    overdue = pump.refill_by < today
    last_day = today if overdue else pump.refill_by
    start, end = local_midnight(pump.refill_by, tz), local_midnight(last_day + timedelta(days=1), tz)
    device = f"{pump.model.name} #{pump.serial_number}"
    if overdue:
        description = f"OVERDUE since {pump.refill_by.isoformat()}: {REFILL_SERVICE} ({device}), no refill recorded"
    else:
        description = f"{REFILL_SERVICE} due by {pump.refill_by.isoformat()} ({device})"
    if not filled:
        description += "; contents unknown: no programming and fill recorded since implant"
    if pump.alarm_on:
        description += f"; low-reservoir alarm expected on {pump.alarm_on.isoformat()}"
    urgent = {"priority": 1} if overdue or not filled else {}  # 1: the highest (R4 Appointment.priority)
    return {
        "resourceType": "Appointment",
        "id": appointment_id(pump.pk),
        **urgent,
        "status": "proposed",
        "serviceType": [{"text": REFILL_SERVICE}],
        "description": description,
        "start": instant(start),
        "end": instant(end),
        "supportingInformation": [_reference("Device", pump.pk)],
        "participant": [{"actor": _reference("Patient", pump.patient_id), "required": "required", "status": "needs-action"}],
    }


# Boxed-warning groups (clinical.md §6.1 #75) behind Patient.high_risk, as people read them.
_HIGH_RISK_REASONS = (
    ("sci_t6_or_above", "spinal cord injury at T-6 or above"),
    ("communication_difficulty", "communication difficulty"),
    ("withdrawal_history", "history of withdrawal symptoms"),
)


def flag_resource(patient: Patient, pumps: Sequence[Pump]) -> JSON | None:
    """The withdrawal-risk warning: active while the patient has an active pump, inactive
    once every pump is explanted; None for a patient who never had one."""
    if not pumps:
        return None
    active = [p for p in pumps if p.status == PumpStatus.ACTIVE]
    text = WITHDRAWAL_WARNING
    resource: JSON = {"resourceType": "Flag", "id": flag_id(patient.pk)}
    if patient.high_risk:
        reasons = ", ".join(label for name, label in _HIGH_RISK_REASONS if getattr(patient, name))
        text += f". HIGH RISK: {reasons}"
        resource["extension"] = [
            {
                "url": FLAG_PRIORITY_EXTENSION,
                "valueCodeableConcept": {"coding": [{"system": FLAG_PRIORITY_CODES, "code": "PH", "display": "High priority"}]},
            }
        ]
    if patient.hearing_impairment:
        # The pump's low-reservoir alarm may go unheard [S74].
        text += ". Hearing impairment: may not hear the pump alarm"
    if active:
        period: JSON = {"start": instant(min(p.implanted_at for p in active))}
    else:
        last = max(pumps, key=lambda p: p.implanted_at)
        period = {"start": instant(last.implanted_at)}
        if last.explanted_on:
            period["end"] = last.explanted_on.isoformat()
    resource.update(
        {
            "status": "active" if active else "inactive",
            "category": [
                {"coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}]},
                {"coding": [{"system": FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]},
            ],
            "code": {"text": text},
            "subject": _reference("Patient", patient.pk),
            "period": period,
        }
    )
    return resource


# ----------------------------------------------------------------------------- bundles and outcomes


def bundle(resources: Sequence[JSON], *, base_url: str, self_url: str) -> JSON:
    """A searchset Bundle: every match, no paging (searches are by patient)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
        # FHIR JSON has no empty arrays: no match, no `entry`.
        **(
            {
                "entry": [
                    {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                    for r in resources
                ]
            }
            if resources
            else {}
        ),
    }


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> JSON:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


# Search parameters per resource type, as the views accept them.
SEARCH_PARAMS: dict[str, dict[str, tuple[str, str]]] = {
    "Patient": {
        "_id": ("token", "The patient's id (comma-separated ids match any)."),
        "identifier": ("token", "The medical record number: `value` or `system|value`."),
    },
    "Device": {"patient": ("reference", "Every pump implanted in the patient, active or not.")},
    "MedicationRequest": {"patient": ("reference", "The current programming of the patient's active pump.")},
    "Appointment": {"patient": ("reference", "The next refill-by day of the patient's active pump.")},
    "Flag": {"patient": ("reference", "The withdrawal-risk warning.")},
}
RESOURCE_TYPES = tuple(SEARCH_PARAMS)


def capability_statement(*, base_url: str, now: datetime) -> JSON:
    resources = []
    for resource_type, params in SEARCH_PARAMS.items():
        entry: JSON = {
            "type": resource_type,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": name, "type": kind, "documentation": documentation} for name, (kind, documentation) in params.items()
            ],
        }
        if resource_type == "Device":
            entry["supportedProfile"] = [US_CORE_IMPLANTABLE_DEVICE]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now),
        "publisher": "pumptrack",
        "kind": "instance",
        "software": {"name": "pumptrack"},
        "implementation": {"description": "pumptrack FHIR R4 (read-only)", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only. Searches need a patient (Patient: _id or identifier) and return every match"
                    " in one searchset Bundle. Unknown search parameters are refused (400)."
                ),
                "security": {
                    "description": (
                        "Send `Authorization: Bearer <key>` (or `Token <key>`) with an API token that clinic staff "
                        "create in the admin. A token sees only its user's clinics; another clinic's resource is 404."
                    )
                },
                "resource": resources,
            }
        ],
    }
