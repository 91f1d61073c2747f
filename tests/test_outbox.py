"""The outbox against a real database: reconcile, dispatch, send, opt-outs, failures, escalations.

Email goes to Django's locmem outbox (pytest-django sets it up), SMS to the console
backend (read with `capsys`) or to a test transport defined here that implements our
`SmsBackend` interface. Every moment is explicit; where a re-plan runs from a commit hook
(which reads the clock, as production does), the clock is frozen at the test's moment.

The worked example (tests/factories.py): implanted and filled 2027-01-04 09:00 UTC,
refill by 2027-02-03, alarm on 2027-04-09; the clinic is in Europe/London (UTC in winter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core import mail, signing
from django.db.models import QuerySet
from factories import IMPLANTED_AT, ClinicFactory, UserFactory, fill, implanted_pump, screened_patient

from notifications import content, services
from notifications.models import (
    Attempt,
    AttemptOutcome,
    BlockMethod,
    BlockReason,
    Channel,
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Heartbeat,
    Kind,
    Message,
    RecipientKind,
    Severity,
    Status,
)
from notifications.transports import Outgoing, SmsBackend, TransportError
from patients.models import Clinic, Patient
from pumps import services as pump_services
from pumps.models import ClinicalEvent, EventKind, Pump, PumpStatus

LONDON = ZoneInfo("Europe/London")
NOW = IMPLANTED_AT + timedelta(hours=3)  # 2027-01-04 12:00 UTC
PHONE = "+442071234567"
EMAIL = "alex@example.org"
CLINIC_PHONE = "+442071234500"
TEAM = "team@clinic.example"
D14_AT = datetime(2027, 1, 20, 10, 0, tzinfo=LONDON)
OLD_CYCLE = "refill_by:2027-02-03"

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- helpers


def a_clinic(**fields: Any) -> Clinic:
    defaults: dict[str, Any] = {"time_zone": "Europe/London", "phone": CLINIC_PHONE, "notification_email": TEAM}
    return ClinicFactory(**{**defaults, **fields})


def a_pump(*, clinic: Clinic | None = None, email: str = EMAIL, phone: str = PHONE, **patient_fields: Any) -> Pump:
    """The worked example, for a patient reachable by email and SMS unless told otherwise."""
    patient = screened_patient(clinic=clinic or a_clinic(), email=email, phone=phone, **patient_fields)
    return implanted_pump(patient=patient)


def outbox(pump: Pump, **filters: Any) -> QuerySet[Message]:
    """The pump's patient and caregiver messages (not the staff emails)."""
    return Message.objects.filter(pump=pump, **filters).exclude(kind=Kind.ESCALATION)


def one(pump: Pump, **identity: Any) -> Message:
    return outbox(pump).get(**identity)


def replan(pump: Pump, now: datetime) -> services.ReconcileResult:
    return services.replan_pumps([pump.pk], now)


def send_due(now: datetime) -> dict[int, str]:
    """One dispatch sweep and every send it queues, as the workers would run them."""
    return {pk: services.send_message(pk, now).outcome for pk in services.dispatch_due(now)}


def statuses(pump: Pump, **filters: Any) -> dict[tuple[str, str, str], str]:
    return {(m.channel, m.cycle, m.stage): m.status for m in outbox(pump, kind=Kind.REFILL_REMINDER, **filters)}


def open_escalations(pump: Pump, reason: str) -> QuerySet[Escalation]:
    return Escalation.objects.filter(pump=pump, reason=reason, status=EscalationStatus.OPEN)


def record_event(pump: Pump, kind: str, occurred_at: datetime, now: datetime) -> ClinicalEvent:
    """Record a clinical event at `now`: its creation time (when an MRI was planned) is the clock's."""
    with time_machine.travel(now, tick=False):
        return pump_services.record_event(pump=pump, kind=kind, occurred_at=occurred_at, now=now)


@pytest.fixture
def committed_at(django_capture_on_commit_callbacks: Any) -> Callable[[datetime], Any]:
    """Run a block as a request would at `moment`: its commit hooks (the re-plan) run on exit."""

    @contextmanager
    def at(moment: datetime) -> Iterator[None]:
        with time_machine.travel(moment, tick=False), django_capture_on_commit_callbacks(execute=True):
            yield

    return at


# Test transports implementing our SmsBackend interface (settings.PUMPTRACK_SMS_BACKEND).


class FlakySms(SmsBackend):
    def send(self, out: Outgoing) -> str:
        raise TransportError("provider answered 503")


class DeadNumberSms(SmsBackend):
    def send(self, out: Outgoing) -> str:
        raise TransportError("Twilio 400 code 21211: invalid 'To' number", permanent=True)


class BrokenSms(SmsBackend):
    def send(self, out: Outgoing) -> str:
        raise RuntimeError("a bug in the backend")


# --------------------------------------------------------------------------- reconcile


def test_planning_twice_creates_nothing_twice() -> None:
    pump = a_pump()

    first = replan(pump, NOW)
    rows = outbox(pump).count()
    escalations = Escalation.objects.count()
    second = replan(pump, NOW)

    assert rows > 0 and first.created == rows
    assert outbox(pump).count() == rows
    assert Escalation.objects.count() == escalations
    assert second.created == 0
    services.plan_all(NOW)
    assert outbox(pump).count() == rows
    # Messages already sent are still in the plan: nothing is counted as created for them.
    assert set(send_due(NOW).values()) == {"sent", "deferred"}
    assert replan(pump, NOW + timedelta(minutes=1)).created == 0
    assert outbox(pump).count() == rows


def test_open_messages_follow_a_patient_who_moves_to_another_clinic() -> None:
    pump = a_pump()
    replan(pump, NOW)
    other = a_clinic()
    Patient.objects.filter(pk=pump.patient_id).update(clinic=other)

    replan(pump, NOW)

    assert set(outbox(pump, status=Status.PLANNED).values_list("clinic_id", flat=True)) == {other.pk}


