"""Delivery end to end: a real `celery worker` process sends the outbox by SMTP to an aiosmtpd
sink and by SMS through the official twilio library to a local server speaking Twilio's API.

The worker reads the wall clock, so these tests place the records relative to
`timezone.now()`: a pump implanted an hour ago (its implant safety warnings are due) and one
whose refill is ten days overdue. Quiet hours are switched off in the test clinics (start ==
end) and the overdue clinic reminds at 00:00, so what is due does not depend on the hour
the suite runs at.
"""

from __future__ import annotations

import re
import time as clock
import zoneinfo
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SmtpSink, WorkerProcess, spawn_worker, stop_worker
from django.conf import settings as django_settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from factories import CaregiverFactory, ClinicFactory, implanted_pump, screened_patient
from twilio_fake import FakeTwilio, fake_twilio

from notifications import services
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
    Kind,
    Message,
    Severity,
    Status,
)
from notifications.tasks import dispatch_sweep
from notifications.transports import Outgoing, TransportError, TwilioSmsBackend
from pumps import services as pump_services
from pumps.models import EventKind

SITE_URL = "https://pumps.riverside.example.org"
EMAIL_DOMAIN = "riverside.example.org"
FROM_NUMBER = "+442071838700"
LONDON, NEW_YORK = zoneinfo.ZoneInfo("Europe/London"), zoneinfo.ZoneInfo("America/New_York")
NO_QUIET_HOURS = {"quiet_hours_start": time(0), "quiet_hours_end": time(0)}
# An oracle independent of notifications.content.
MESES = [
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
]  # fmt: skip
# A drug name, a concentration or a dose: none of them may travel by SMS (DESIGN.md "Messages").
DRUG_OR_DOSE = re.compile(r"baclof|lioresal|gablofen|\bmcg\b|µg|\bmg\b|\d\s*ml\b|/day|/día", re.IGNORECASE)

twilio = pytest.fixture(fake_twilio)


@contextmanager
def worker_sending_to(tmp_path: Path, twilio: FakeTwilio, **env: str) -> Iterator[WorkerProcess]:
    """A worker process whose email goes to the smtp_sink and whose SMS go to the fake Twilio."""
    worker = spawn_worker(
        tmp_path / "worker.log",
        env={
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(django_settings.EMAIL_PORT),  # the smtp_sink fixture's port
            "EMAIL_USE_TLS": "false",
            "PUMPTRACK_EMAIL_DOMAIN": EMAIL_DOMAIN,
            "SITE_URL": SITE_URL,
            **twilio.env(FROM_NUMBER),
            **env,
        },
    )
    try:
        yield worker
    finally:
        stop_worker(worker)


def sweep(worker: WorkerProcess) -> int:
    """One dispatch sweep, run by the worker process; returns how many sends it queued."""
    return int(dispatch_sweep.apply_async(queue=worker.queue).get(timeout=20))


def in_flight(ids: Sequence[int]) -> list[Message]:
    """Messages queued or being sent: due or sending, or queued (a retry) with no attempt since."""
    picked_up = Attempt.objects.filter(message=OuterRef("pk"), started_at__gte=OuterRef("queued_at"))
    return list(
        Message.objects.filter(pk__in=ids)
        .filter(Q(status__in=[Status.DUE, Status.SENDING]) | Q(queued_at__isnull=False) & ~Exists(picked_up))
        .order_by("pk")
    )


def settle(ids: Sequence[int], worker: WorkerProcess, *, timeout: float = 20) -> None:
    """Wait until the worker has finished with every message in `ids`."""
    deadline = clock.monotonic() + timeout
    while stuck := in_flight(ids):
        if clock.monotonic() > deadline:
            states = [(m.pk, m.status, m.queued_at) for m in stuck]
            pytest.fail(f"messages still in flight after {timeout} s: {states}\n{worker.log_text()[-4000:]}")
        clock.sleep(0.05)


def eventually(check: Any, *, timeout: float = 10) -> None:
    """Wait for work the worker does after its task's commit (a re-plan on commit)."""
    deadline = clock.monotonic() + timeout
    while not check():
        if clock.monotonic() > deadline:
            pytest.fail(f"{check.__doc__ or check} did not happen within {timeout} s")
        clock.sleep(0.05)


def due_now() -> list[Message]:
    return list(Message.objects.filter(status=Status.PLANNED, due_at__lte=timezone.now()).order_by("pk"))


