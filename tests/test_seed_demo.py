"""`manage.py seed_demo`: idempotent demo data whose pumps show every state on the day it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.db.models import Model, Q, QuerySet
from django.test import RequestFactory, override_settings

from notifications.models import (
    BlockMethod,
    BlockReason,
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Message,
    Severity,
    Status,
)
from patients.models import Caregiver, Clinic, Membership, Patient, Role
from pumps import domain
from pumps.management.commands.seed_demo import (
    ADMIN_USERNAME,
    CLINICS,
    DEFAULT_PASSWORD,
    DROPS_EMAIL,
    OPTS_OUT_BY_SMS,
    demo_addresses,
)
from pumps.models import (
    Catheter,
    ClinicalEvent,
    EventKind,
    MriRule,
    Phase,
    Program,
    ProgramMode,
    Pump,
    PumpStatus,
    Refill,
    ScreeningOutcome,
    ScreeningTrial,
)

pytestmark = pytest.mark.django_db

# The clock is frozen: an ordinary day, and (below) the spring DST change and an hour when
# London is still on Sunday and Madrid already on Monday, the night clocks went back.
NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)

# authenticate() as the login form calls it (django-axes needs the request).
LOGIN = RequestFactory().post("/admin/login/")


def seed(*args: str, at: datetime = NOW) -> str:
    out = StringIO()
    with time_machine.travel(at, tick=False):
        call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    models: list[type[Model]] = [
        Clinic, Membership, get_user_model(), Patient, Caregiver, ScreeningTrial, Pump, Catheter, Program, Refill, ClinicalEvent
    ]  # fmt: skip
    return {m.__name__: m._default_manager.count() for m in models}


def _remove_demo_data() -> None:
    clinics = Clinic.objects.filter(name__in=[c.name for c in CLINICS])
    pumps = Pump.objects.filter(patient__clinic__in=clinics)
    for model in (ClinicalEvent, Refill, Program):
        model.objects.filter(pump__in=pumps).delete()
    pumps.delete()
    Patient.objects.filter(clinic__in=clinics).delete()
    usernames = [ADMIN_USERNAME] + [c.username(role) for c in CLINICS for role in Role]
    clinics.delete()
    get_user_model().objects.filter(username__in=usernames).delete()
    ContactBlock.objects.filter(address__in=demo_addresses()).delete()


@pytest.fixture(scope="module")
def seeded(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """The command's output on its first run. Seeding takes seconds, so it runs once for
    the module and is committed; each test's own writes roll back, and the data is removed
    at the end so that no other module sees it."""
    # Nine logins hashed with PBKDF2 would dominate the run time.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]), django_db_blocker.unblock():
        try:
            yield seed()
        finally:
            _remove_demo_data()


# ---------------------------------------------------------------------------- idempotence


def test_it_creates_nothing_the_second_time(seeded: str) -> None:
    before = counts()
    seed()
    assert counts() == before
    assert before["Clinic"] == 2
    assert 18 <= before["Patient"] <= 22


def test_it_leaves_an_existing_patient_alone(seeded: str) -> None:
    patient = Patient.objects.get(mrn="RNR-1001")
    refills = set(Refill.objects.filter(pump__patient=patient).values_list("pk", "refill_by"))
    seed(at=NOW + timedelta(days=10))
    assert set(Refill.objects.filter(pump__patient=patient).values_list("pk", "refill_by")) == refills


def test_it_rebuilds_the_histories_for_today_with_reset(seeded: str) -> None:
    before = counts()
    old_patients = set(Patient.objects.values_list("pk", flat=True))
    later = NOW + timedelta(days=40)
    seed("--reset", at=later)
    assert counts() == before
    assert not old_patients & set(Patient.objects.values_list("pk", flat=True))
    assert _missing_states(later) == []
    assert _missing_message_states() == []


def test_it_replays_no_messages_over_existing_patients(seeded: str) -> None:
    before = set(Message.objects.values_list("pk", "status"))
    seed(at=NOW + timedelta(days=3))
    assert set(Message.objects.values_list("pk", "status")) == before


# ---------------------------------------------------------------------------- pump states


def _today(clinic: Clinic, now: datetime) -> date:
    return domain.local_date(now, clinic.tz)


def _days(n: int) -> timedelta:
    return timedelta(days=n)


# Each state as a filter on a clinic's active pumps, relative to that clinic's today.
STATES: dict[str, Callable[[date], Q]] = {
    "titration": lambda today: Q(phase=Phase.TITRATION, refill_by__gte=today),
    "maintenance, not due this month": lambda today: Q(phase=Phase.MAINTENANCE, refill_by__gt=today + _days(30)),
    "due this week": lambda today: Q(refill_by__gte=today, refill_by__lte=today + _days(6)),
    "due within 14 days": lambda today: Q(refill_by__gt=today + _days(6), refill_by__lte=today + _days(14)),
    "due within 30 days": lambda today: Q(refill_by__gt=today + _days(14), refill_by__lte=today + _days(30)),
    "overdue": lambda today: Q(refill_by__lt=today, alarm_on__gt=today),
    "past the alarm date": lambda today: Q(alarm_on__lt=today),
}


def _missing_states(now: datetime) -> list[str]:
    missing = []
    clinics = Clinic.objects.filter(name__in=[c.name for c in CLINICS])
    for state, condition in STATES.items():
        query = Q()
        for clinic in clinics:
            query |= condition(_today(clinic, now)) & Q(patient__clinic=clinic)
        if not Pump.objects.filter(query, status=PumpStatus.ACTIVE).exists():
            missing.append(state)
    return missing


def test_it_shows_every_pump_state_on_the_day_it_runs(seeded: str) -> None:
    assert _missing_states(NOW) == []


@pytest.mark.parametrize(
    "at",
    [datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 23, 30, tzinfo=UTC)],
    ids=["spring-dst-change", "clinics-on-different-dates"],
)
def test_it_shows_every_pump_state_whatever_the_day(seeded: str, at: datetime) -> None:
    seed("--reset", at=at)
    assert _missing_states(at) == []
    assert _missing_message_states() == []


# ---------------------------------------------------------------------------- messages and escalations

# Each escalation state the demo must show, as a filter.
ESCALATION_STATES: dict[str, Q] = {
    "open critical: alarm date reached": Q(
        status=EscalationStatus.OPEN, severity=Severity.CRITICAL, reason=EscalationReason.ALARM_DATE_REACHED
    ),
    "open: refill overdue": Q(status=EscalationStatus.OPEN, reason=EscalationReason.OVERDUE),
    "open: no usable contact": Q(status=EscalationStatus.OPEN, reason=EscalationReason.NO_USABLE_CONTACT),
    "acknowledged": Q(status=EscalationStatus.ACKNOWLEDGED, acknowledged_by__isnull=False),
    "resolved with a note": Q(status=EscalationStatus.RESOLVED, resolved_by__isnull=False) & ~Q(resolution=""),
}


def _missing_message_states() -> list[str]:
    demo = Q(clinic__name__in=[c.name for c in CLINICS])
    missing = [s.value for s in Status if not Message.objects.filter(demo, status=s).exists()]
    return missing + [name for name, q in ESCALATION_STATES.items() if not Escalation.objects.filter(demo & q).exists()]


def test_it_shows_messages_in_every_state_and_escalations_being_handled(seeded: str) -> None:
    assert _missing_message_states() == []


def test_it_keeps_the_text_and_attempts_of_what_was_sent(seeded: str) -> None:
    delivered = Message.objects.filter(status=Status.DELIVERED)
    assert delivered.exists()
    for message in delivered:
        assert message.rendered_body and message.delivered_at and message.provider_id
        assert message.attempts.filter(outcome="sent").count() == 1


def test_it_leaves_a_crashed_send_claimed_with_its_attempt_in_flight(seeded: str) -> None:
    (message,) = Message.objects.filter(status=Status.SENDING)
    assert message.claim_expires_at is not None and message.claim_expires_at <= NOW  # the next sweep takes it back
    assert message.attempts.get().outcome == "in_flight"


def test_it_records_an_sms_stop_and_stops_texting_that_patient(seeded: str) -> None:
    patient = Patient.objects.get(mrn=OPTS_OUT_BY_SMS)
    block = ContactBlock.objects.get(address=str(patient.phone), lifted_at=None)
    assert (block.reason, block.method, block.keyword) == (BlockReason.OPTED_OUT, BlockMethod.SMS_KEYWORD, "STOP")
    pending = Message.objects.filter(patient=patient, channel="sms", status__in=[Status.PLANNED, Status.DUE])
    assert not pending.exists()
    assert Message.objects.filter(patient=patient, channel="sms", status=Status.SUPPRESSED).exists()
    assert Message.objects.filter(patient=patient, channel="email", status=Status.PLANNED).exists()


def test_it_cancels_the_emails_of_a_patient_whose_address_was_removed(seeded: str) -> None:
    patient = Patient.objects.get(mrn=DROPS_EMAIL)
    assert patient.email == ""
    emails = Message.objects.filter(patient=patient, channel="email")
    assert emails.filter(status=Status.CANCELLED).exists()
    assert not emails.filter(status__in=[Status.PLANNED, Status.DUE]).exists()


def test_it_has_a_patient_with_no_contact_and_tells_staff(seeded: str) -> None:
    patient = Patient.objects.get(email="", phone="", caregivers=None)
    assert not Message.objects.filter(patient=patient).exclude(recipient_kind="staff").exists()
    assert Escalation.objects.filter(patient=patient, reason=EscalationReason.NO_USABLE_CONTACT).exists()


def test_it_gives_the_clinics_an_escalation_address_and_a_phone(seeded: str) -> None:
    for clinic in Clinic.objects.filter(name__in=[c.name for c in CLINICS]):
        assert clinic.notification_email and clinic.phone
        assert Message.objects.filter(clinic=clinic, recipient_kind="staff", address=clinic.notification_email).exists()


def test_it_writes_spanish_messages_for_spanish_speakers(seeded: str) -> None:
    assert Message.objects.filter(patient__language="es", language="es").exists()
    assert not Message.objects.filter(patient__language="es", recipient_kind="patient").exclude(language="es").exists()


def test_it_shows_an_explanted_pump(seeded: str) -> None:
    pump = Pump.objects.get(status=PumpStatus.EXPLANTED)
    assert pump.explanted_on and pump.explant_reason
    assert (pump.alarm_on, pump.refill_by) == (None, None)
    assert not pump.patient.pumps.filter(status=PumpStatus.ACTIVE).exists()


def test_it_shows_a_replaced_pump_and_its_successor(seeded: str) -> None:
    old = Pump.objects.get(status=PumpStatus.REPLACED)
    successor = old.patient.pumps.get(status=PumpStatus.ACTIVE)
    assert successor.implanted_at.date() >= old.explanted_on
    assert successor.refill_by is not None


def test_it_flags_a_residual_discrepancy_over_two_ml(seeded: str) -> None:
    flagged = Refill.objects.filter(discrepancy_flagged=True)
    assert flagged.exists()
    assert all(abs(r.discrepancy_ml) > 2 for r in flagged)


def test_it_flags_no_other_refill(seeded: str) -> None:
    # Measurement noise must stay inside the 2 mL limit and the accuracy band.
    assert Refill.objects.filter(discrepancy_flagged=True).count() == 2


def test_it_uses_every_seeded_pump_model(seeded: str) -> None:
    used = set(Pump.objects.values_list("model__model_number", flat=True))
    assert used == {"8637-20", "8637-40", "13827", "16827"}


# ---------------------------------------------------------------------------- programs, screening, events


def test_it_records_flex_and_periodic_bolus_programs(seeded: str) -> None:
    assert Program.objects.filter(mode=ProgramMode.FLEX).exclude(flex_steps=[]).exists()
    assert Program.objects.filter(mode=ProgramMode.PERIODIC_BOLUS, boluses_per_day__gt=0).exists()


def test_it_records_an_acknowledged_dose_change_with_its_reason(seeded: str) -> None:
    program = Program.objects.get(acknowledged_warnings=["increase_over_limit"])
    assert program.reason
    assert program.dose_mcg_per_day > program.previous_dose_mcg_per_day


def test_it_records_a_positive_75_mcg_screening_after_a_negative_one(seeded: str) -> None:
    for trial in ScreeningTrial.objects.filter(dose_mcg=75, outcome=ScreeningOutcome.POSITIVE):
        earlier = trial.patient.screening_trials.filter(
            outcome=ScreeningOutcome.NEGATIVE, given_at__lte=trial.given_at - _days(1)
        )
        if earlier.exists():
            return
    pytest.fail("no positive 75 mcg trial follows a negative one by 24 h")


@pytest.mark.parametrize(
    ("kind", "condition"),
    [
        (EventKind.LOW_RESERVOIR_ALARM, Q()),
        (EventKind.MRI_PLANNED, Q(occurred_at__gt=NOW, pump__model__mri_rule=MriRule.CHECK_AFTER)),
        (EventKind.POST_MRI_CHECK, Q()),
    ],
)
def test_it_records_clinical_events(seeded: str, kind: EventKind, condition: Q) -> None:
    assert ClinicalEvent.objects.filter(condition, kind=kind).exists()


def _not_after(qs: QuerySet[Any], field: str, now: datetime) -> bool:
    return not qs.filter(**{f"{field}__gt": now}).exists()


def test_it_records_nothing_in_the_future_but_a_planned_mri(seeded: str) -> None:
    assert _not_after(Refill.objects.all(), "performed_at", NOW)
    assert _not_after(Program.objects.all(), "effective_at", NOW)
    assert _not_after(ScreeningTrial.objects.all(), "given_at", NOW)
    assert _not_after(Pump.objects.all(), "implanted_at", NOW)
    assert _not_after(ClinicalEvent.objects.exclude(kind=EventKind.MRI_PLANNED), "occurred_at", NOW)


def test_it_gives_patients_an_origin_consistent_with_their_diagnosis(seeded: str) -> None:
    from patients.models import ORIGIN_BY_DIAGNOSIS

    for patient in Patient.objects.all():
        assert patient.spasticity_origin == ORIGIN_BY_DIAGNOSIS[patient.diagnosis], patient.mrn
    assert {p.language for p in Patient.objects.all()} == {"en", "es"}


# ---------------------------------------------------------------------------- logins


def test_it_gives_every_role_a_login_in_each_clinic(seeded: str) -> None:
    for spec in CLINICS:
        for role in Role:
            membership = Membership.objects.get(clinic__name=spec.name, role=role)
            user = authenticate(LOGIN, username=membership.user.username, password=DEFAULT_PASSWORD)
            assert user is not None and user.is_staff, membership.user.username


def test_it_creates_a_superuser_admin(seeded: str) -> None:
    user = authenticate(LOGIN, username="admin", password=DEFAULT_PASSWORD)
    assert user is not None and user.is_superuser


def test_it_sets_the_password_given(seeded: str) -> None:
    seed("--password", "another-demo-pass")
    assert authenticate(LOGIN, username="nurse2", password="another-demo-pass") is not None


def test_it_prints_the_logins_and_where_to_sign_in_every_run(seeded: str) -> None:
    for output in (seeded, seed()):
        assert "/admin/" in output
        assert DEFAULT_PASSWORD in output
        assert "\n  admin " in output
        for membership in Membership.objects.select_related("user", "clinic"):
            assert membership.user.username in output
            assert membership.clinic.name in output


def test_it_prints_a_summary_without_a_line_per_patient(seeded: str) -> None:
    assert "RNR-1001" not in seeded
    assert len(seeded.splitlines()) < 25


def test_it_is_silent_at_verbosity_zero(seeded: str) -> None:
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("seed_demo", verbosity=0, stdout=out)
    assert out.getvalue() == ""
