"""The role matrix, walked cell by cell from the README's own table (issue 6, "Roles").

README.md's "Roles and permissions" table is parsed at collection time: each row names an
action (its key in backticks), each column a role, a read-only token, another clinic's
member or a superuser. Every cell becomes tests through every face where the action exists
(the admin, the REST API, FHIR, the calendar feeds' records, the staff pages), so the
document and the code cannot drift apart: change a cell or a role and a test names the
role, action, face and clinic that disagree.

For each role there are two users: one with that role in clinic A only, and one who is
also a clinician in clinic C (a role never carries over to another clinic). "same" acts
on clinic A's records, "other" on clinic B's, where the user has no role. A refused write
leaves every table as it was; an allowed one changes it (so a probe that silently does
nothing cannot pass as "refused"). Another clinic's records answer 404 (the admin: "does
not exist", a redirect) and its patient's MRN never appears in an answer.

The records are built once per module inside a transaction that is rolled back at the
end; each test runs in a savepoint of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from admin_support import NOW, VISIT_AT, as_shown, refill_data, split_moment
from api_support import token_for
from django.db import connection, transaction
from django.test import Client
from factories import (
    CaregiverFactory,
    ClinicFactory,
    MembershipFactory,
    UserFactory,
    implanted_pump,
    pump_model,
    screened_patient,
)
from rest_framework.test import APIClient

from api.models import ApiToken
from integrations import services as feed_services
from integrations.models import CalendarFeed
from notifications import services as notification_services
from notifications.models import BlockMethod, BlockReason, Channel, ContactBlock, Escalation, EscalationReason, Message
from patients.models import Caregiver, Clinic, Patient, Role
from pumps import appointments
from pumps.models import Appointment, Catheter, ClinicalEvent, Program, Pump, Refill, ScreeningTrial
from webhooks import services as webhook_services
from webhooks.models import WebhookEndpoint
from workspace.models import OutreachAttempt

README = Path(__file__).resolve().parent.parent / "README.md"
ROLES = [Role.CLINICIAN, Role.NURSE, Role.COORDINATOR, Role.VIEWER]
COLUMNS = [*[str(r) for r in ROLES], "read-only token", "another clinic's member", "superuser"]


# ----------------------------------------------------------------------------- the README table


def read_matrix(text: str) -> dict[str, dict[str, str]]:
    """{action key: {column: cell}} from the table under "## Roles and permissions"."""
    section = text.split("## Roles and permissions", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[1:] == COLUMNS, f"README matrix columns changed: {header}"
    matrix: dict[str, dict[str, str]] = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = re.match(r"`([a-z-]+)`", cells[0])
        assert key, f"README matrix row without an action key: {line}"
        matrix[key.group(1)] = dict(zip(COLUMNS, cells[1:], strict=True))
    return matrix


MATRIX = read_matrix(README.read_text())


# ----------------------------------------------------------------------------- the records


@dataclass
class Site:
    """One clinic's records that the probes act on."""

    clinic: Clinic
    patient: Patient
    pump: Pump
    screened: Patient  # screened, no pump yet: may be implanted
    escalation: Escalation
    message: Message
    block: ContactBlock
    feed: CalendarFeed
    endpoint: WebhookEndpoint
    visit: Appointment  # booked, on a second pump (the first stays free to book)


@dataclass
class World:
    sites: dict[str, Site]
    users: dict[tuple[str, str], Any]  # (role, "pure" | "mixed") -> user
    superuser: Any
    outsiders: dict[str, Any]  # "inactive", "not-staff": members of clinic A who get nothing
    keys: dict[int, str] = field(default_factory=dict)  # user pk -> full token
    read_only_key: str = ""


def build_site(name: str, mrn: str, email: str, owner: Any) -> Site:
    clinic = ClinicFactory(name=name)
    patient = screened_patient(clinic=clinic, mrn=mrn, email=email)
    pump = implanted_pump(patient=patient)
    CaregiverFactory(patient=patient, name=f"Carer of {mrn}")
    screened = screened_patient(clinic=clinic)
    notification_services.reconcile_pumps([pump.pk], NOW)
    # After planning, which would close an escalation its facts do not call for.
    escalation, _ = notification_services.raise_escalation(
        clinic=clinic,
        reason=EscalationReason.OVERDUE,
        severity="warning",
        cycle="c1",
        detail="Refill overdue",
        now=NOW,
        pump=pump,
    )
    block = notification_services.block_contact(
        Channel.EMAIL, email, reason=BlockReason.OPTED_OUT, method=BlockMethod.UNSUBSCRIBE_LINK, now=NOW, escalate=False
    )
    assert block is not None
    feed = feed_services.issue_feed(clinic=clinic, label=f"Board {name}", by=owner, now=NOW)
    endpoint = webhook_services.create_endpoint(clinic=clinic, url="https://93.184.216.34/hooks", by=owner)
    second = implanted_pump(patient=screened_patient(clinic=clinic))
    visit = appointments.book_appointment(second, datetime(2027, 2, 2, 10, tzinfo=UTC), "Room 1", "", owner, NOW)
    return Site(
        clinic=clinic,
        patient=patient,
        pump=pump,
        screened=screened,
        escalation=escalation,
        message=Message.objects.filter(pump=pump).order_by("pk").first() or Message.objects.get(pk=-1),
        block=block,
        feed=feed,
        endpoint=endpoint,
        visit=visit,
    )