def outcomes(message: Message) -> list[str]:
    return list(Attempt.objects.filter(message=message).order_by("pk").values_list("outcome", flat=True))


def text_of(mail: Any) -> str:
    return str(mail.message.get_body(("plain",)).get_content())


def spanish_date(on: Any) -> str:
    return f"{on.day} de {MESES[on.month - 1]} de {on.year}"


def overdue_pump(patient: Any, now: datetime) -> Any:
    """Implanted and filled 40 days ago on a 30-day titration interval: ten days overdue."""
    pump = implanted_pump(patient=patient, implanted_at=now - timedelta(days=40))
    assert pump.refill_by is not None and pump.refill_by < now.date() - timedelta(days=5)
    assert pump.alarm_on is not None and pump.alarm_on > now.date()  # no alarm escalation
    return pump


# ------------------------------------------------------------------------- the happy path


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_sends_each_due_message_once_by_smtp_and_twilio(
    tmp_path: Path, smtp_sink: SmtpSink, twilio: FakeTwilio, client: Any, settings: Any
) -> None:
    now = timezone.now()
    riverside = ClinicFactory(
        name="Riverside Pump Clinic",
        time_zone="Europe/London",
        phone="+442071838750",
        notification_email="pumps@riverside.example.org",
        **NO_QUIET_HOURS,
    )
    hudson = ClinicFactory(
        name="Hudson Spasticity Clinic",
        time_zone="America/New_York",
        phone="+12124567000",
        notification_email="itb-team@hudson.example.org",
        reminder_time=time(0),  # today's overdue message is due from local midnight
        **NO_QUIET_HOURS,
    )
    ann = screened_patient(
        clinic=riverside, given_name="Ann", email="ann@example.org", phone="+442071234567", screened_at=now - timedelta(days=15)
    )
    rosa = screened_patient(
        clinic=hudson,
        given_name="Rosa",
        language="es",
        time_zone="America/New_York",
        email="rosa@example.org",
        phone="+12124567890",
        screened_at=now - timedelta(days=55),
    )
    carlos = CaregiverFactory(
        patient=rosa, name="Carlos", email="carlos@example.org", phone="+12124567891", receives_safety_messages=True
    )
    new_pump = implanted_pump(patient=ann, implanted_at=now - timedelta(hours=1))
    late_pump = overdue_pump(rosa, now)
    # 03:30 UTC is the evening before in New York: the date must be hers, not UTC's.
    scan_at = datetime.combine(now.date() + timedelta(days=3), time(3, 30), tzinfo=UTC)
    pump_services.record_event(pump=late_pump, kind=EventKind.MRI_PLANNED, occurred_at=scan_at, now=now)
    services.replan_pumps([new_pump.pk, late_pump.pk], now)

    due = due_now()
    implant_kinds = {Kind.WITHDRAWAL_WARNING, Kind.HEAT_WARNING, Kind.ALCOHOL_WARNING, Kind.MRI_WARNING}
    assert Counter((m.recipient_key, m.channel, m.kind) for m in due) == Counter(
        [(f"patient:{ann.pk}", channel, kind) for kind in implant_kinds for channel in ("email", "sms")]
        + [(key, channel, kind) for key in (f"patient:{rosa.pk}", f"caregiver:{carlos.pk}") for kind in (Kind.OVERDUE, Kind.MRI_WARNING) for channel in ("email", "sms")]
        # Hudson's team hears of the overdue refill. (Recording the implant before its fill
        # briefly made the pump due at once: that escalation was raised and resolved, and
        # its unsent email was cancelled with it.)
        + [(f"clinic:{hudson.pk}", "email", Kind.ESCALATION)]
        * Escalation.objects.filter(clinic=hudson, status=EscalationStatus.OPEN).count()
    )  # fmt: skip
    overdue_escalation = Escalation.objects.get(
        pump=late_pump, reason=EscalationReason.OVERDUE, cycle=f"refill_by:{late_pump.refill_by}", status=EscalationStatus.OPEN
    )

    with worker_sending_to(tmp_path, twilio) as worker:
        assert sweep(worker) == len(due)
        settle([m.pk for m in due], worker)
        assert sweep(worker) == 0  # a second sweep finds nothing to send again

    rows = {m.pk: m for m in Message.objects.filter(pk__in=[m.pk for m in due])}
    emails = [m for m in rows.values() if m.channel == Channel.EMAIL]
    texts = [m for m in rows.values() if m.channel == Channel.SMS]

    # ---- email: every row sent once, each Message-ID exactly once in the sink
    assert {m.status for m in emails} == {Status.SENT}
    assert all(outcomes(m) == [AttemptOutcome.SENT] for m in emails)
    received = Counter(mail.message["Message-ID"] for mail in smtp_sink.messages)
    assert received == Counter({f"<pumptrack-{m.pk}@{EMAIL_DOMAIN}>": 1 for m in emails})
    assert all(m.provider_id == f"<pumptrack-{m.pk}@{EMAIL_DOMAIN}>" for m in emails)
    by_id = {mail.message["Message-ID"]: mail for mail in smtp_sink.messages}

    def mail_for(key: str, kind: str, subject: str | None = None) -> Any:
        (row,) = [m for m in emails if m.recipient_key == key and m.kind == kind and (subject or m.subject) == m.subject]
        mail = by_id[row.provider_id]
        assert mail.rcpt_tos == [row.address]
        return mail

    warning = mail_for(f"patient:{ann.pk}", Kind.WITHDRAWAL_WARNING)
    assert warning.message.get_content_type() == "multipart/alternative"
    assert "Dear Ann," in text_of(warning)
    assert "<p>Dear Ann,</p>" in warning.message.get_body(("html",)).get_content()
    unsubscribe = warning.message["List-Unsubscribe"].strip()  # a long header arrives folded
    assert re.fullmatch(rf"<{re.escape(SITE_URL)}/n/unsubscribe/[^>]+/>", unsubscribe)
    assert warning.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The link in the email works: it opens the confirmation page for Ann's address.
    page = client.get(unsubscribe[1:-1].removeprefix(SITE_URL))
    assert page.status_code == 200 and "ann@example.org" in page.content.decode()
    assert not ContactBlock.objects.exists()  # a GET (a link scanner) unsubscribes nobody

    overdue = mail_for(f"patient:{rosa.pk}", Kind.OVERDUE)
    assert overdue.message["Subject"] == "La recarga de su bomba está atrasada: llame hoy"
    assert f"antes del {spanish_date(late_pump.refill_by)}" in text_of(overdue)
    assert "+1 212-456-7000" in text_of(overdue) or "+12124567000" in text_of(overdue)
    scan_local = scan_at.astimezone(NEW_YORK)
    assert scan_local.date() != scan_at.date()
    mri = mail_for(f"patient:{rosa.pk}", Kind.MRI_WARNING)
    assert f"del {spanish_date(scan_local)}, {scan_local:%H:%M}" in text_of(mri)
    caregiver_mri = mail_for(f"caregiver:{carlos.pk}", Kind.MRI_WARNING)
    assert f"on {scan_local.day} {scan_local:%B %Y}, {scan_local:%H:%M}" in text_of(caregiver_mri)
    staff = mail_for(f"clinic:{hudson.pk}", Kind.ESCALATION, f"escalation:{overdue_escalation.pk}")
    assert staff.message["Subject"].startswith("[WARNING] Refill overdue")
    assert f"No refill recorded by {late_pump.refill_by}" in text_of(staff)

    # ---- SMS: overdue (critical) ones all sent; one non-critical SMS a day per recipient
    sent_texts = [m for m in texts if m.status == Status.SENT]
    for key in (f"patient:{ann.pk}", f"patient:{rosa.pk}", f"caregiver:{carlos.pk}"):
        assert len([m for m in sent_texts if m.recipient_key == key and not m.critical]) == 1, key
    assert {m.recipient_key for m in sent_texts if m.critical} == {f"patient:{rosa.pk}", f"caregiver:{carlos.pk}"}
    assert all(outcomes(m) == [AttemptOutcome.SENT] for m in sent_texts)
    held = [m for m in texts if m.status != Status.SENT]
    assert len(held) == 3 and {m.recipient_key for m in held} == {f"patient:{ann.pk}"}
    for m in held:  # deferred to the recipient's next day, not dropped
        assert m.status == Status.PLANNED and m.status_reason.startswith("Deferred")
        (attempt,) = Attempt.objects.filter(message=m)
        assert attempt.outcome == AttemptOutcome.DEFERRED
        assert m.due_at.astimezone(LONDON).date() == attempt.started_at.astimezone(LONDON).date() + timedelta(days=1)

    # The fake Twilio got one request per sent SMS row, each sid stored as the provider id.
    assert len(twilio.requests) == len(twilio.messages) == len(sent_texts)
    sms_by_sid = {sms.sid: sms for sms in twilio.messages}
    assert set(sms_by_sid) == {m.provider_id for m in sent_texts}
    for m in sent_texts:
        sms = sms_by_sid[m.provider_id]
        assert re.fullmatch(r"SM[0-9a-f]{32}", sms.sid)
        assert (sms.to, sms.body, sms.from_) == (m.address, m.rendered_body, FROM_NUMBER)
        assert sms.status_callback == f"{SITE_URL}/n/twilio/status/"
        assert not DRUG_OR_DOSE.search(sms.body), sms.body
    (rosa_overdue,) = [m for m in sent_texts if m.recipient_key == f"patient:{rosa.pk}" and m.kind == Kind.OVERDUE]
    assert "ATRASADA" in rosa_overdue.rendered_body

    # ---- Twilio reports delivery: a signed status callback moves the row to delivered
    settings.TWILIO_AUTH_TOKEN, settings.SITE_URL = twilio.auth_token, SITE_URL
    response = twilio.post_status(sms_by_sid[rosa_overdue.provider_id], "delivered", client=client)
    assert response.status_code == 204
    rosa_overdue.refresh_from_db()
    assert rosa_overdue.status == Status.DELIVERED and rosa_overdue.delivered_at is not None


