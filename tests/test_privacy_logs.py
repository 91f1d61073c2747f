"""No health data in logs: a realistic day through every face, and not one marker in any log line.

A patient with distinctive details (name, record number, date of birth, diagnosis, phone,
email, a caregiver, doses) is created, implanted, programmed with an acknowledged warning
and filled over the REST API; her record is saved in the admin; a refused write, a failing
webhook receiver, a real Celery worker sending her messages by SMTP and Twilio (one mailbox
refused, one number rejected by the provider), a delivery receipt reporting a dead number
and an SMS STOP all go through the error paths that log. Everything pumptrack logs is
captured: this process's log records at DEBUG and the worker process's whole output at
INFO. Logs may carry record ids; never a name, contact detail, date of birth, diagnosis,
dose or message body (README "What logs contain").
"""

from __future__ import annotations

import http.server
import io
import logging
import threading
import time as clock
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_support import as_shown, client_for, staff
from aiosmtpd.controller import Controller
from api_support import api_client
from conftest import SmtpSink, WorkerProcess, _free_port, spawn_worker, stop_worker
from django.utils import timezone
from factories import ClinicFactory, pump_model
from twilio_fake import FakeTwilio, fake_twilio

from notifications.models import Attempt, AttemptOutcome, Channel, Escalation, Message, Status
from notifications.tasks import dispatch_sweep
from patients.models import Patient, Role
from webhooks import services as webhook_services
from webhooks.models import DeliveryStatus, WebhookDelivery

GIVEN, FAMILY, MRN = "Zenobia", "Thistlewaite-Okonkwo", "MRN-ZT-58112"
BIRTH = "1958-11-23"
DIAGNOSIS = "Spinal cord injury"
PATIENT_EMAIL, PATIENT_PHONE = "zenobia.thistle@example.org", "+447723491837"
CAREGIVER, CAREGIVER_EMAIL, CAREGIVER_PHONE = "Percival Vanterpool", "percival.v@example.org", "+447723491838"
# The clinic's escalation mailbox: an email address too, and its refusal logs an error.
TEAM_EMAIL = "itb-team@riverside.example.org"
DOSE, NEW_DOSE = "437.5", "612.5"
REASON = "Nocturnal spasms despite the titration"
MARKERS = [
    GIVEN, FAMILY, MRN, BIRTH, DIAGNOSIS, DOSE, NEW_DOSE, REASON,
    PATIENT_EMAIL, PATIENT_PHONE, PATIENT_PHONE.lstrip("+"),
    CAREGIVER, "Vanterpool", CAREGIVER_EMAIL, CAREGIVER_PHONE, CAREGIVER_PHONE.lstrip("+"), TEAM_EMAIL,
]  # fmt: skip
# Loggers of the test's own stand-ins for the outside world, not of pumptrack: the SMTP
# server (aiosmtpd logs each command at DEBUG), its event loop, and factory_boy.
NOT_OURS = ("mail.log", "asyncio", "factory")

twilio = pytest.fixture(fake_twilio)
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


