"""What each message carries: the minimum a person needs to act, and the safety content.

Every kind of message the planner makes (refill reminders with and without a booked
visit, overdue, withdrawal, heat, alcohol and MRI warnings, the caregivers' copies, the
staff escalation email) is planned for a patient with distinctive details and rendered
by `services.render`, as the worker renders it, in English and Spanish, for email and
SMS. The policy is README "What messages contain".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest
import time_machine
from django.core import signing
from factories import IMPLANTED_AT, CaregiverFactory, ClinicFactory, implanted_pump, screened_patient

from notifications import services
from notifications.models import Channel, Kind, Message, RecipientKind
from notifications.transports import Outgoing
from patients.models import Diagnosis
from pumps import appointments
from pumps import services as pump_services
from pumps.models import EventKind, Pump

pytestmark = pytest.mark.django_db

CLINIC_PHONE = "+442071838750"
GIVEN, FAMILY, MRN = "Wilhelmina", "Quarrington-Zedd", "MRN-QZ-77310"
BIRTH = date(1961, 3, 17)
CAREGIVER = "Bartholomew Oyelaran-Pike"
DOSE, STRENGTH = "437.5", "2000"
# A date of birth in the forms a text could show it.
BIRTH_FORMS = [BIRTH.isoformat(), "17 March 1961", "17 de marzo de 1961", "17/03/1961", "03/17/1961"]
DRUG = re.compile(r"baclof|lioresal|gablofen", re.IGNORECASE)
DOSE_TEXT = re.compile(r"\bmcg\b|µg|\bmg\b|\d\s*ml\b|/day|/día|437[.,]5|\b2000\b", re.IGNORECASE)
# Every diagnosis but "Other" (a word any text may use), and the condition's name.
DIAGNOSES = re.compile(
    "|".join(rf"\b{label}\b" for label in Diagnosis.labels if label != "Other") + r"|esclerosis|espastic|spastic",
    re.IGNORECASE,
)
NOW = IMPLANTED_AT + timedelta(hours=3)  # 2027-01-04 12:00 UTC: the implant's safety warnings are due


@dataclass
class Rendered:
    row: Message
    out: Outgoing

    @property
    def everything(self) -> str:
        """All the text that leaves pumptrack, but the recipient's own address."""
        return "\n".join([self.out.subject, self.out.text, self.out.html, *self.out.headers.values()])


def a_patient_pump(language: str) -> Pump:
    clinic = ClinicFactory(
        name="Riverside Pump Clinic",
        time_zone="Europe/London",
        phone=CLINIC_PHONE,
        notification_email="team@riverside.example.org",
        quiet_hours_start=time(0),
        quiet_hours_end=time(0),
    )
    patient = screened_patient(
        clinic=clinic,
        given_name=GIVEN,
        family_name=FAMILY,
        mrn=MRN,
        birth_date=BIRTH,
        diagnosis=Diagnosis.MULTIPLE_SCLEROSIS,
        language=language,
        email="wilhelmina.qz@example.org",
        phone="+447700900437",
        dose_mcg=100,
        screened_at=IMPLANTED_AT - timedelta(days=14),
    )
    CaregiverFactory(
        patient=patient,
        name=CAREGIVER,
        relationship="son",
        language=language,
        email="bart.op@example.org",
        phone="+447700900438",
        receives_safety_messages=True,
    )
    pump = implanted_pump(
        patient=patient,
        dose_mcg_per_day=DOSE,
        concentration_mcg_per_ml=STRENGTH,
        acknowledged=["initial_dose_unusual", "concentration_unusual"],
        reason="test",
    )
    with time_machine.travel(NOW, tick=False):
        pump_services.record_event(pump=pump, kind=EventKind.MRI_PLANNED, occurred_at=NOW + timedelta(days=5), now=NOW)
    return pump


def rendered(pump: Pump, now: datetime) -> list[Rendered]:
    services.replan_pumps([pump.pk], now)
    rows = Message.objects.filter(pump=pump).order_by("pk")
    return [Rendered(row, services.render(row)) for row in rows]