def test_reconcile_never_touches_sent_messages() -> None:
    pump = a_pump()
    replan(pump, NOW)
    sent = one(pump, channel=Channel.EMAIL, kind=Kind.REFILL_REMINDER, stage="d14")
    Message.objects.filter(pk=sent.pk).update(status=Status.SENT, sent_at=D14_AT, rendered_body="as sent")
    before = Message.objects.get(pk=sent.pk)

    patient = pump.patient
    patient.email, patient.language = "new@example.org", "es"
    patient.save()
    Pump.objects.filter(pk=pump.pk).update(status=PumpStatus.EXPLANTED)  # everything obsolete
    replan(pump, D14_AT + timedelta(hours=1))

    after = Message.objects.get(pk=sent.pk)
    assert (after.status, after.address, after.language, after.due_at, after.updated_at, after.rendered_body) == (
        before.status,
        before.address,
        before.language,
        before.due_at,
        before.updated_at,
        "as sent",
    )
    assert set(outbox(pump).exclude(pk=sent.pk).values_list("status", flat=True)) == {Status.CANCELLED}


def test_refill_cancels_pending_reminders(committed_at: Any) -> None:
    pump = a_pump()
    replan(pump, NOW)
    Message.objects.filter(pump=pump, kind=Kind.REFILL_REMINDER, stage="d14").update(status=Status.SENT, sent_at=D14_AT)

    refill_at = IMPLANTED_AT + timedelta(days=21)  # 2027-01-25: 8.4 mL delivered, 31.6 mL left
    with committed_at(refill_at):
        refill = fill(pump, at=refill_at, withdrawn_ml="31.6", volume_added_ml="40")

    pump.refresh_from_db()
    assert pump.refill_by == date(2027, 2, 24)
    new_cycle = "refill_by:2027-02-24"
    assert statuses(pump) == {
        **{(ch, OLD_CYCLE, "d14"): Status.SENT for ch in ("email", "sms")},
        **{(ch, OLD_CYCLE, st): Status.CANCELLED for ch in ("email", "sms") for st in ("d7", "d2", "d0")},
        **{(ch, new_cycle, st): Status.PLANNED for ch in ("email", "sms") for st in ("d14", "d7", "d2", "d0")},
    }
    assert outbox(pump, kind=Kind.WITHDRAWAL_WARNING, cycle=f"refill:{refill.pk}").count() == 2


def test_a_dose_change_that_moves_refill_by_replans_the_reminders(committed_at: Any) -> None:
    pump = a_pump()
    replan(pump, NOW)

    changed_at = IMPLANTED_AT + timedelta(days=10)
    with committed_at(changed_at):
        pump_services.change_program(
            pump,
            pump_services.ProgramInput(
                effective_at=changed_at, dose_mcg_per_day=Decimal("240"), concentration_mcg_per_ml=Decimal("500")
            ),
            by=None,
            now=changed_at,
        )

    pump.refresh_from_db()
    assert pump.refill_by == date(2027, 2, 13)  # the programming visit restarts the titration interval
    assert statuses(pump) == {
        **{(ch, OLD_CYCLE, st): Status.CANCELLED for ch in ("email", "sms") for st in ("d14", "d7", "d2", "d0")},
        **{(ch, "refill_by:2027-02-13", st): Status.PLANNED for ch in ("email", "sms") for st in ("d14", "d7", "d2", "d0")},
    }


def test_a_cancelled_reminder_planned_again_is_reopened() -> None:
    """The clinic lengthens its titration interval, then reverts it: refill-by moves to
    13 February and back. The 3 February reminders were cancelled; they must go after all,
    although their identities already exist."""
    pump = a_pump()
    clinic = pump.patient.clinic
    replan(pump, NOW)
    for days, refill_by, at in (
        (40, date(2027, 2, 13), NOW + timedelta(hours=1)),
        (30, date(2027, 2, 3), NOW + timedelta(hours=2)),
    ):
        clinic.titration_interval_days = days
        clinic.save()
        pump_services.recompute_clinic(clinic)
        pump.refresh_from_db()
        assert pump.refill_by == refill_by
        replan(pump, at)

    assert statuses(pump) == {
        **{(ch, OLD_CYCLE, st): Status.PLANNED for ch in ("email", "sms") for st in ("d14", "d7", "d2", "d0")},
        **{(ch, "refill_by:2027-02-13", st): Status.CANCELLED for ch in ("email", "sms") for st in ("d14", "d7", "d2", "d0")},
    }
    assert one(pump, channel=Channel.SMS, cycle=OLD_CYCLE, stage="d7").due_at == datetime(2027, 1, 27, 10, 0, tzinfo=UTC)
    assert outbox(pump, channel=Channel.SMS, cycle=OLD_CYCLE, stage="d7").count() == 1


def test_explanting_a_pump_cancels_everything_open_and_resolves_its_escalations(committed_at: Any) -> None:
    pump = a_pump()
    pump_services.update_pump_details(pump, {"estimated_end_of_service_on": date(2027, 6, 1)})
    overdue_at = datetime(2027, 2, 5, 12, 0, tzinfo=UTC)
    replan(pump, overdue_at)
    assert open_escalations(pump, EscalationReason.OVERDUE).exists()
    assert open_escalations(pump, EscalationReason.BATTERY_PLANNING).exists()
    assert outbox(pump, kind=Kind.OVERDUE, status=Status.PLANNED).exists()

    with committed_at(overdue_at):
        pump_services.end_pump(pump, status=PumpStatus.EXPLANTED, on=date(2027, 2, 5), reason="Infection", now=overdue_at)

    assert not outbox(pump, status__in=[Status.PLANNED, Status.DUE, Status.FAILED, Status.SUPPRESSED]).exists()
    assert outbox(pump, status=Status.CANCELLED).count() > 0
    assert Escalation.objects.get(pump=pump, reason=EscalationReason.OVERDUE).status == EscalationStatus.RESOLVED
    # A battery task is a person's to close.
    assert open_escalations(pump, EscalationReason.BATTERY_PLANNING).exists()