class RefusingSink(SmtpSink):
    """An SMTP server that refuses one mailbox as Postfix does, echoing the address back."""

    def __init__(self, *refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refused:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def smtp_refusing_caregiver() -> Iterator[tuple[RefusingSink, int]]:
    handler = RefusingSink(CAREGIVER_EMAIL, TEAM_EMAIL)
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@contextmanager
def failing_receiver() -> Iterator[str]:
    """An integrator's server that answers 500 and echoes what it got (a careless one)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom: " + body[:300])

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()
        server.server_close()


def settle(worker: WorkerProcess, timeout: float = 30) -> None:
    """Wait until nothing is queued, due or being sent."""
    deadline = clock.monotonic() + timeout
    while Message.objects.filter(status__in=[Status.DUE, Status.SENDING]).exists():
        if clock.monotonic() > deadline:
            pytest.fail(f"messages still in flight:\n{worker.log_text()[-3000:]}")
        clock.sleep(0.05)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith(NOT_OURS))


def leaks(text: str, markers: list[str]) -> list[tuple[str, str]]:
    """Each marker found, with the line it is in."""
    return [(m, line) for line in text.splitlines() for m in markers if m.lower() in line.lower()]


def test_a_day_of_writes_sends_and_failures_logs_no_health_data(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    twilio: FakeTwilio,
    smtp_refusing_caregiver: tuple[RefusingSink, int],
    settings: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS = ()  # the first failure is final: its error path logs
    settings.PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES = 1
    sink, smtp_port = smtp_refusing_caregiver
    now = timezone.now()
    clinic = ClinicFactory(
        name="Riverside Pump Clinic",
        time_zone="Europe/London",
        phone="+442071838750",
        notification_email=TEAM_EMAIL,
        quiet_hours_start=time(0),
        quiet_hours_end=time(0),
    )
    clinician = staff((clinic, Role.CLINICIAN))
    api = api_client(clinician)

    def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = api.post(path, body, format="json")
        assert response.status_code == 201, response.json()
        return dict(response.json())

    with failing_receiver() as receiver_url:
        created("/api/v1/webhook-endpoints/", {"clinic": clinic.pk, "url": receiver_url, "event_types": []})

        # ---- the API: patient with a caregiver, screening, implant, programming, fill
        patient = created(
            "/api/v1/patients/",
            {
                "clinic": clinic.pk, "mrn": MRN, "given_name": GIVEN, "family_name": FAMILY, "birth_date": BIRTH,
                "diagnosis": "sci", "email": PATIENT_EMAIL, "phone": PATIENT_PHONE, "time_zone": "Europe/London",
                "caregivers": [
                    {"name": CAREGIVER, "relationship": "brother", "email": CAREGIVER_EMAIL, "phone": CAREGIVER_PHONE,
                     "receives_safety_messages": True}
                ],
            },
        )  # fmt: skip
        screening = created(
            "/api/v1/screenings/", {"patient": patient["id"], "given_at": (now - timedelta(days=15)).isoformat(), "dose_mcg": 100}
        )
        assert api.patch(f"/api/v1/screenings/{screening['id']}/", {"outcome": "positive"}, format="json").status_code == 200
        implanted_at = now - timedelta(hours=2)
        pump = created(
            "/api/v1/pumps/",
            {
                "patient": patient["id"],
                "model": pump_model().pk,
                "serial_number": "ZT-0001",
                "implanted_at": implanted_at.isoformat(),
            },
        )
        program = {
            "pump": pump["id"],
            "effective_at": implanted_at.isoformat(),
            "dose_mcg_per_day": DOSE,
            "concentration_mcg_per_ml": "2000",
        }
        refused = api.post("/api/v1/programs/", program, format="json")  # a warning to acknowledge: a 400
        assert refused.status_code == 400 and refused.json()["warnings"], refused.json()
        codes = [w["code"] for w in refused.json()["warnings"]]
        created("/api/v1/programs/", {**program, "acknowledged_warnings": codes, "reason": REASON})
        fill = {
            "pump": pump["id"],
            "performed_at": (implanted_at + timedelta(minutes=5)).isoformat(),
            "withdrawn_ml": "0",
            "volume_added_ml": "45",
            "concentration_mcg_per_ml": "2000",
        }
        too_much = api.post("/api/v1/refills/", fill, format="json")  # a validation error
        assert too_much.status_code == 400 and "volume_added_ml" in too_much.json()
        created("/api/v1/refills/", {**fill, "volume_added_ml": "40"})
        change = {**program, "effective_at": (now - timedelta(hours=1)).isoformat(), "dose_mcg_per_day": NEW_DOSE}
        warned = api.post("/api/v1/programs/", change, format="json")
        assert warned.status_code == 400, warned.json()
        codes = [w["code"] for w in warned.json()["warnings"]]
        created("/api/v1/programs/", {**change, "acknowledged_warnings": codes, "reason": REASON})

        # ---- the admin: the patient's page saved as shown, then with a bad date
        admin = client_for(clinician)
        page = admin.get(f"/admin/patients/patient/{patient['id']}/change/")
        assert page.status_code == 200
        saved = admin.post(f"/admin/patients/patient/{patient['id']}/change/", as_shown(page))
        assert saved.status_code == 302, saved.context and saved.context["adminform"].form.errors
        bad = admin.post(f"/admin/patients/patient/{patient['id']}/change/", as_shown(page, birth_date="31/02/1958"))
        assert bad.status_code == 200  # the form again, with its error

        # ---- webhooks: every event to a receiver that fails
        deliveries = list(WebhookDelivery.objects.values_list("pk", flat=True))
        assert deliveries
        for pk in deliveries:
            webhook_services.deliver(pk, timezone.now())
        assert WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED_PERMANENTLY).exists()

    # ---- a real worker sends what is due: a refused mailbox, a number the provider rejects
    twilio.fail(PATIENT_PHONE, status=400, code=21211, message=f"The 'To' number {PATIENT_PHONE} is not a valid phone number.")
    assert Message.objects.filter(status=Status.PLANNED, due_at__lte=timezone.now()).exists()
    worker = spawn_worker(
        tmp_path / "worker.log",
        env={
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp_port),
            "EMAIL_USE_TLS": "false",
            "SITE_URL": "https://pumps.riverside.example.org",
            **twilio.env("+442071838700"),
        },
    )
    try:
        assert int(dispatch_sweep.apply_async(queue=worker.queue).get(timeout=20)) > 0
        settle(worker)
    finally:
        stop_worker(worker)
    worker_log = worker.log_text()

    refused_mail = Attempt.objects.filter(message__address=CAREGIVER_EMAIL, outcome=AttemptOutcome.PERMANENT_FAILURE)
    rejected_sms = Attempt.objects.filter(message__address=PATIENT_PHONE, outcome=AttemptOutcome.PERMANENT_FAILURE)
    refused_team = Attempt.objects.filter(message__address=TEAM_EMAIL, outcome=AttemptOutcome.PERMANENT_FAILURE)
    assert refused_mail.exists() and rejected_sms.exists() and refused_team.exists(), worker_log[-3000:]
    # The providers' errors echoed the address; what pumptrack keeps and emails to staff does not.
    errors = [a.error for a in [*refused_mail, *rejected_sms, *refused_team]]
    details = list(Escalation.objects.values_list("detail", flat=True))
    assert all("<recipient>" in e for e in errors), errors
    assert not leaks("\n".join(errors + details), [CAREGIVER_EMAIL, PATIENT_PHONE, TEAM_EMAIL]), errors + details
    sent = list(Message.objects.filter(status=Status.SENT))
    assert any(m.channel == Channel.EMAIL for m in sent) and any(m.channel == Channel.SMS for m in sent)
    assert sink.messages and twilio.messages

    # ---- the provider's receipts: the caregiver's number is dead; then he texts STOP
    settings.TWILIO_AUTH_TOKEN, settings.SITE_URL = twilio.auth_token, "https://pumps.riverside.example.org"
    (caregiver_sms, *_) = twilio.sent_to(CAREGIVER_PHONE)
    assert twilio.post_status(caregiver_sms, "undelivered", client=admin, error_code="30003").status_code == 204
    twilio.post_webhook(
        "https://pumps.riverside.example.org/n/twilio/inbound/", twilio.inbound_params(CAREGIVER_PHONE, "STOP"), client=admin
    )
    assert Escalation.objects.filter(patient_id=patient["id"]).count() >= 3

    # ---- what was logged: enough to show the capture works, and no health data
    here = logged(caplog)
    assert "Bad Request: /api/v1/refills/" in here and "escalation raised" in here
    assert "webhook delivery" in here and "failed permanently" in here
    assert "succeeded in" in worker_log and "escalation raised" in worker_log and "to the clinic failed" in worker_log
    bodies = [m.rendered_body for m in sent if len(m.rendered_body) > 20] + [
        m.rendered_subject for m in sent if m.rendered_subject
    ]
    found = {
        source: leaks(text, MARKERS) + [("a message body", b) for b in bodies if b in text]
        for source, text in (("this process", here), ("the worker", worker_log))
    }
    assert found == {"this process": [], "the worker": []}, f"health data in the logs: {found}"
    assert Patient.objects.get(pk=patient["id"]).family_name == FAMILY  # the markers were really used


@pytest.mark.django_db
def test_a_database_error_in_a_log_keeps_its_message_but_not_the_rows_values() -> None:
    """A 500's traceback as Django logs it: PostgreSQL's error quotes the failing row (a bug or
    a race puts it there; the services validate first), the configured handler removes it."""
    from django.db import IntegrityError, transaction
    from factories import PatientFactory

    patient = PatientFactory(given_name=GIVEN, family_name=FAMILY, mrn=MRN, birth_date=BIRTH, phone=PATIENT_PHONE)
    # settings.LOGGING's console handler (pytest's own handlers are subclasses).
    (console,) = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    stream = io.StringIO()
    previous = console.setStream(stream)  # type: ignore[attr-defined]
    try:
        try:
            with transaction.atomic():
                Patient.objects.filter(pk=patient.pk).update(given_name=None)
        except IntegrityError:
            logging.getLogger("django.request").error("Internal Server Error: /api/v1/patients/", exc_info=True)
        try:
            with transaction.atomic():
                PatientFactory(clinic=patient.clinic, mrn=MRN)
        except IntegrityError:
            logging.getLogger("celery.app.trace").error("Task raised unexpected: %r", "see below", exc_info=True)
    finally:
        console.setStream(previous)  # type: ignore[attr-defined]
    text = stream.getvalue()
    assert "IntegrityError" in text and "not-null constraint" in text and "duplicate key" in text
    assert "DETAIL: [values removed]" in text and "Key (" not in text and "Failing row" not in text
    assert not leaks(text, MARKERS), text