def build_world() -> World:
    owner = UserFactory(is_staff=True)
    sites = {
        "A": build_site("Clinic A", "MRN-A-5523", "a.patient@example.org", owner),
        "B": build_site("Clinic B", "MRN-B-SECRET-9182", "b.patient@example.org", owner),
    }
    elsewhere = ClinicFactory(name="Clinic C")
    users: dict[tuple[str, str], Any] = {}
    for role in ROLES:
        pure = UserFactory(is_staff=True, username=f"{role}-pure")
        MembershipFactory(user=pure, clinic=sites["A"].clinic, role=role)
        mixed = UserFactory(is_staff=True, username=f"{role}-mixed")
        MembershipFactory(user=mixed, clinic=sites["A"].clinic, role=role)
        MembershipFactory(user=mixed, clinic=elsewhere, role=Role.CLINICIAN)
        users[(role, "pure")], users[(role, "mixed")] = pure, mixed
    superuser = UserFactory(is_staff=True, is_superuser=True, username="root")
    outsiders = {"inactive": UserFactory(is_staff=True, username="left"), "not-staff": UserFactory(username="patient-user")}
    for user in outsiders.values():
        MembershipFactory(user=user, clinic=sites["A"].clinic, role=Role.CLINICIAN)
    world = World(sites=sites, users=users, superuser=superuser, outsiders=outsiders)
    for user in [*users.values(), superuser, *outsiders.values()]:
        world.keys[user.pk] = token_for(user)
    world.read_only_key = token_for(users[(Role.CLINICIAN, "pure")], read_only=True)
    # Deactivated after the token was issued: the token must stop working with the account.
    outsiders["inactive"].is_active = False
    outsiders["inactive"].save(update_fields=["is_active"])
    return world


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    # The factories' clinical dates are in 2027: the whole module runs at the visit's NOW.
    with time_machine.travel(NOW, tick=False), django_db_blocker.unblock(), transaction.atomic():
        built = build_world()
        yield built
        transaction.set_rollback(True)


# Every table a write in this matrix can touch; fields that reads themselves update are left out.
WATCHED = [
    Clinic,
    Patient,
    Caregiver,
    Pump,
    Catheter,
    ScreeningTrial,
    Program,
    Refill,
    ClinicalEvent,
    Appointment,
    OutreachAttempt,
    Escalation,
    Message,
    ContactBlock,
    CalendarFeed,
    WebhookEndpoint,
    ApiToken,
]
VOLATILE = {"last_used_at", "last_fetched_at"}


def fingerprint() -> str:
    """A digest of every watched row (one query): equal before and after = nothing written."""
    volatile = "".join(f" - '{name}'" for name in sorted(VOLATILE))
    parts = [
        f"(SELECT md5(coalesce(string_agg((to_jsonb(t){volatile})::text, ',' ORDER BY t.id), '')) FROM {m._meta.db_table} t)"  # noqa: S608
        for m in WATCHED
    ]
    with connection.cursor() as cursor:
        # Table and column names from our own models, no input: nothing to inject.
        cursor.execute("SELECT " + " || ".join(parts))
        return str(cursor.fetchone()[0])


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """One request (or one form's two submits) that performs an action through one face.

    kind: "detail" reads one record (another clinic's: 404), "list" reads a list (another
    clinic's rows left out), "write" changes something, "reveal" shows a secret only to
    the roles the cell allows. `effect` (writes only): what the write changes, when it is
    narrower than every watched table (a field only some roles may set).
    """

    face: str  # admin, api, fhir, workspace
    name: str
    kind: str
    run: Callable[[Any, Site], Any]
    effect: Callable[[Site], Any] | None = None
    secret: Callable[[Site], str] | None = None
    # Lists: whether the answer holds the site's records (default: its patient's MRN).
    shows: Callable[[Any, Site], bool] | None = None


def counted(response: Any, site: Site) -> bool:
    return bool(response.json()["count"])


def bundled(response: Any, site: Site) -> bool:
    return bool(response.json()["total"])


def admin_change(http: Client, url: str, **changes: Any) -> Any:
    """Post an admin change page back as shown, with `changes`; a page that cannot be shown
    (another clinic's object) gets the bare changes posted."""
    page = http.get(url)
    if page.status_code == 200 and page.context and "adminform" in page.context:
        return http.post(url, as_shown(page, **changes))
    return http.post(url, {**changes, "_save": "Save"})