def test_removing_the_patients_email_cancels_open_email_messages_and_restoring_it_brings_them_back() -> None:
    pump = a_pump()
    replan(pump, NOW)
    open_email = outbox(pump, channel=Channel.EMAIL, status=Status.PLANNED).count()
    open_sms = outbox(pump, channel=Channel.SMS, status=Status.PLANNED).count()

    patient = pump.patient
    patient.email = ""
    patient.save()
    replan(pump, NOW + timedelta(hours=1))

    assert outbox(pump, channel=Channel.EMAIL, status=Status.CANCELLED).count() == open_email
    assert outbox(pump, channel=Channel.SMS, status=Status.PLANNED).count() == open_sms

    patient.email = "alex.new@example.org"
    patient.save()
    replan(pump, NOW + timedelta(hours=2))

    reopened = outbox(pump, channel=Channel.EMAIL, kind=Kind.REFILL_REMINDER)
    assert {(m.status, m.address) for m in reopened} == {(Status.PLANNED, "alex.new@example.org")}


def test_a_patient_who_prefers_no_sms_gets_suppressed_sms_rows() -> None:
    pump = a_pump(contact_by_sms=False)
    replan(pump, NOW)

    assert set(outbox(pump, channel=Channel.SMS).values_list("status", "status_reason")) == {
        (Status.SUPPRESSED, "Patient prefers no SMS")
    }
    assert set(outbox(pump, channel=Channel.EMAIL).values_list("status", flat=True)) == {Status.PLANNED}


# --------------------------------------------------------------------------- dispatch and send


def test_due_messages_are_sent_once(capsys: pytest.CaptureFixture[str]) -> None:
    pump = a_pump(email="")
    replan(pump, NOW)
    Message.objects.filter(pump=pump, channel=Channel.SMS).exclude(stage="d14").delete()  # one SMS: no cap involved

    assert send_due(D14_AT - timedelta(minutes=1)) == {}
    first = send_due(D14_AT)
    second = send_due(D14_AT)
    later = send_due(D14_AT + timedelta(hours=1))

    sms = one(pump, stage="d14")
    assert first == {sms.pk: "sent"}
    assert second == {} and later == {}
    assert services.send_message(sms.pk, D14_AT + timedelta(hours=2)).outcome == "not_claimed"
    sms.refresh_from_db()
    assert (sms.status, sms.sent_at, sms.provider_id, sms.attempt_count) == (Status.SENT, D14_AT, f"console-{sms.pk}", 1)
    assert capsys.readouterr().out.count(f"--- SMS to {PHONE}") == 1
    assert [a.outcome for a in sms.attempts.all()] == [AttemptOutcome.SENT]


def test_emails_go_through_the_django_backend_once() -> None:
    pump = a_pump(phone="")
    replan(pump, NOW)

    outcomes = send_due(NOW)
    send_due(NOW)

    assert set(outcomes.values()) == {"sent"}
    assert len(outcomes) == 4  # the four implant warnings
    assert len(mail.outbox) == 4
    assert {m.to[0] for m in mail.outbox} == {EMAIL}
    assert len({m.extra_headers["Message-ID"] for m in mail.outbox}) == 4


def test_a_second_send_of_the_same_message_is_not_claimed() -> None:
    pump = a_pump(phone="")
    replan(pump, NOW)
    [pk, *_] = services.dispatch_due(NOW)

    assert services.send_message(pk, NOW).outcome == "sent"
    assert services.send_message(pk, NOW).outcome == "not_claimed"
    assert len(mail.outbox) == 1


def test_a_message_whose_claim_expired_can_be_claimed_again(settings: Any) -> None:
    settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS = 300
    pump = a_pump(phone="")
    replan(pump, NOW)
    [pk, *_] = services.dispatch_due(NOW)
    # A worker claimed it and died before sending: the row is left in SENDING.
    Message.objects.filter(pk=pk).update(
        status=Status.SENDING, claimed_at=NOW, claim_expires_at=NOW + timedelta(seconds=300), attempt_count=1
    )

    assert services.send_message(pk, NOW + timedelta(seconds=299)).outcome == "not_claimed"
    assert pk not in services.dispatch_due(NOW + timedelta(seconds=299))
    assert pk in services.dispatch_due(NOW + timedelta(seconds=300))
    assert services.send_message(pk, NOW + timedelta(seconds=300)).outcome == "sent"
    message = Message.objects.get(pk=pk)
    assert (message.status, message.attempt_count) == (Status.SENT, 2)
    assert len(mail.outbox) == 1


def test_dispatch_twice_at_the_same_moment_returns_each_message_once() -> None:
    pumps = [a_pump(), a_pump(email="b@example.org", phone="+442071234568")]
    services.replan_pumps([p.pk for p in pumps], NOW)

    first = services.dispatch_due(NOW)
    second = services.dispatch_due(NOW)

    due = Message.objects.filter(due_at__lte=NOW).exclude(status=Status.SUPPRESSED)
    assert sorted(first) == sorted(due.values_list("pk", flat=True))
    assert len(first) == len(set(first)) > 0
    assert second == []


def test_a_queued_message_never_picked_up_is_queued_again_after_the_claim_period(settings: Any) -> None:
    settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS = 300
    pump = a_pump(phone="")
    replan(pump, NOW)
    first = services.dispatch_due(NOW)  # the tasks are lost (a broker restart)

    assert services.dispatch_due(NOW + timedelta(seconds=299)) == []
    assert sorted(services.dispatch_due(NOW + timedelta(seconds=301))) == sorted(first)


# --------------------------------------------------------------------------- SMS cap


def test_a_second_non_critical_sms_on_the_same_local_day_waits_for_the_next_day() -> None:
    pump = a_pump(email="")
    replan(pump, NOW)  # four implant warnings, all due at once

    outcomes = send_due(NOW)

    assert sorted(outcomes.values()) == ["deferred", "deferred", "deferred", "sent"]
    deferred = outbox(pump, status=Status.PLANNED, cycle="implant")
    tomorrow_10 = datetime(2027, 1, 5, 10, 0, tzinfo=LONDON)
    assert deferred.count() == 3
    assert {(m.due_at, m.status_reason, m.attempt_count) for m in deferred} == {
        (tomorrow_10, "Deferred: one non-critical SMS a day", 0)
    }
    assert Attempt.objects.filter(message__in=deferred, outcome=AttemptOutcome.DEFERRED).count() == 3

    # A re-plan keeps the later moment; the next day sends one more, and so on.
    replan(pump, NOW + timedelta(hours=1))
    assert {m.due_at for m in deferred.all()} == {tomorrow_10}
    assert send_due(tomorrow_10 - timedelta(minutes=1)) == {}
    assert sorted(send_due(tomorrow_10).values()) == ["deferred", "deferred", "sent"]