# ------------------------------------------------------------------------- failures


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_invalid_number_fails_once_for_good_blocks_the_number_and_escalates(
    tmp_path: Path, smtp_sink: SmtpSink, twilio: FakeTwilio
) -> None:
    now = timezone.now()
    clinic = ClinicFactory(time_zone="UTC", reminder_time=time(0))
    dora = screened_patient(clinic=clinic, given_name="Dora", phone="+442071234568", screened_at=now - timedelta(days=55))
    pump = overdue_pump(dora, now)
    services.replan_pumps([pump.pk], now)
    (row,) = due_now()  # today's overdue SMS: critical, dora has no email
    twilio.fail("+442071234568", status=400, code=21211)

    with worker_sending_to(tmp_path, twilio) as worker:
        assert sweep(worker) == 1
        settle([row.pk], worker)
        assert sweep(worker) == 0  # never retried

    row.refresh_from_db()
    assert row.status == Status.FAILED_PERMANENTLY and "21211" in row.status_reason
    (attempt,) = Attempt.objects.filter(message=row)
    assert attempt.outcome == AttemptOutcome.PERMANENT_FAILURE and "21211" in attempt.error
    assert [r.answered for r in twilio.requests] == [400] and not twilio.messages
    block = ContactBlock.objects.get(channel=Channel.SMS, address="+442071234568", lifted_at=None)
    assert (block.reason, block.method) == (BlockReason.INVALID, BlockMethod.PROVIDER)
    failed = Escalation.objects.get(reason=EscalationReason.DELIVERY_FAILED, cycle=f"message:{row.pk}")
    # The worker raised it; an overdue refill is critical, so is its failed message.
    assert (failed.patient_id, failed.status, failed.severity) == (dora.pk, EscalationStatus.OPEN, Severity.CRITICAL)
    assert failed.raised_at == attempt.started_at

    def nobody_can_reach_dora() -> bool:
        """The blocked number was Dora's only contact: staff must reach her another way."""
        return Escalation.objects.filter(
            pump=pump, reason=EscalationReason.NO_USABLE_CONTACT, status=EscalationStatus.OPEN
        ).exists()

    eventually(nobody_can_reach_dora)  # the worker re-plans her pump once the block commits


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_twilio_server_error_or_rate_limit_is_retried_after_the_backoff(
    tmp_path: Path, smtp_sink: SmtpSink, twilio: FakeTwilio
) -> None:
    now = timezone.now()
    clinic = ClinicFactory(time_zone="UTC", reminder_time=time(0))
    numbers = {500: "+442071234569", 429: "+442071234570"}
    rows = {}
    for status, phone in numbers.items():
        patient = screened_patient(clinic=clinic, phone=phone, screened_at=now - timedelta(days=55))
        services.replan_pumps([overdue_pump(patient, now).pk], now)
        (rows[status],) = Message.objects.filter(address=phone, status=Status.PLANNED, due_at__lte=now)
        twilio.fail(phone, status=status, code=20000 + status, times=1)  # fails once, then accepts

    with worker_sending_to(tmp_path, twilio, PUMPTRACK_MESSAGE_RETRY_DELAY_1="2") as worker:
        assert sweep(worker) == 2
        settle([m.pk for m in rows.values()], worker)
        for row in rows.values():
            row.refresh_from_db()
            (attempt,) = Attempt.objects.filter(message=row)
            assert row.status == Status.FAILED and row.attempt_count == 1
            assert attempt.outcome == AttemptOutcome.TRANSIENT_FAILURE
            assert row.next_attempt_at == attempt.started_at + timedelta(seconds=2)
        assert not ContactBlock.objects.exists()
        assert not Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED).exists()
        assert sweep(worker) == 0  # not before the backoff has passed

        wait = max(m.next_attempt_at for m in rows.values()) - timezone.now()  # type: ignore[type-var]
        clock.sleep(max(wait.total_seconds(), 0) + 0.2)
        assert sweep(worker) == 2
        settle([m.pk for m in rows.values()], worker)

    for status, row in rows.items():
        row.refresh_from_db()
        (sms,) = twilio.sent_to(numbers[status])
        assert (row.status, row.provider_id, row.attempt_count) == (Status.SENT, sms.sid, 2)
        assert outcomes(row) == [AttemptOutcome.TRANSIENT_FAILURE, AttemptOutcome.SENT]
        assert [r.answered for r in twilio.requests_to(numbers[status])] == [status, 201]