@pytest.fixture(params=["en", "es"])
def every_message(request: Any) -> Iterator[list[Rendered]]:
    """Each kind of message for one patient, her caregiver and her clinic, in one language."""
    pump = a_patient_pump(request.param)
    found = rendered(pump, NOW)  # implant warnings, reminders planned ahead
    with time_machine.travel(NOW, tick=False):
        appointments.book_appointment(pump, _visit(pump), "Room 4", "", None, NOW)
    found += rendered(pump, NOW)  # reminders now name the visit
    overdue_at = datetime.combine(pump.refill_by + timedelta(days=3), time(12), tzinfo=NOW.tzinfo)
    found += rendered(pump, overdue_at)  # overdue messages, the missed visit, staff emails
    yield found


def _visit(pump: Pump) -> datetime:
    assert pump.refill_by is not None
    return datetime.combine(pump.refill_by - timedelta(days=2), time(10), tzinfo=NOW.tzinfo)


def test_every_kind_is_rendered_for_patient_caregiver_and_staff(every_message: list[Rendered]) -> None:
    seen = {(r.row.recipient_kind, r.row.channel, r.row.kind) for r in every_message}
    for who in (RecipientKind.PATIENT, RecipientKind.CAREGIVER):
        for channel in (Channel.EMAIL, Channel.SMS):
            for kind in (Kind.OVERDUE, Kind.WITHDRAWAL_WARNING, Kind.MRI_WARNING):
                assert (who, channel, kind) in seen
    for channel in (Channel.EMAIL, Channel.SMS):
        for kind in (Kind.REFILL_REMINDER, Kind.HEAT_WARNING, Kind.ALCOHOL_WARNING):
            assert (RecipientKind.PATIENT, channel, kind) in seen
    assert (RecipientKind.STAFF, Channel.EMAIL, Kind.ESCALATION) in seen
    with_visit = [r for r in every_message if r.row.kind == Kind.REFILL_REMINDER and r.row.context.get("appointment_at")]
    without = [r for r in every_message if r.row.kind == Kind.REFILL_REMINDER and not r.row.context.get("appointment_at")]
    assert with_visit and without


def test_no_message_carries_surname_record_number_birth_date_diagnosis_or_dose(every_message: list[Rendered]) -> None:
    for r in every_message:
        text = r.everything
        assert FAMILY not in text and MRN not in text, (r.row, text)
        assert CAREGIVER not in text and "Bartholomew" not in text, (r.row, text)
        assert not [form for form in BIRTH_FORMS if form in text], (r.row, text)
        assert not DIAGNOSES.search(text), (r.row, text)
        assert not DOSE_TEXT.search(text), (r.row, text)
        # Nobody else's contact details (the unsubscribe link is opaque: it has no "@").
        others = {"wilhelmina.qz@example.org", "+447700900437", "bart.op@example.org", "+447700900438"} - {r.row.address}
        assert not [o for o in others if o in text], (r.row, text)


def test_sms_and_subject_lines_carry_no_name_drug_or_pump_model(every_message: list[Rendered]) -> None:
    """What a lock screen or an inbox list shows: no drug, no pump model, and no name but the
    patient's first name on a caregiver's text (they must know whose pump it is)."""
    for r in every_message:
        previews = {"subject": r.out.subject} | ({"sms": r.out.text} if r.row.channel == Channel.SMS else {})
        for part, line in previews.items():
            assert not DRUG.search(line), (r.row, line)
            assert "SynchroMed" not in line and "8637" not in line, (r.row, line)
            if r.row.recipient_kind == RecipientKind.CAREGIVER and part == "sms":
                assert GIVEN in line
            else:
                assert GIVEN not in line, (r.row, line)


def test_the_staff_email_names_the_task_and_links_to_the_record_without_the_patient(
    every_message: list[Rendered],
) -> None:
    staff = [r for r in every_message if r.row.kind == Kind.ESCALATION]
    assert staff
    for r in staff:
        assert GIVEN not in r.everything
        assert re.match(r"\[(WARNING|CRITICAL)\] \S", r.out.subject)
        assert f"/admin/notifications/escalation/{r.row.subject.removeprefix('escalation:')}/change/" in r.out.text
        assert f"patient {r.row.patient_id}, pump {r.row.pump_id}" in r.out.text