def test_the_sms_cap_counts_the_recipients_local_day() -> None:
    """A New York patient: 03:00 UTC on 5 January is still the 4th there, so a text sent at
    12:00 UTC on the 4th caps it; the next one waits for 10:00 New York time on the 5th."""
    pump = a_pump(email="", time_zone="America/New_York")
    replan(pump, datetime(2027, 1, 4, 15, 0, tzinfo=UTC))  # 10:00 in New York

    assert sorted(send_due(datetime(2027, 1, 4, 15, 0, tzinfo=UTC)).values()) == ["deferred", "deferred", "deferred", "sent"]
    deferred = outbox(pump, status=Status.PLANNED, cycle="implant")
    assert {m.due_at for m in deferred} == {datetime(2027, 1, 5, 10, 0, tzinfo=ZoneInfo("America/New_York"))}


def test_email_is_not_capped() -> None:
    pump = a_pump(phone="")
    replan(pump, NOW)
    assert list(send_due(NOW).values()) == ["sent"] * 4


def test_a_critical_sms_is_not_capped() -> None:
    pump = a_pump(email="")
    morning = datetime(2027, 2, 5, 9, 30, tzinfo=UTC)  # overdue since the 4th; today's message at 10:00
    replan(pump, morning)
    # A non-critical text already went out this morning.
    heat = one(pump, kind=Kind.HEAT_WARNING)
    Message.objects.filter(pk=heat.pk).update(due_at=morning)
    assert send_due(morning)[heat.pk] == "sent"

    overdue = one(pump, kind=Kind.OVERDUE)
    assert overdue.critical and overdue.due_at == datetime(2027, 2, 5, 10, 0, tzinfo=UTC)
    assert send_due(overdue.due_at) == {overdue.pk: "sent"}  # a second text today, not deferred


# --------------------------------------------------------------------------- opt-out


@pytest.mark.parametrize(
    "keyword", ["STOP", "QUIT", "END", "REVOKE", "OPT OUT", "CANCEL", "UNSUBSCRIBE", "stop", "opt out", "  Unsubscribe "]
)
def test_every_stop_keyword_opts_the_number_out(keyword: str) -> None:
    pump = a_pump()

    reply = services.handle_inbound_sms(PHONE, keyword, NOW)

    block = ContactBlock.objects.get(channel=Channel.SMS, address=PHONE, lifted_at=None)
    assert (block.reason, block.method, block.keyword, block.created_at) == (
        BlockReason.OPTED_OUT,
        BlockMethod.SMS_KEYWORD,
        " ".join(keyword.upper().split()),
        NOW,
    )
    assert Escalation.objects.filter(patient=pump.patient, reason=EscalationReason.OPTED_OUT).count() == 1
    assert "START" in reply


def test_stop_silences_sms_raises_a_staff_task_at_once_and_email_continues(committed_at: Any) -> None:
    pump = a_pump()
    replan(pump, NOW)

    with committed_at(NOW + timedelta(minutes=10)):
        services.handle_inbound_sms(PHONE, "STOP", NOW + timedelta(minutes=10))

    esc = Escalation.objects.get(reason=EscalationReason.OPTED_OUT)
    assert (esc.status, esc.raised_at, esc.patient, esc.clinic) == (
        EscalationStatus.OPEN,
        NOW + timedelta(minutes=10),
        pump.patient,
        pump.patient.clinic,
    )
    assert Message.objects.filter(kind=Kind.ESCALATION, address=TEAM, subject=f"escalation:{esc.pk}").count() == 1
    sms = outbox(pump, channel=Channel.SMS).exclude(status__in=[Status.SENT, Status.CANCELLED])
    assert sms.exists()
    assert set(sms.values_list("status", flat=True)) == {Status.SUPPRESSED}
    assert set(outbox(pump, channel=Channel.EMAIL).values_list("status", flat=True)) == {Status.PLANNED}
    sent = send_due(NOW + timedelta(minutes=11))
    assert not outbox(pump, channel=Channel.SMS, pk__in=list(sent)).exists()


def test_start_lifts_the_opt_out_and_the_messages_return(committed_at: Any) -> None:
    pump = a_pump()
    replan(pump, NOW)
    with committed_at(NOW):
        services.handle_inbound_sms(PHONE, "STOP", NOW)
    later = NOW + timedelta(hours=1)

    with committed_at(later):
        reply = services.handle_inbound_sms(PHONE, "start", later)

    block = ContactBlock.objects.get(address=PHONE)
    assert (block.lifted_at, block.lifted_method) == (later, BlockMethod.SMS_KEYWORD)
    assert set(outbox(pump, channel=Channel.SMS, kind=Kind.REFILL_REMINDER).values_list("status", flat=True)) == {Status.PLANNED}
    assert "STOP" in reply


def test_a_message_already_queued_when_the_number_opts_out_is_suppressed_at_send_time() -> None:
    pump = a_pump(email="")
    replan(pump, NOW)
    [first, *_] = services.dispatch_due(NOW)  # queued, then STOP arrives before a worker takes it

    services.handle_inbound_sms(PHONE, "STOP", NOW)

    assert services.send_message(first, NOW + timedelta(seconds=5)).outcome == "suppressed"
    message = Message.objects.get(pk=first)
    assert message.status == Status.SUPPRESSED
    assert message.attempts.get().outcome == AttemptOutcome.SUPPRESSED