# ------------------------------------------------------------------------- the Twilio transport


@pytest.mark.parametrize(
    ("status", "code", "permanent"),
    [
        (400, 21211, True),  # not a phone number
        (400, 21610, True),  # the recipient replied STOP to Twilio
        (400, 21408, True),  # a country we may not text
        (400, 21602, False),  # an empty body: our fault, not the number's (retried, then escalated)
        (400, 21606, False),  # our sender number cannot send: blocking patients' numbers would be wrong
        (400, 21617, False),  # a body too long
        (401, 20003, False),  # our credentials: the number is fine, a person must fix the setup
        (403, 20003, False),
        (404, 20404, False),  # a wrong account SID or base URL
        (429, 20429, False),
        (500, 20500, False),
        (503, 20503, False),
    ],
)
def test_twilio_errors_are_permanent_only_when_the_number_is_at_fault(
    settings: Any, twilio: FakeTwilio, status: int, code: int, permanent: bool
) -> None:
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, twilio.auth_token
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_API_BASE_URL = FROM_NUMBER, twilio.base_url
    twilio.fail("+442071234567", status=status, code=code)

    with pytest.raises(TransportError) as raised:
        TwilioSmsBackend().send(Outgoing(1, "+442071234567", "", "Riverside: your pump refill is due today."))

    assert raised.value.permanent is permanent
    assert f"code {code}" in str(raised.value)


