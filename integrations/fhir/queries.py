"""Reads and searches behind the FHIR views: clinic-scoped querysets, a fixed number of
queries per request whatever the number of rows, and the resources built from them.

Every query is limited to `Scope.clinics` (patients.access.clinics_for): another clinic's
row is simply not found, so it answers exactly as an unknown id does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from integrations.fhir import resources
from integrations.fhir.resources import JSON
from patients.models import Clinic, Patient
from pumps.domain import local_date
from pumps.models import Program, Pump, PumpStatus, Refill


@dataclass(frozen=True)
class Scope:
    clinics: QuerySet[Clinic]
    now: datetime
    site_url: str

    @property
    def base_url(self) -> str:
        return f"{self.site_url}/fhir"


# Parsed search parameters: name -> the values of its one occurrence (commas mean "any of").
Params = dict[str, list[str]]


class MissingParameter(ValueError):
    """A search without the parameter that bounds it (a patient)."""


# ----------------------------------------------------------------------------- querysets


def _patients(scope: Scope) -> QuerySet[Patient]:
    return Patient.objects.filter(clinic__in=scope.clinics).select_related("clinic").order_by("pk")


def _pumps(scope: Scope) -> QuerySet[Pump]:
    return Pump.objects.filter(patient__clinic__in=scope.clinics).select_related("model", "patient__clinic").order_by("pk")


def _current_program(scope: Scope) -> Prefetch[str, QuerySet[Program], str]:
    """Each pump's programming in force now: the latest that has started (one query for all
    pumps, a sliced prefetch). Programming changes are never recorded in the future."""
    latest = Program.objects.filter(effective_at__lte=scope.now).order_by("-effective_at")[:1]
    return Prefetch("programs", queryset=latest, to_attr="current_programs")


def _patient_ids(scope: Scope, params: Params, name: str = "patient") -> set[int]:
    values = params.get(name)
    if not values:
        raise MissingParameter(name)
    ids = {resources.reference_row_id(v, "Patient", scope.base_url) for v in values}
    return {i for i in ids if i is not None}


# ----------------------------------------------------------------------------- Patient


def _patient_resources(scope: Scope, patients: QuerySet[Patient]) -> list[JSON]:
    rows = patients.prefetch_related("caregivers")
    return [resources.patient_resource(p, p.caregivers.all(), site_url=scope.site_url) for p in rows]


def read_patient(scope: Scope, pk: int) -> JSON | None:
    found = _patient_resources(scope, _patients(scope).filter(pk=pk))
    return found[0] if found else None


def search_patients(scope: Scope, params: Params) -> list[JSON]:
    if "_id" not in params and "identifier" not in params:
        raise MissingParameter("_id or identifier")
    patients = _patients(scope)
    if "_id" in params:
        patients = patients.filter(pk__in=_patient_ids(scope, params, "_id"))
    if "identifier" in params:
        patients = patients.filter(_identifier_filter(scope, params["identifier"]))
    return _patient_resources(scope, patients)


def _identifier_filter(scope: Scope, values: Iterable[str]) -> Q:
    """`value` matches an MRN in any of the user's clinics; `system|value` in that clinic."""
    match = Q(pk__in=[])
    for token in values:
        system, bar, value = token.rpartition("|")
        if not bar:
            match |= Q(mrn=value)
        elif (clinic_id := resources.mrn_system_clinic(system, scope.site_url)) is not None:
            match |= Q(clinic_id=clinic_id, mrn=value)
    return match


# ----------------------------------------------------------------------------- Device


def read_device(scope: Scope, pk: int) -> JSON | None:
    pump = _pumps(scope).filter(pk=pk).first()
    return resources.device_resource(pump) if pump else None


def search_devices(scope: Scope, params: Params) -> list[JSON]:
    pumps = _pumps(scope).filter(patient_id__in=_patient_ids(scope, params))
    return [resources.device_resource(p) for p in pumps]


# ----------------------------------------------------------------------------- MedicationRequest


def read_medication_request(scope: Scope, pk: int) -> JSON | None:
    """Only the programming in force on an active pump is a MedicationRequest: a superseded
    one, or one of an explanted pump, is not found (its successor has its own id)."""
    later = Program.objects.filter(pump=OuterRef("pump"), effective_at__gt=OuterRef("effective_at"), effective_at__lte=scope.now)
    program = (
        Program.objects.filter(
            pk=pk, pump__status=PumpStatus.ACTIVE, pump__patient__clinic__in=scope.clinics, effective_at__lte=scope.now
        )
        .exclude(Exists(later))
        .select_related("pump")
        .first()
    )
    return resources.medication_request_resource(program, program.pump) if program else None


def search_medication_requests(scope: Scope, params: Params) -> list[JSON]:
    pumps = (
        _pumps(scope)
        .filter(patient_id__in=_patient_ids(scope, params), status=PumpStatus.ACTIVE)
        .prefetch_related(_current_program(scope))
    )
    current = ((p, getattr(p, "current_programs", [])) for p in pumps)
    return [resources.medication_request_resource(programs[0], p) for p, programs in current if programs]


# ----------------------------------------------------------------------------- Appointment


def _appointments(scope: Scope, pumps: QuerySet[Pump]) -> list[JSON]:
    filled = pumps.annotate(filled=Exists(Refill.objects.filter(pump=OuterRef("pk"))))
    built = (
        resources.appointment_resource(p, p.patient.clinic.tz, today=local_date(scope.now, p.patient.clinic.tz), filled=p.filled)
        for p in filled
    )
    return [a for a in built if a is not None]


def read_appointment(scope: Scope, pump_pk: int) -> JSON | None:
    found = _appointments(scope, _pumps(scope).filter(pk=pump_pk))
    return found[0] if found else None


def search_appointments(scope: Scope, params: Params) -> list[JSON]:
    return _appointments(scope, _pumps(scope).filter(patient_id__in=_patient_ids(scope, params), status=PumpStatus.ACTIVE))


# ----------------------------------------------------------------------------- Flag


def _flags(patients: QuerySet[Patient]) -> list[JSON]:
    rows = patients.filter(pumps__isnull=False).distinct().prefetch_related("pumps")
    built = (resources.flag_resource(p, list(p.pumps.all())) for p in rows)
    return [f for f in built if f is not None]


def read_flag(scope: Scope, patient_pk: int) -> JSON | None:
    found = _flags(_patients(scope).filter(pk=patient_pk))
    return found[0] if found else None


def search_flags(scope: Scope, params: Params) -> list[JSON]:
    return _flags(_patients(scope).filter(pk__in=_patient_ids(scope, params)))


# ----------------------------------------------------------------------------- registry

READ: dict[str, Callable[[Scope, int], JSON | None]] = {
    "Patient": read_patient,
    "Device": read_device,
    "MedicationRequest": read_medication_request,
    "Appointment": read_appointment,
    "Flag": read_flag,
}
SEARCH: dict[str, Callable[[Scope, Params], list[JSON]]] = {
    "Patient": search_patients,
    "Device": search_devices,
    "MedicationRequest": search_medication_requests,
    "Appointment": search_appointments,
    "Flag": search_flags,
}