def test_help_answers_with_the_clinics_phone() -> None:
    a_pump()
    reply = services.handle_inbound_sms(PHONE, "HELP", NOW)

    assert CLINIC_PHONE in reply
    assert not ContactBlock.objects.exists()


def test_an_unknown_word_changes_nothing() -> None:
    a_pump()
    assert services.handle_inbound_sms(PHONE, "thanks", NOW) == ""
    assert not ContactBlock.objects.exists()


def test_a_patient_reachable_only_by_sms_who_opts_out_escalates_as_unreachable() -> None:
    pump = a_pump(email="")
    replan(pump, NOW)

    services.handle_inbound_sms(PHONE, "STOP", NOW)
    replan(pump, NOW)

    esc = open_escalations(pump, EscalationReason.NO_USABLE_CONTACT).get()
    assert esc.cycle == OLD_CYCLE and esc.raised_at == NOW


def test_an_unreachable_patient_is_escalated_again_after_the_task_closed_by_itself() -> None:
    """SMS off, on, then off again within one refill cycle: staff hear it the second time too."""
    pump = a_pump(email="")  # SMS only
    replan(pump, NOW)
    for day, sms in ((1, False), (2, True), (3, False)):
        Patient.objects.filter(pk=pump.patient_id).update(contact_by_sms=sms)
        replan(pump, NOW + timedelta(days=day))

    esc = open_escalations(pump, EscalationReason.NO_USABLE_CONTACT).get()
    assert esc.raised_at == NOW + timedelta(days=3)
    emails = Message.objects.filter(kind=Kind.ESCALATION, subject=f"escalation:{esc.pk}")
    assert emails.count() == 2  # the first, and one for the reopening


def test_a_task_a_person_resolved_is_not_reopened() -> None:
    pump = a_pump(email="")
    Patient.objects.filter(pk=pump.patient_id).update(contact_by_sms=False)
    replan(pump, NOW)
    esc = open_escalations(pump, EscalationReason.NO_USABLE_CONTACT).get()
    services.resolve_escalation(esc, by=UserFactory(), now=NOW, resolution="Phoned: the daughter will remind him.")

    replan(pump, NOW + timedelta(days=1))

    assert not open_escalations(pump, EscalationReason.NO_USABLE_CONTACT).exists()


# --------------------------------------------------------------------------- failures


@pytest.fixture
def sms_only(settings: Any) -> Message:
    """One SMS due now (the patient has no email), with the retry delays of .env.example."""
    settings.PUMPTRACK_MESSAGE_RETRY_DELAYS = (60, 300, 1800, 7200)
    pump = a_pump(email="")
    replan(pump, NOW)
    message = one(pump, kind=Kind.WITHDRAWAL_WARNING, cycle="implant")
    services.dispatch_due(NOW)
    return message


def test_a_transient_failure_retries_with_backoff_then_fails_permanently(settings: Any, sms_only: Message) -> None:
    settings.PUMPTRACK_SMS_BACKEND = "test_outbox.FlakySms"
    at = NOW
    for attempt, delay in enumerate((60, 300, 1800, 7200), 1):
        assert services.send_message(sms_only.pk, at).outcome == "retry"
        sms_only.refresh_from_db()
        assert (sms_only.status, sms_only.attempt_count, sms_only.next_attempt_at) == (
            Status.FAILED,
            attempt,
            at + timedelta(seconds=delay),
        )
        assert services.send_message(sms_only.pk, at + timedelta(seconds=delay - 1)).outcome == "not_claimed"
        assert sms_only.pk not in services.dispatch_due(at + timedelta(seconds=delay - 1))
        at += timedelta(seconds=delay)
        assert sms_only.pk in services.dispatch_due(at)

    assert services.send_message(sms_only.pk, at).outcome == "failed_permanently"
    sms_only.refresh_from_db()
    assert sms_only.status == Status.FAILED_PERMANENTLY
    assert list(sms_only.attempts.values_list("outcome", flat=True)) == [AttemptOutcome.TRANSIENT_FAILURE] * 5
    esc = Escalation.objects.get(reason=EscalationReason.DELIVERY_FAILED)
    assert (esc.cycle, esc.severity, esc.pump_id) == (f"message:{sms_only.pk}", Severity.WARNING, sms_only.pump_id)
    # Retries running out says nothing about the number itself.
    assert not ContactBlock.objects.exists()


def test_a_permanent_failure_blocks_the_number_and_escalates(settings: Any, sms_only: Message) -> None:
    settings.PUMPTRACK_SMS_BACKEND = "test_outbox.DeadNumberSms"

    assert services.send_message(sms_only.pk, NOW).outcome == "failed_permanently"

    sms_only.refresh_from_db()
    assert sms_only.status == Status.FAILED_PERMANENTLY
    assert sms_only.attempts.get().outcome == AttemptOutcome.PERMANENT_FAILURE
    block = ContactBlock.objects.get(channel=Channel.SMS, address=PHONE, lifted_at=None)
    assert (block.reason, block.method) == (BlockReason.INVALID, BlockMethod.PROVIDER)
    assert Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED, status=EscalationStatus.OPEN).exists()
    # The patient now has no usable channel: the refill cycle escalates at the next plan.
    replan(Pump.objects.get(pk=sms_only.pump_id), NOW)
    assert open_escalations(sms_only.pump, EscalationReason.NO_USABLE_CONTACT).exists()


def test_an_unexpected_transport_error_is_recorded_and_retried(settings: Any, sms_only: Message) -> None:
    settings.PUMPTRACK_SMS_BACKEND = "test_outbox.BrokenSms"

    with pytest.raises(RuntimeError):
        services.send_message(sms_only.pk, NOW)

    sms_only.refresh_from_db()
    assert (sms_only.status, sms_only.next_attempt_at) == (Status.FAILED, NOW + timedelta(seconds=60))
    attempt = sms_only.attempts.get()
    assert attempt.outcome == AttemptOutcome.TRANSIENT_FAILURE and "a bug in the backend" in attempt.error