@pytest.mark.parametrize(("status", "code", "permanent"), [(400, 21211, True), (401, 20003, False), (503, 20503, False)])
def test_twilio_problem_details_errors_are_classified_the_same_way(
    settings: Any, twilio: FakeTwilio, status: int, code: int, permanent: bool
) -> None:
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, twilio.auth_token
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_API_BASE_URL = FROM_NUMBER, twilio.base_url
    twilio.fail("+442071234567", status=status, code=code, rfc9457=True)

    with pytest.raises(TransportError) as raised:
        TwilioSmsBackend().send(Outgoing(1, "+442071234567", "", "Riverside: your pump refill is due today."))

    assert raised.value.permanent is permanent
    assert f"{status} code {code}" in str(raised.value)


def test_the_twilio_transport_sends_through_a_messaging_service_when_one_is_set(settings: Any, twilio: FakeTwilio) -> None:
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, twilio.auth_token
    settings.TWILIO_API_BASE_URL, settings.TWILIO_MESSAGING_SERVICE_SID = twilio.base_url, "MG" + "0" * 32

    sid = TwilioSmsBackend().send(Outgoing(7, "+442071234567", "", "Riverside: call 020 7183 8750."))

    (sms,) = twilio.messages
    assert (sms.sid, sms.messaging_service_sid, sms.from_, sms.status_callback) == (sid, "MG" + "0" * 32, "", "")


def test_wrong_twilio_credentials_are_refused_by_the_fake(settings: Any, twilio: FakeTwilio) -> None:
    """The fake checks HTTP Basic auth as Twilio does, so a test cannot pass with a wrong token."""
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, "not-the-token"
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_API_BASE_URL = FROM_NUMBER, twilio.base_url

    with pytest.raises(TransportError, match="401 code 20003"):
        TwilioSmsBackend().send(Outgoing(1, "+442071234567", "", "hello"))

    assert [(r.authorized, r.answered) for r in twilio.requests] == [(False, 401)] and not twilio.messages