def two_step(http: Client, url: str, data: dict[str, Any]) -> Any:
    """The admin's preview forms: the first submit shows the result, the second saves it."""
    first = http.post(url, data)
    if first.status_code != 200 or not first.context or "adminform" not in first.context:
        return first
    token = first.context["adminform"].form.data.get("preview_token", "")
    return http.post(url, {**data, "preview_token": token})


def moment(prefix: str, at: Any) -> dict[str, str]:
    parts = split_moment(at)
    return {f"{prefix}_0": parts["0"], f"{prefix}_1": parts["1"]}


def patient_form(s: Site, **fields: Any) -> dict[str, Any]:
    data = {
        "clinic": s.clinic.pk,
        "mrn": "NEW-PATIENT-1",
        "given_name": "Noor",
        "family_name": "Newcomer",
        "birth_date": "1975-03-02",
        "diagnosis": "ms",
        "spasticity_origin": "spinal",
        "language": "en",
        "time_zone": "",
        "email": "",
        "phone": "",
        "contact_by_email": "on",
        "caregivers-TOTAL_FORMS": "0",
        "caregivers-INITIAL_FORMS": "0",
        "caregivers-MIN_NUM_FORMS": "0",
        "caregivers-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    data.update(fields)
    return data


def caregiver_rows(s: Site) -> list[dict[str, Any]]:
    rows = [{"id": c.pk, "name": c.name} for c in s.patient.caregivers.all()]
    return [*rows, {"name": "Added Carer", "relationship": "son"}]


def clinical_effect(s: Site) -> Any:
    return (
        list(Patient.objects.filter(pk=s.patient.pk).values_list("birth_date", "diagnosis")),
        Patient.objects.filter(screened_elsewhere=True).count(),
    )


def clinic_effect(*names: str) -> Callable[[Site], Any]:
    return lambda s: list(Clinic.objects.filter(pk=s.clinic.pk).values_list(*names))


MESSAGE_POLICY = clinic_effect("reminder_time", "notification_email")
REFILL_POLICY = clinic_effect("refill_margin_days", "phone")
ON_TIME = "2027-02-02T10:00:00Z"
VISIT = VISIT_AT.isoformat()
HOOK_URL = "https://93.184.216.34/new-hook"


def _pump_url(s: Site, suffix: str = "change/") -> str:
    return f"/admin/pumps/pump/{s.pump.pk}/{suffix}"


PROBES: dict[str, list[Probe]] = {
    "read": [
        Probe("admin", "patient-page", "detail", lambda h, s: h.get(f"/admin/patients/patient/{s.patient.pk}/change/")),
        Probe("admin", "pump-page", "detail", lambda h, s: h.get(_pump_url(s))),
        # A record's history page (the audit trail) is scoped like the record itself.
        Probe("admin", "patient-history", "detail", lambda h, s: h.get(f"/admin/patients/patient/{s.patient.pk}/history/")),
        Probe("admin", "pump-history", "detail", lambda h, s: h.get(_pump_url(s, "history/"))),
        Probe("admin", "pump-list", "list", lambda h, s: h.get("/admin/pumps/pump/")),
        Probe(
            "admin", "escalation-page", "detail", lambda h, s: h.get(f"/admin/notifications/escalation/{s.escalation.pk}/change/")
        ),
        Probe("admin", "feed-page", "detail", lambda h, s: h.get(f"/admin/integrations/calendarfeed/{s.feed.pk}/change/")),
        Probe("admin", "worksheet", "detail", lambda h, s: h.get(_pump_url(s, "worksheet/"))),
        Probe("api", "patient", "detail", lambda h, s: h.get(f"/api/v1/patients/{s.patient.pk}/")),
        Probe("api", "patients", "list", lambda h, s: h.get("/api/v1/patients/?page_size=500")),
        Probe("api", "pump", "detail", lambda h, s: h.get(f"/api/v1/pumps/{s.pump.pk}/")),
        Probe("api", "refills-of-pump", "list", lambda h, s: h.get(f"/api/v1/refills/?pump={s.pump.pk}"), shows=counted),
        Probe("api", "escalation", "detail", lambda h, s: h.get(f"/api/v1/escalations/{s.escalation.pk}/")),
        Probe("api", "feed", "detail", lambda h, s: h.get(f"/api/v1/calendar-feeds/{s.feed.pk}/")),
        Probe("api", "webhook-endpoint", "detail", lambda h, s: h.get(f"/api/v1/webhook-endpoints/{s.endpoint.pk}/")),
    ],
    "messages": [
        Probe("admin", "message-page", "detail", lambda h, s: h.get(f"/admin/notifications/message/{s.message.pk}/change/")),
        Probe("api", "message", "detail", lambda h, s: h.get(f"/api/v1/messages/{s.message.pk}/")),
        Probe("api", "messages-of-pump", "list", lambda h, s: h.get(f"/api/v1/messages/?pump={s.pump.pk}"), shows=counted),
    ],
    "patient": [
        Probe("admin", "add", "write", lambda h, s: h.post("/admin/patients/patient/add/", patient_form(s))),
        Probe(
            "admin",
            "change-name",
            "write",
            lambda h, s: admin_change(h, f"/admin/patients/patient/{s.patient.pk}/change/", family_name="Renamed"),
        ),
        Probe("api", "add", "write", lambda h, s: h.post("/api/v1/patients/", _api_patient(s), format="json")),
        Probe(
            "api",
            "change-contact",
            "write",
            lambda h, s: h.patch(f"/api/v1/patients/{s.patient.pk}/", {"phone": "+442071234567"}, format="json"),
        ),
    ],
    "caregivers": [
        Probe(
            "admin",
            "add-caregiver",
            "write",
            lambda h, s: admin_change(
                h,
                f"/admin/patients/patient/{s.patient.pk}/change/",
                **{"caregivers-TOTAL_FORMS": "2", "caregivers-1-name": "Added Carer", "caregivers-1-language": "en"},
            ),
        ),
        Probe(
            "api",
            "add-caregiver",
            "write",
            lambda h, s: h.patch(f"/api/v1/patients/{s.patient.pk}/", {"caregivers": caregiver_rows(s)}, format="json"),
        ),
    ],
    "patient-clinical": [
        Probe(
            "admin",
            "add-screened-elsewhere",
            "write",
            lambda h, s: h.post("/admin/patients/patient/add/", patient_form(s, screened_elsewhere="on")),
            effect=clinical_effect,
        ),
        Probe(
            "admin",
            "change-birth-date",
            "write",
            lambda h, s: admin_change(h, f"/admin/patients/patient/{s.patient.pk}/change/", birth_date="1981-05-17"),
            effect=clinical_effect,
        ),
        Probe(
            "api",
            "add-screened-elsewhere",
            "write",
            lambda h, s: h.post("/api/v1/patients/", {**_api_patient(s), "screened_elsewhere": True}, format="json"),
            effect=clinical_effect,
        ),
        Probe(
            "api",
            "change-diagnosis",
            "write",
            lambda h, s: h.patch(
                f"/api/v1/patients/{s.patient.pk}/", {"diagnosis": "sci", "birth_date": "1981-05-17"}, format="json"
            ),
            effect=clinical_effect,
        ),
    ],
    "contact-block": [
        Probe(
            "admin",
            "lift",
            "write",
            lambda h, s: h.post(
                "/admin/notifications/contactblock/",
                {"action": "lift", "_selected_action": [s.block.pk], "apply": "1", "confirmed": "on"},
            ),
        ),
    ],
    "implant": [
        Probe(
            "admin",
            "add",
            "write",
            lambda h, s: h.post(
                "/admin/pumps/pump/add/",
                {
                    "patient": s.screened.pk,
                    "model": pump_model().pk,
                    "serial_number": "NEW-SERIAL-1",
                    "udi": "",
                    **moment("implanted_at", VISIT_AT),
                    "implanting_physician": "",
                    "following_physician": "",
                    "low_reservoir_alarm_ml": "",
                    "estimated_end_of_service_on": "",
                    "_save": "Save",
                },
            ),
        ),
        Probe(
            "admin",
            "explant",
            "write",
            lambda h, s: h.post(
                _pump_url(s, "end/"), {"status": "explanted", "explanted_on": "2027-02-01", "explant_reason": "Infection"}
            ),
        ),
        Probe(
            "api",
            "add",
            "write",
            lambda h, s: h.post(
                "/api/v1/pumps/",
                {"patient": s.screened.pk, "model": pump_model().pk, "serial_number": "NEW-SERIAL-1", "implanted_at": VISIT},
                format="json",
            ),
        ),
        Probe(
            "admin",
            "add-catheter",
            "write",
            lambda h, s: admin_change(
                h,
                _pump_url(s),
                **{"catheters-TOTAL_FORMS": "1", "catheters-0-model": "8709SC", "catheters-0-tip_level": "T10"},
            ),
        ),
        Probe(
            "api",
            "explant",
            "write",
            lambda h, s: h.post(
                f"/api/v1/pumps/{s.pump.pk}/end/",
                {"status": "explanted", "explanted_on": "2027-02-01", "explant_reason": "Infection"},
                format="json",
            ),
        ),
    ],
    "screening": [
        Probe(
            "admin",
            "add",
            "write",
            lambda h, s: h.post(
                "/admin/pumps/screeningtrial/add/",
                {
                    "patient": s.screened.pk,
                    **moment("given_at", VISIT_AT),
                    "dose_mcg": "50",
                    "route": "lp",
                    "outcome": "pending",
                    "effect_duration_hours": "",
                    "notes": "",
                    "_save": "Save",
                },
            ),
        ),
        Probe(
            "api",
            "add",
            "write",
            lambda h, s: h.post(
                "/api/v1/screenings/",
                {"patient": s.screened.pk, "given_at": VISIT, "dose_mcg": 50, "route": "lp"},
                format="json",
            ),
        ),
    ],
    "dose": [
        Probe(
            "admin",
            "program",
            "write",
            lambda h, s: two_step(
                h,
                "/admin/pumps/program/add/",
                {
                    "pump": s.pump.pk,
                    **moment("effective_at", VISIT_AT),
                    "mode": "simple",
                    "dose_mcg_per_day": "210",
                    "concentration_mcg_per_ml": "500",
                    "flex_steps": "[]",
                    "basal_mcg_per_day": "",
                    "bolus_mcg": "",
                    "boluses_per_day": "",
                    "reason": "",
                    "_save": "Save",
                },
            ),
        ),
        Probe(
            "api",
            "program",
            "write",
            lambda h, s: h.post(
                "/api/v1/programs/",
                {"pump": s.pump.pk, "effective_at": VISIT, "dose_mcg_per_day": "210", "concentration_mcg_per_ml": "500"},
                format="json",
            ),
        ),
    ],
    "phase": [
        Probe("admin", "stable-dose", "write", lambda h, s: h.post(_pump_url(s, "phase/"), {"phase": "maintenance"})),
        Probe(
            "api",
            "stable-dose",
            "write",
            lambda h, s: h.post(f"/api/v1/pumps/{s.pump.pk}/phase/", {"phase": "maintenance"}, format="json"),
        ),
    ],
    "refill": [
        Probe("admin", "record", "write", lambda h, s: two_step(h, "/admin/pumps/refill/add/", refill_data(s.pump))),
        Probe(
            "api",
            "record",
            "write",
            lambda h, s: h.post(
                "/api/v1/refills/",
                {
                    "pump": s.pump.pk,
                    "performed_at": VISIT,
                    "withdrawn_ml": "28.80",
                    "volume_added_ml": "40.00",
                    "concentration_mcg_per_ml": "500",
                },
                format="json",
            ),
        ),
    ],
    "event": [
        Probe(
            "admin",
            "record",
            "write",
            lambda h, s: h.post(
                "/admin/pumps/clinicalevent/add/",
                {
                    "pump": s.pump.pk,
                    "kind": "low_reservoir_alarm",
                    **moment("occurred_at", VISIT_AT),
                    "field_strength_tesla": "",
                    "notes": "",
                    "_save": "Save",
                },
            ),
        ),
        Probe(
            "api",
            "record",
            "write",
            lambda h, s: h.post(
                "/api/v1/events/", {"pump": s.pump.pk, "kind": "low_reservoir_alarm", "occurred_at": VISIT}, format="json"
            ),
        ),
    ],
    "appointment": [
        Probe(
            "admin",
            "book",
            "write",
            lambda h, s: h.post(
                "/admin/pumps/appointment/add/",
                {
                    "pump": s.pump.pk,
                    "starts_at_0": "2027-02-02",
                    "starts_at_1": "10:00:00",
                    "location": "Room 2",
                    "notes": "",
                    "reason": "",
                    "_save": "Save",
                },
            ),
        ),
        Probe(
            "api",
            "book",
            "write",
            lambda h, s: h.post("/api/v1/appointments/", {"pump": s.pump.pk, "starts_at": ON_TIME}, format="json"),
        ),
        Probe(
            "admin",
            "cancel",
            "write",
            lambda h, s: h.post(f"/admin/pumps/appointment/{s.visit.pk}/cancel/", {"cancellation_reason": "Unwell"}),
        ),
        Probe(
            "api",
            "reschedule",
            "write",
            lambda h, s: h.patch(f"/api/v1/appointments/{s.visit.pk}/", {"starts_at": "2027-02-02T14:00:00Z"}, format="json"),
        ),
        Probe(
            "api",
            "cancel",
            "write",
            lambda h, s: h.post(f"/api/v1/appointments/{s.visit.pk}/cancel/", {"cancellation_reason": "Unwell"}, format="json"),
        ),
    ],
    "outreach": [
        Probe(
            "workspace",
            "log",
            "write",
            lambda h, s: h.post(
                f"/work/outreach/{s.pump.pk}/",
                {"at": "2027-02-01T11:00", "channel": "phone", "outcome": "no_answer", "note": "Rang twice"},
            ),
        ),
    ],
    "escalation": [
        Probe(
            "admin",
            "acknowledge",
            "write",
            lambda h, s: h.post(
                f"/admin/notifications/escalation/{s.escalation.pk}/change/", {"resolution": "", "_acknowledge": "1"}
            ),
        ),
        Probe(
            "admin",
            "resolve",
            "write",
            lambda h, s: h.post(
                f"/admin/notifications/escalation/{s.escalation.pk}/change/", {"resolution": "Called, booked", "_resolve": "1"}
            ),
        ),
        Probe("api", "acknowledge", "write", lambda h, s: h.post(f"/api/v1/escalations/{s.escalation.pk}/acknowledge/")),
        Probe(
            "api",
            "resolve",
            "write",
            lambda h, s: h.post(
                f"/api/v1/escalations/{s.escalation.pk}/resolve/", {"resolution": "Called, booked"}, format="json"
            ),
        ),
    ],
    "message-policy": [
        Probe(
            "admin",
            "reminder-time",
            "write",
            lambda h, s: admin_change(
                h,
                f"/admin/patients/clinic/{s.clinic.pk}/change/",
                reminder_time="11:30:00",
                notification_email="desk@example.org",
            ),
            effect=MESSAGE_POLICY,
        ),
        Probe(
            "api",
            "reminder-time",
            "write",
            lambda h, s: h.patch(
                f"/api/v1/clinics/{s.clinic.pk}/",
                {"reminder_time": "11:30:00", "notification_email": "desk@example.org"},
                format="json",
            ),
            effect=MESSAGE_POLICY,
        ),
    ],
    "clinic-policy": [
        Probe(
            "admin",
            "refill-margin",
            "write",
            lambda h, s: admin_change(h, f"/admin/patients/clinic/{s.clinic.pk}/change/", refill_margin_days="5"),
            effect=REFILL_POLICY,
        ),
        Probe(
            "api",
            "refill-margin",
            "write",
            lambda h, s: h.patch(f"/api/v1/clinics/{s.clinic.pk}/", {"refill_margin_days": 5}, format="json"),
            effect=REFILL_POLICY,
        ),
    ],
    "feed": [
        Probe(
            "admin",
            "issue",
            "write",
            lambda h, s: h.post(
                "/admin/integrations/calendarfeed/add/", {"clinic": s.clinic.pk, "patient": "", "label": "Desk", "_save": "Save"}
            ),
        ),
        Probe(
            "admin",
            "revoke",
            "write",
            lambda h, s: h.post("/admin/integrations/calendarfeed/", {"action": "revoke", "_selected_action": [s.feed.pk]}),
        ),
        Probe(
            "api",
            "issue",
            "write",
            lambda h, s: h.post("/api/v1/calendar-feeds/", {"clinic": s.clinic.pk, "label": "Desk"}, format="json"),
        ),
        Probe("api", "rotate", "write", lambda h, s: h.post(f"/api/v1/calendar-feeds/{s.feed.pk}/rotate/")),
        Probe(
            "admin",
            "see-address",
            "reveal",
            lambda h, s: h.get(f"/admin/integrations/calendarfeed/{s.feed.pk}/change/"),
            secret=lambda s: feed_services.feed_path(s.feed),
        ),
        Probe(
            "api",
            "see-address",
            "reveal",
            lambda h, s: h.get(f"/api/v1/calendar-feeds/{s.feed.pk}/"),
            secret=lambda s: feed_services.feed_path(s.feed),
        ),
    ],
    "webhook": [
        Probe(
            "admin",
            "register",
            "write",
            lambda h, s: h.post(
                "/admin/webhooks/webhookendpoint/add/",
                {"clinic": s.clinic.pk, "url": HOOK_URL, "description": "", "_save": "Save"},
            ),
        ),
        Probe(
            "api",
            "register",
            "write",
            lambda h, s: h.post("/api/v1/webhook-endpoints/", {"clinic": s.clinic.pk, "url": HOOK_URL}, format="json"),
        ),
        Probe("api", "remove", "write", lambda h, s: h.delete(f"/api/v1/webhook-endpoints/{s.endpoint.pk}/")),
        Probe(
            "admin",
            "see-secret",
            "reveal",
            lambda h, s: h.get(f"/admin/webhooks/webhookendpoint/{s.endpoint.pk}/change/"),
            secret=lambda s: s.endpoint.secret,
        ),
        Probe(
            "api",
            "see-secret",
            "reveal",
            lambda h, s: h.get(f"/api/v1/webhook-endpoints/{s.endpoint.pk}/"),
            secret=lambda s: s.endpoint.secret,
        ),
    ],
    "token": [
        Probe(
            "admin",
            "create",
            "write",
            # A superuser's form also asks whose token it is: their own here.
            lambda h, s: h.post(
                "/admin/api/apitoken/add/",
                {"user": h.session["_auth_user_id"], "name": "laptop", "expires_at": "", "_save": "Save"},
            ),
        ),
        Probe("api", "create", "write", lambda h, s: h.post("/api/v1/tokens/", {"name": "laptop"}, format="json")),
    ],
    "fhir": [
        Probe("fhir", "patient", "detail", lambda h, s: h.get(f"/fhir/Patient/{s.patient.pk}")),
        Probe("fhir", "device", "detail", lambda h, s: h.get(f"/fhir/Device/{s.pump.pk}")),
        Probe(
            "fhir",
            "medication-request",
            "list",
            lambda h, s: h.get(f"/fhir/MedicationRequest?patient={s.patient.pk}"),
            shows=bundled,
        ),
        Probe("fhir", "patient-by-id", "list", lambda h, s: h.get(f"/fhir/Patient?_id={s.patient.pk}"), shows=bundled),
    ],
    "worklist": [
        Probe("workspace", "worklist", "list", lambda h, s: h.get("/work/")),
        Probe("workspace", "one-clinic", "detail", lambda h, s: h.get(f"/work/?clinic={s.clinic.pk}")),
        Probe("workspace", "csv", "list", lambda h, s: h.get("/work/worklist.csv")),
        Probe("workspace", "csv-one-clinic", "detail", lambda h, s: h.get(f"/work/worklist.csv?clinic={s.clinic.pk}")),
    ],
}


def _api_patient(s: Site) -> dict[str, Any]:
    return {
        "clinic": s.clinic.pk,
        "mrn": "NEW-PATIENT-1",
        "given_name": "Noor",
        "family_name": "Newcomer",
        "birth_date": "1975-03-02",
        "diagnosis": "ms",
        "spasticity_origin": "spinal",
    }


def test_every_readme_row_has_probes_and_every_probe_a_row() -> None:
    assert set(MATRIX) == set(PROBES)
    for key, row in MATRIX.items():
        assert set(row.values()) <= {"yes", "no", "n/a", "404"}, key


# ----------------------------------------------------------------------------- the cases

TOKEN_FACES = {"api", "fhir"}  # the faces an integration token reaches


@dataclass(frozen=True)
class Case:
    action: str
    probe: Probe
    actor: str  # a role, "read-only token" or "superuser"
    variant: str  # "pure" (role in A only), "mixed" (also a clinician in C), "token", "super"
    clinic: str  # "same" (A's records) or "other" (B's)
    allowed: bool

    @property
    def id(self) -> str:
        return f"{self.action}-{self.probe.face}-{self.probe.name}-{self.actor.replace(' ', '-')}-{self.variant}-{self.clinic}"


def cases() -> list[Case]:
    out: list[Case] = []
    for action, row in MATRIX.items():
        for probe in PROBES[action]:
            for role in ROLES:
                allowed = row[str(role)] == "yes"
                out.append(Case(action, probe, str(role), "pure", "same", allowed))
                if row["another clinic's member"] == "404":
                    out.append(Case(action, probe, str(role), "pure", "other", False))
                if not allowed and probe.kind != "detail":
                    # Refused here: a clinician's role in clinic C must not lend its rights.
                    out.append(Case(action, probe, str(role), "mixed", "same", False))
            if probe.face in TOKEN_FACES and row["read-only token"] != "n/a":
                out.append(Case(action, probe, "read-only token", "token", "same", row["read-only token"] == "yes"))
            out.append(Case(action, probe, "superuser", "super", "same", row["superuser"] == "yes"))
    return out


CASES = cases()


def client_for(world: World, case: Case) -> Any:
    if case.variant == "token":
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {world.read_only_key}")
        return api
    user = world.superuser if case.variant == "super" else world.users[(case.actor, case.variant)]
    if case.probe.face in TOKEN_FACES:
        if case.action == "token":
            # Tokens are created with a password or a signed-in session, never with a token.
            session = APIClient()
            session.force_authenticate(user)
            return session
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {world.keys[user.pk]}")
        return api
    http = Client()
    http.force_login(user)
    return http


def body(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_matrix(world: World, case: Case) -> None:
    site = world.sites["A" if case.clinic == "same" else "B"]
    other_mrn = world.sites["B"].patient.mrn
    probe = case.probe
    http = client_for(world, case)
    effect = probe.effect or (lambda s: fingerprint())
    before = effect(site) if probe.kind == "write" else None

    response = probe.run(http, site)
    status = response.status_code
    text = body(response)
    shows = probe.shows or (lambda r, s: s.patient.mrn in text)

    assert status < 500, f"server error {status}"
    if case.clinic == "other":
        # Never the other clinic's data, whatever the face or the answer.
        assert other_mrn not in text, "another clinic's patient appears in the answer"
    if probe.kind == "write":
        written = effect(site) != before
        if case.allowed:
            assert written, f"allowed, but nothing was written (status {status}: {text[:300]})"
            assert status in ({200, 201, 204} if probe.face in TOKEN_FACES else {200, 302}), status
        else:
            assert not written, f"refused, but something was written (status {status})"
            if case.variant == "token":
                assert status == 403, status
            elif probe.face in TOKEN_FACES:
                # 403 (role), 404 (another clinic's record), 400 (another clinic's id in the body).
                assert status in {400, 403, 404}, status
            if case.variant == "pure" and case.clinic == "same" and probe.face in TOKEN_FACES:
                assert status == 403, f"a role that may not write answers 403, got {status}"
    elif probe.kind == "reveal":
        secret = probe.secret(site) if probe.secret else ""
        assert status == 200 or case.clinic == "other", status
        shown = secret in text
        assert shown == (case.allowed and case.clinic == "same"), f"secret shown: {shown}"
    elif case.clinic == "other":
        if probe.kind == "detail":
            if probe.face == "admin":
                # The admin answers a missing object with a redirect to its index ("does not exist").
                assert status in {302, 404}, status
            else:
                assert status == 404, status
        else:
            assert status == 200, status
            assert not shows(response, site), "another clinic's records are listed"
    else:
        assert case.allowed, "the README refuses a read"
        assert status == 200, status
        if probe.kind == "list":
            assert shows(response, site), "the clinic's own records are missing from the list"


# ----------------------------------------------------------------------------- nobody else

OUTSIDER_PROBES = [
    probe
    for action in ("read", "refill", "dose", "fhir", "worklist", "token")
    for probe in PROBES[action]
    if probe.kind in ("detail", "write")
]


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["inactive", "not-staff"])
@pytest.mark.parametrize("probe", OUTSIDER_PROBES, ids=[f"{p.face}-{p.name}" for p in OUTSIDER_PROBES])
def test_inactive_and_non_staff_members_get_nothing(world: World, who: str, probe: Probe) -> None:
    """A clinician's membership is worth nothing on an inactive or non-staff account: the
    admin and the staff pages send them to the login page, the API and FHIR refuse them."""
    user, site = world.outsiders[who], world.sites["A"]
    if probe.face in TOKEN_FACES:
        http: Any = APIClient()
        http.credentials(HTTP_AUTHORIZATION=f"Token {world.keys[user.pk]}")
    else:
        http = Client()
        http.force_login(user)
    before = fingerprint()
    response = probe.run(http, site)
    assert site.patient.mrn not in body(response)
    assert fingerprint() == before
    if probe.face in TOKEN_FACES:
        assert response.status_code in {401, 403}, response.status_code
    else:
        assert response.status_code == 302 and "/admin/login/" in response["Location"], response.status_code


@pytest.mark.django_db
def test_a_colleagues_api_token_is_not_found(world: World) -> None:
    nurse, colleague = world.users[(Role.NURSE, "pure")], world.users[(Role.CLINICIAN, "pure")]
    theirs = ApiToken.objects.filter(user=colleague).first()
    assert theirs is not None
    http = Client()
    http.force_login(nurse)
    assert http.get(f"/api/v1/tokens/{theirs.pk}/").status_code == 404
    assert theirs.prefix not in body(http.get("/api/v1/tokens/"))
    page = http.get(f"/admin/api/apitoken/{theirs.pk}/change/")
    assert page.status_code == 302 and theirs.prefix not in body(page)


@pytest.mark.django_db
@pytest.mark.parametrize("button", ["_resolve", "_acknowledge"])
def test_acting_on_an_escalation_a_colleague_resolved_meanwhile_is_refused_not_a_server_error(world: World, button: str) -> None:
    escalation = world.sites["A"].escalation
    notification_services.resolve_escalation(escalation, by=world.superuser, now=NOW, resolution="Booked by phone")
    http = Client()
    http.force_login(world.users[(Role.NURSE, "pure")])
    before = fingerprint()
    page = http.post(f"/admin/notifications/escalation/{escalation.pk}/change/", {"resolution": "Me too", button: "1"})
    assert page.status_code == 200
    assert "already resolved" in body(page)
    assert fingerprint() == before


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["superuser", "clinician"])
def test_nobody_edits_the_message_outbox(world: World, who: str) -> None:
    """The outbox is the record of what was sent: read-only for every role, superusers too."""
    user = world.superuser if who == "superuser" else world.users[(Role.CLINICIAN, "pure")]
    message = world.sites["A"].message
    http = Client()
    http.force_login(user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {world.keys[user.pk]}")
    before = fingerprint()
    assert http.post(f"/admin/notifications/message/{message.pk}/change/", {"status": "cancelled"}).status_code == 403
    assert http.post(f"/admin/notifications/message/{message.pk}/delete/", {"post": "yes"}).status_code == 403
    # No write_label: refused (403) before the missing method (405) is even considered.
    assert api.patch(f"/api/v1/messages/{message.pk}/", {"status": "cancelled"}, format="json").status_code in {403, 405}
    assert api.delete(f"/api/v1/messages/{message.pk}/").status_code in {403, 405}
    assert fingerprint() == before


def test_the_clinic_pages_message_section_is_the_message_policy_coordinators_may_change() -> None:
    from patients.access import CLINIC_MESSAGE_POLICY_FIELDS
    from patients.admin import MESSAGE_POLICY_FIELDS

    shown = {name for row in MESSAGE_POLICY_FIELDS for name in ((row,) if isinstance(row, str) else row)}
    assert shown == CLINIC_MESSAGE_POLICY_FIELDS