def test_a_message_that_cannot_be_prepared_is_recorded_and_retried_not_looped_unseen(sms_only: Message) -> None:
    Message.objects.filter(pk=sms_only.pk).update(time_zone="Mars/Olympus_Mons")  # a row no plan would write

    with pytest.raises(Exception, match="Mars"):
        services.send_message(sms_only.pk, NOW)

    sms_only.refresh_from_db()
    assert (sms_only.status, sms_only.next_attempt_at) == (Status.FAILED, NOW + timedelta(seconds=60))
    attempt = sms_only.attempts.get()
    assert attempt.outcome == AttemptOutcome.TRANSIENT_FAILURE and "could not prepare" in attempt.error


# --------------------------------------------------------------------------- delivery status


@pytest.fixture
def sent_sms() -> Message:
    pump = a_pump(email="")
    replan(pump, NOW)
    message = one(pump, kind=Kind.WITHDRAWAL_WARNING, cycle="implant")
    services.dispatch_due(NOW)
    assert services.send_message(message.pk, NOW).outcome == "sent"
    message.refresh_from_db()
    return message


def test_a_delivered_report_moves_sent_to_delivered(sent_sms: Message) -> None:
    later = NOW + timedelta(seconds=20)

    assert services.record_delivery_status(sent_sms.provider_id, "delivered", "", later)

    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.delivered_at) == (Status.DELIVERED, later)
    assert not Escalation.objects.exists()


def test_an_undelivered_report_for_an_unknown_number_blocks_it_and_escalates(sent_sms: Message) -> None:
    assert services.record_delivery_status(sent_sms.provider_id, "undelivered", "30005", NOW + timedelta(minutes=1))

    sent_sms.refresh_from_db()
    assert sent_sms.status == Status.FAILED_PERMANENTLY
    assert ContactBlock.objects.filter(channel=Channel.SMS, address=PHONE, lifted_at=None).exists()
    assert Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED, cycle=f"message:{sent_sms.pk}").exists()


def test_a_phone_switched_off_escalates_but_keeps_the_number(sent_sms: Message) -> None:
    """Twilio 30003 (handset off, out of signal) is usually temporary (not a dead number)."""
    assert services.record_delivery_status(sent_sms.provider_id, "undelivered", "30003", NOW + timedelta(minutes=1))

    assert not ContactBlock.objects.exists()
    assert Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED, cycle=f"message:{sent_sms.pk}").exists()


def test_a_report_for_an_unknown_message_is_ignored() -> None:
    assert not services.record_delivery_status("SM-unknown", "delivered", "", NOW)


# --------------------------------------------------------------------------- escalations


def _raise(clinic: Clinic, pump: Pump, severity: str = Severity.WARNING) -> tuple[Escalation, bool]:
    return services.raise_escalation(
        clinic=clinic,
        pump=pump,
        reason=EscalationReason.OVERDUE,
        severity=severity,
        cycle=OLD_CYCLE,
        detail="No refill recorded by 2027-02-03.",
        now=NOW,
    )


def test_each_escalation_emails_the_clinics_notification_address_once() -> None:
    pump = a_pump()

    esc, created = _raise(pump.patient.clinic, pump)
    again, created_again = _raise(pump.patient.clinic, pump)

    assert created and not created_again and again.pk == esc.pk
    [staff_mail] = Message.objects.filter(kind=Kind.ESCALATION)
    assert (staff_mail.address, staff_mail.recipient_kind, staff_mail.channel, staff_mail.due_at) == (
        TEAM,
        RecipientKind.STAFF,
        Channel.EMAIL,
        NOW,
    )
    assert send_due(NOW) == {staff_mail.pk: "sent"}
    [sent] = mail.outbox
    assert sent.to == [TEAM]
    assert sent.subject.startswith("[WARNING] Refill overdue")
    assert "No refill recorded by 2027-02-03." in sent.body


@pytest.mark.parametrize(
    ("notification_email", "email", "expected"),
    [
        ("team@clinic.example", "front@clinic.example", ["team@clinic.example"]),
        ("", "front@clinic.example", ["front@clinic.example"]),
        ("", "", []),
    ],
)
def test_escalations_go_to_the_notification_address_or_the_clinic_email_or_nowhere(
    notification_email: str, email: str, expected: list[str]
) -> None:
    clinic = a_clinic(notification_email=notification_email, email=email)
    pump = a_pump(clinic=clinic)

    _raise(clinic, pump)

    assert Escalation.objects.count() == 1
    assert list(Message.objects.filter(kind=Kind.ESCALATION).values_list("address", flat=True)) == expected


def test_a_critical_escalation_email_is_critical() -> None:
    pump = a_pump()
    _raise(pump.patient.clinic, pump, Severity.CRITICAL)

    assert Message.objects.get(kind=Kind.ESCALATION).critical


def test_the_overdue_escalation_is_raised_the_first_morning_and_resolves_after_a_refill(committed_at: Any) -> None:
    pump = a_pump()
    replan(pump, datetime(2027, 2, 4, 8, 59, tzinfo=UTC))
    assert not Escalation.objects.filter(reason=EscalationReason.OVERDUE).exists()

    replan(pump, datetime(2027, 2, 4, 9, 0, tzinfo=UTC))
    esc = open_escalations(pump, EscalationReason.OVERDUE).get()
    assert (esc.severity, esc.raised_at) == (Severity.WARNING, datetime(2027, 2, 4, 9, 0, tzinfo=UTC))

    refill_at = datetime(2027, 2, 5, 9, 0, tzinfo=UTC)  # 32 days: 12.8 mL delivered, 27.2 mL left
    with committed_at(refill_at):
        fill(pump, at=refill_at, withdrawn_ml="27.2", volume_added_ml="40")

    esc.refresh_from_db()
    assert (esc.status, esc.resolved_at) == (EscalationStatus.RESOLVED, refill_at)
    assert outbox(pump, kind=Kind.OVERDUE, status=Status.CANCELLED).exists()