SAFETY = {
    # (kind, channel): what the text must still say, in each language.
    (Kind.OVERDUE, Channel.SMS): {"en": ["OVERDUE", CLINIC_PHONE, "hospital"], "es": ["ATRASADA", CLINIC_PHONE, "hospital"]},
    (Kind.OVERDUE, Channel.EMAIL): {
        "en": ["overdue", CLINIC_PHONE, "baclofen pump", "itching", "fever", "alarm"],
        "es": ["atrasada", CLINIC_PHONE, "bomba de baclofeno", "picor", "fiebre", "alarma"],
    },
    (Kind.WITHDRAWAL_WARNING, Channel.SMS): {"en": ["never miss", "fever", "hospital"], "es": ["no falte", "fiebre", "hospital"]},
    (Kind.WITHDRAWAL_WARNING, Channel.EMAIL): {
        "en": ["oral baclofen", "baclofen pump", "breathing", CLINIC_PHONE],
        "es": ["baclofeno oral", "bomba de baclofeno", "respiración", CLINIC_PHONE],
    },
    (Kind.HEAT_WARNING, Channel.SMS): {"en": ["hot tubs", CLINIC_PHONE], "es": ["jacuzzis", CLINIC_PHONE]},
    (Kind.ALCOHOL_WARNING, Channel.SMS): {"en": ["alcohol", CLINIC_PHONE], "es": ["alcohol", CLINIC_PHONE]},
    (Kind.MRI_WARNING, Channel.SMS): {"en": ["MRI", CLINIC_PHONE], "es": ["resonancia", CLINIC_PHONE]},
    # The MRI team must be told which pump: the model is in the email body, never its subject.
    (Kind.MRI_WARNING, Channel.EMAIL): {"en": ["SynchroMed", CLINIC_PHONE], "es": ["SynchroMed", CLINIC_PHONE]},
    (Kind.REFILL_REMINDER, Channel.SMS): {"en": [CLINIC_PHONE], "es": [CLINIC_PHONE]},
    (Kind.REFILL_REMINDER, Channel.EMAIL): {"en": [CLINIC_PHONE, "life-threatening"], "es": [CLINIC_PHONE, "peligro"]},
}


def test_the_safety_content_is_kept(every_message: list[Rendered]) -> None:
    checked = set()
    for r in every_message:
        wanted = SAFETY.get((r.row.kind, r.row.channel), {}).get(r.row.language, [])
        for phrase in wanted:
            assert phrase.lower() in f"{r.out.subject}\n{r.out.text}".lower(), (r.row, phrase, r.out.text)
        if r.row.kind == Kind.REFILL_REMINDER and r.row.context.get("appointment_at"):
            visit = datetime.fromisoformat(r.row.context["appointment_at"])
            assert f"{visit:%H:%M}" in r.out.text  # when to come
        if wanted:
            checked.add((r.row.kind, r.row.channel))
    assert checked == set(SAFETY)


def test_the_unsubscribe_link_names_the_message_not_the_address(every_message: list[Rendered]) -> None:
    """A link's path ends up in web server and proxy logs, and a signed token is readable."""
    emails = [r for r in every_message if r.row.channel == Channel.EMAIL and r.row.kind != Kind.ESCALATION]
    assert emails
    for r in emails:
        token = r.out.headers["List-Unsubscribe"].strip("<>").rstrip("/").rsplit("/", 1)[1]
        assert r.row.address not in json.dumps(signing.loads(token, salt=services.UNSUBSCRIBE_SALT))
        assert services.read_unsubscribe_token(token) == (Channel.EMAIL, r.row.address)


def test_a_caregiver_is_told_whose_pump_by_first_name_and_greeted_as_themselves(every_message: list[Rendered]) -> None:
    copies = [r for r in every_message if r.row.recipient_kind == RecipientKind.CAREGIVER]
    assert copies
    for r in copies:
        assert GIVEN in r.out.text, r.out.text
        if r.row.channel == Channel.EMAIL:
            assert f"Dear {GIVEN}" not in r.out.text and f"Estimado/a {GIVEN}" not in r.out.text
    patient_emails = [r for r in every_message if r.row.recipient_kind == RecipientKind.PATIENT and r.row.channel == "email"]
    assert all(GIVEN in r.out.text for r in patient_emails)  # the patient is greeted by first name