def test_the_alarm_date_raises_a_critical_escalation_at_midnight() -> None:
    pump = a_pump()
    replan(pump, datetime(2027, 4, 8, 23, 59, tzinfo=LONDON))
    assert not Escalation.objects.filter(reason=EscalationReason.ALARM_DATE_REACHED).exists()

    replan(pump, datetime(2027, 4, 9, 0, 0, tzinfo=LONDON))

    esc = open_escalations(pump, EscalationReason.ALARM_DATE_REACHED).get()
    assert esc.severity == Severity.CRITICAL
    assert Message.objects.get(kind=Kind.ESCALATION, subject=f"escalation:{esc.pk}").critical


# --------------------------------------------------------------------------- post-MRI check


def test_an_mri_without_a_post_scan_check_escalates_after_24_hours() -> None:
    pump = a_pump()
    scan_at = NOW + timedelta(days=10)
    record_event(pump, EventKind.MRI_PLANNED, scan_at, NOW)

    replan(pump, scan_at + timedelta(hours=23))
    assert not Escalation.objects.filter(reason=EscalationReason.POST_MRI_CHECK_MISSING).exists()

    replan(pump, scan_at + timedelta(hours=25))
    esc = open_escalations(pump, EscalationReason.POST_MRI_CHECK_MISSING).get()
    assert esc.severity == Severity.CRITICAL

    checked_at = scan_at + timedelta(hours=26)
    record_event(pump, EventKind.POST_MRI_CHECK, checked_at, checked_at)
    replan(pump, checked_at)

    esc.refresh_from_db()
    assert (esc.status, esc.resolved_at) == (EscalationStatus.RESOLVED, checked_at)


def test_a_missing_post_mri_check_stays_open_when_the_scan_is_older_than_the_lookback() -> None:
    pump = a_pump()
    scan_at = NOW + timedelta(days=10)
    record_event(pump, EventKind.MRI_PLANNED, scan_at, NOW)
    replan(pump, scan_at + timedelta(hours=25))

    replan(pump, scan_at + services.SCAN_LOOKBACK + timedelta(days=30))

    assert open_escalations(pump, EscalationReason.POST_MRI_CHECK_MISSING).exists()


def test_a_planned_mri_warns_the_patient_and_a_prometra_tells_staff_to_empty_it() -> None:
    patient = screened_patient(clinic=a_clinic(), email=EMAIL, phone=PHONE)
    pump = implanted_pump(patient=patient, model_number="13827", concentration_mcg_per_ml="500")
    scan_at = NOW + timedelta(days=10)
    event = record_event(pump, EventKind.MRI_PLANNED, scan_at, NOW)

    replan(pump, NOW + timedelta(minutes=1))

    assert outbox(pump, kind=Kind.MRI_WARNING, cycle=f"mri:{event.pk}").count() == 2
    assert open_escalations(pump, EscalationReason.MRI_EMPTY_RESERVOIR).get().cycle == f"mri:{event.pk}"


def test_the_empty_the_reservoir_task_stays_open_after_the_scan_until_a_person_closes_it() -> None:
    """Only a person can confirm a Prometra was emptied before the MRI (clinical.md §7.4 #94)."""
    patient = screened_patient(clinic=a_clinic(), email=EMAIL, phone=PHONE)
    pump = implanted_pump(patient=patient, model_number="13827", concentration_mcg_per_ml="500")
    scan_at = NOW + timedelta(days=10)
    record_event(pump, EventKind.MRI_PLANNED, scan_at, NOW)
    replan(pump, NOW + timedelta(minutes=1))

    replan(pump, scan_at + timedelta(hours=1))

    assert open_escalations(pump, EscalationReason.MRI_EMPTY_RESERVOIR).exists()


def test_an_escalation_closed_before_its_email_went_cancels_the_email() -> None:
    pump = a_pump()
    late = datetime(2027, 2, 4, 10, tzinfo=UTC)  # the morning after refill-by: overdue escalation
    replan(pump, late)
    esc = open_escalations(pump, EscalationReason.OVERDUE).get()
    email = Message.objects.get(kind=Kind.ESCALATION, subject=f"escalation:{esc.pk}")
    assert email.status == Status.PLANNED

    fill(pump, at=late, volume_added_ml="30", withdrawn_ml="10")
    replan(pump, late)

    email.refresh_from_db()
    assert email.status == Status.CANCELLED
    assert Escalation.objects.get(pk=esc.pk).status == EscalationStatus.RESOLVED


# --------------------------------------------------------------------------- content


def test_a_spanish_patient_gets_a_spanish_email_with_an_unsubscribe_link() -> None:
    pump = a_pump(language="es", phone="")
    replan(pump, NOW)
    d14 = one(pump, kind=Kind.REFILL_REMINDER, stage="d14")
    services.dispatch_due(D14_AT)

    assert services.send_message(d14.pk, D14_AT).outcome == "sent"

    [email] = mail.outbox
    assert email.subject == "Recarga de la bomba antes del 3 de febrero de 2027"
    assert "3 de febrero de 2027" in email.body
    assert "Estimado/a Alex" in email.body
    [(html, mimetype)] = email.alternatives
    assert mimetype == "text/html"
    assert "3 de febrero de 2027" in html and 'lang="es"' in html
    header = email.extra_headers["List-Unsubscribe"]
    assert header.startswith("<http://") and header.endswith("/>")
    link = header[1:-1]
    assert email.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link in email.body and link in html
    # The token is signed with a timestamp: read it back from the mail, never recompute it.
    prefix = services.unsubscribe_url(Channel.EMAIL, EMAIL).rsplit("/", 2)[0] + "/"
    assert link.startswith(prefix)
    assert services.read_unsubscribe_token(link[len(prefix) :].rstrip("/")) == (Channel.EMAIL, EMAIL)


def test_a_forged_unsubscribe_token_is_refused() -> None:
    token = services.unsubscribe_token(Channel.EMAIL, EMAIL)
    other_address = signing.dumps({"c": "email", "a": "someone@example.org"}, salt="another salt", compress=True)

    with pytest.raises(signing.BadSignature):
        services.read_unsubscribe_token(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    with pytest.raises(signing.BadSignature):
        services.read_unsubscribe_token(other_address)


CONTEXT = {
    "first_name": "Alex",
    "clinic_name": "Clinic",
    "clinic_phone": CLINIC_PHONE,
    "model_name": "Medtronic SynchroMed II",
    "refill_by": "2027-02-03",
    "alarm_on": "2027-04-09",
    "days_left": 7,
    "days_overdue": 2,
    "scan_at": "2027-03-12T09:00:00+00:00",
}


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("kind", [k for k in Kind.values if k != Kind.ESCALATION])
@pytest.mark.parametrize("mri_rule", ["check_after", "empty_before", "unsafe"])
def test_an_sms_names_no_drug_and_no_dose(kind: str, language: str, mri_rule: str) -> None:
    text = content.compose(kind, language, {**CONTEXT, "mri_rule": mri_rule}, "Europe/London")

    assert "baclofen" not in text.sms.lower()
    assert "mcg" not in text.sms.lower()
    assert "synchromed" not in text.sms.lower()


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("kind", [k for k in Kind.values if k != Kind.ESCALATION])
def test_every_email_paragraph_after_the_greeting_starts_with_a_capital(kind: str, language: str) -> None:
    text = content.compose(kind, language, CONTEXT, "Europe/London")

    assert all(p[0].isupper() for p in text.paragraphs[1:]), text.paragraphs


@pytest.mark.parametrize(
    ("mri_rule", "language", "step"),
    [
        ("check_after", "en", "check after the scan"),
        ("empty_before", "en", "emptied first"),
        ("unsafe", "en", "must not go in a scanner"),
        ("empty_before", "es", "vaciar su bomba antes"),
    ],
)
def test_the_mri_sms_names_the_step_this_pump_model_needs(mri_rule: str, language: str, step: str) -> None:
    """SynchroMed: checked after the scan; Prometra: emptied before it (clinical.md §7.4 #91-#94)."""
    text = content.compose(Kind.MRI_WARNING, language, {**CONTEXT, "mri_rule": mri_rule}, "Europe/London")

    assert step in text.sms


def test_every_planned_sms_names_no_drug_and_no_dose(capsys: pytest.CaptureFixture[str]) -> None:
    for language, phone in (("en", PHONE), ("es", "+442071234568")):
        pump = a_pump(language=language, phone=phone, withdrawal_history=True)
        record_event(pump, EventKind.MRI_PLANNED, NOW + timedelta(days=9), NOW)
        replan(pump, NOW)
        for message in outbox(pump, channel=Channel.SMS):
            text = services.render(message).text.lower()
            assert "baclofen" not in text and "mcg" not in text, (message.kind, language)


def test_dates_in_messages_are_in_the_recipients_zone() -> None:
    text = content.compose(Kind.MRI_WARNING, "en", {**CONTEXT, "mri_rule": "check_after"}, "America/New_York")
    assert "12 March 2027, 04:00" in text.paragraphs[1]


# --------------------------------------------------------------------------- heartbeat


def test_stale_sweeps_reports_sweeps_that_never_ran() -> None:
    assert services.stale_sweeps(NOW) == ["plan sweep has never run", "dispatch sweep has never run"]


def test_stale_sweeps_reports_nothing_when_fresh() -> None:
    services.beat("plan", NOW - timedelta(minutes=29))
    services.beat("dispatch", NOW - timedelta(seconds=119))

    assert services.stale_sweeps(NOW) == []


def test_stale_sweeps_reports_a_sweep_older_than_twice_its_interval() -> None:
    services.beat("plan", NOW - timedelta(minutes=31))
    services.beat("dispatch", NOW - timedelta(seconds=121))

    problems = services.stale_sweeps(NOW)

    assert len(problems) == 2
    assert problems[0].startswith("plan sweep last finished 2027-01-04 11:29")
    assert problems[1].startswith("dispatch sweep last finished 2027-01-04 11:57:59")
    assert Heartbeat.objects.get(name="plan").interval_seconds == 15 * 60


def test_one_bad_pump_does_not_stop_the_sweep_and_the_heartbeat_says_it_failed() -> None:
    from notifications import tasks

    good = a_pump()
    bad = a_pump(clinic=a_clinic())
    Clinic.objects.filter(pk=bad.patient.clinic_id).update(reminder_days="every day")  # a row no form would accept

    with time_machine.travel(NOW, tick=False), pytest.raises(services.PlanningFailed, match=str(bad.pk)):
        tasks.plan_sweep()

    assert outbox(good).exists()
    assert not outbox(bad).exists()
    heartbeat = Heartbeat.objects.get(name="plan")
    assert not heartbeat.ok
    services.beat("dispatch", NOW)
    assert services.stale_sweeps(NOW) == [f"plan sweep failed in part at 2027-01-04 12:00:00 UTC: {heartbeat.detail}"]


def test_patients_are_not_sent_anything_for_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="no text"):
        content.compose("made_up", "en", CONTEXT, "UTC")


def test_a_claim_shorter_than_ten_send_timeouts_fails_the_system_check(settings: Any) -> None:
    from notifications.checks import claim_outlasts_send

    settings.PUMPTRACK_SEND_TIMEOUT_SECONDS = 30
    settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS = 299
    assert [e.id for e in claim_outlasts_send()] == ["notifications.E001"]
    settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS = 300
    assert claim_outlasts_send() == []


class _Refusing:
    """An SMTP server that refuses either the sender (our configuration) or the recipient."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse == "sender":
            return "550 5.7.1 Sender address rejected"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse == "recipient":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.mark.parametrize(("refuse", "permanent"), [("sender", False), ("recipient", True)])
def test_only_a_refused_recipient_is_the_addresses_fault(settings: Any, free_port: int, refuse: str, permanent: bool) -> None:
    """A refused sender is our setup's fault: retried and escalated, never a blocked patient address."""
    from aiosmtpd.controller import Controller

    from notifications.transports import EmailTransport

    controller = Controller(_Refusing(refuse), hostname="127.0.0.1", port=free_port)
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port
        with pytest.raises(TransportError) as raised:
            EmailTransport().send(Outgoing(1, EMAIL, "Subject", "Text"))
    finally:
        controller.stop()

    assert raised.value.permanent is permanent
