"""Outbound webhooks: events recorded with the record, signed as the Standard Webhooks
specification says, delivered over real HTTP to a receiver on loopback, retried with the
same `webhook-id`, and endpoints disabled when they keep failing.

Signatures are checked with the independent `standardwebhooks` library, which also checks
the `webhook-timestamp` against its clock: each check runs with the clock travelled to the
moment of sending. Services take `now`, so retries are timed by the moments passed in,
never by sleeping. (Tests for inbound Twilio callbacks are in tests/test_webhooks.py.)

The worked-example pump (factories.py): implanted and filled 2027-01-04 09:00 UTC with
40 mL at 500 mcg/mL, 200 mcg/day (0.4 mL/day). The visit, 28 days later, expects 28.80 mL.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time as clock
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import time_machine
from admin_support import NOW, VISIT_AT, client_for, staff
from api_support import api_client
from conftest import WorkerProcess, kill_worker, spawn_worker, stop_worker
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import include, path, reverse
from factories import fill, implanted_pump, screened_patient
from rest_framework.routers import DefaultRouter
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifications import services as notification_services
from notifications.models import Escalation, EscalationReason, Severity
from patients.models import Clinic, Role
from pumps import services as pump_services
from pumps.models import Pump
from pumptrack.celery import app as celery_app
from webhooks import api, checks, services, signing
from webhooks.models import (
    AttemptOutcome,
    DeliveryStatus,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from webhooks.tasks import deliver_webhook

# The REST routes as the API registers them (api/urls.py), in a URLconf of this module.
router = DefaultRouter()
router.register("webhook-endpoints", api.WebhookEndpointViewSet)
router.register("webhook-deliveries", api.WebhookDeliveryViewSet)
urlpatterns = [path("api/v1/", include(router.urls))]
ENDPOINTS, DELIVERIES = "/api/v1/webhook-endpoints/", "/api/v1/webhook-deliveries/"

SENT_AT = VISIT_AT + timedelta(minutes=1)
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- a receiver on loopback


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An integrator's HTTP server on 127.0.0.1: records every POST and answers with the
    statuses it is told to, in order (then 200). `hold()` keeps the next answers waiting
    until `release()`, so a test knows the sender is inside its network call."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                receiver.gate.wait(30)
                with contextlib.suppress(OSError):  # the sender may be dead (a killed worker)
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    if 300 <= status < 400:
                        self.send_header("Location", "/moved")  # a redirect must not be followed
                    self.end_headers()
                    self.wfile.write(f"answered {status}".encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pumptrack"

    def answer(self, *statuses: int) -> None:
        self.statuses.extend(statuses)

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = clock.monotonic() + timeout
        while len(self.requests) < count:
            if clock.monotonic() > deadline:
                pytest.fail(f"the receiver got {len(self.requests)} requests, expected {count}")
            clock.sleep(0.02)
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    try:
        yield server
    finally:
        server.release()
        server.server.shutdown()
        server.server.server_close()


# --------------------------------------------------------------------------- helpers


def endpoint_for(clinic: Clinic, url: str, *event_types: str) -> WebhookEndpoint:
    return services.create_endpoint(clinic=clinic, url=url, by=None, description="EHR bridge", event_types=event_types)


def verified(request: Received, secret: str, at: datetime) -> Any:
    """The payload, if the library accepts the signature at the moment `at` (else it raises)."""
    with time_machine.travel(at, tick=False):
        return Webhook(secret).verify(request.body, request.headers)


def send(now: datetime) -> list[str]:
    """What the delivery tasks do, in this process, at `now`: each delivery that may go now
    goes (a retry only once its backoff ran out); the outcomes of those that went."""
    outcomes = [services.deliver(pk, now).outcome for pk in WebhookDelivery.objects.order_by("pk").values_list("pk", flat=True)]
    return [o for o in outcomes if o != "not_claimed"]


def send_due(now: datetime) -> list[str]:
    """What the beat sweep and the tasks it queues do, in this process, at `now`."""
    return [services.deliver(pk, now).outcome for pk in services.dispatch_due(now)]


def refill_at_visit(pump: Pump, at: datetime = VISIT_AT) -> Any:
    return fill(pump, at=at, volume_added_ml="40", withdrawn_ml="28.50")


def raise_dose(pump: Pump, dose: str = "220", at: datetime = VISIT_AT) -> Any:
    return pump_services.change_program(
        pump,
        pump_services.ProgramInput(effective_at=at, dose_mcg_per_day=Decimal(dose), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=at,
    )


def deliveries(**filters: Any) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(**filters).order_by("pk"))


def delivery_tasks(on_commit: list[Any]) -> list[tuple[Any, ...]]:
    """The arguments of the delivery tasks among callbacks run on commit."""
    return [c.args for c in on_commit if getattr(getattr(c, "func", None), "__self__", None) == deliver_webhook]


def outcomes(delivery: WebhookDelivery) -> list[tuple[str, int | None]]:
    return list(WebhookAttempt.objects.filter(delivery=delivery).order_by("pk").values_list("outcome", "status_code"))


# --------------------------------------------------------------------------- signing


def test_a_new_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert signing.new_secret() != secret


def test_the_signature_is_the_one_the_standardwebhooks_library_computes() -> None:
    secret, body = signing.new_secret(), b'{"type":"refill.recorded","data":{"id":1}}'
    at = datetime(2027, 2, 1, 9, 1, tzinfo=UTC)
    expected = Webhook(secret).sign("msg_abc", at, body.decode())
    assert signing.signature(secret, "msg_abc", int(at.timestamp()), body) == expected


# --------------------------------------------------------------------------- settings


def test_a_claim_shorter_than_ten_timeouts_fails_the_system_check(settings: Any) -> None:
    settings.PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS, settings.PUMPTRACK_WEBHOOK_CLAIM_SECONDS = 15, 149
    assert [e.id for e in checks.claim_outlasts_request()] == ["webhooks.E001"]
    settings.PUMPTRACK_WEBHOOK_CLAIM_SECONDS = 150
    assert checks.claim_outlasts_request() == []


@pytest.mark.parametrize("delays", ["5,2.5", "5,0", "five"])
def test_a_retry_schedule_that_is_not_whole_positive_seconds_stops_start_up(delays: str) -> None:
    env = {**os.environ, "PUMPTRACK_WEBHOOK_RETRY_DELAYS": delays, "DJANGO_SETTINGS_MODULE": "pumptrack.settings"}
    started = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0 and "PUMPTRACK_WEBHOOK_RETRY_DELAYS" in started.stderr


# --------------------------------------------------------------------------- events


@pytest.mark.django_db
def test_a_recorded_refill_reaches_the_receiver_signed_as_standard_webhooks_says(
    pump_a: Pump, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    with django_capture_on_commit_callbacks() as queued:
        refill = refill_at_visit(pump_a)
    [delivery] = deliveries()
    assert (delivery.endpoint, delivery.event_type, delivery.status) == (endpoint, EventType.REFILL_RECORDED, "pending")
    assert delivery_tasks(queued) == [(delivery.pk,)]  # its task, queued once the refill commits

    assert send(SENT_AT) == ["succeeded"]
    [request] = receiver.requests
    assert request.path == "/hooks/pumptrack"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == delivery.event_id and delivery.event_id.startswith("msg_")
    assert request.headers["webhook-timestamp"] == str(int(SENT_AT.timestamp()))
    payload = verified(request, endpoint.secret, SENT_AT)
    refill.refresh_from_db()
    assert payload == {
        "type": "refill.recorded",
        "timestamp": refill.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "id": refill.pk,
            "pump": pump_a.pk,
            "performed_at": "2027-02-01T09:00:00Z",
            "withdrawn_ml": "28.50",
            "volume_added_ml": "40.00",
            "concentration_mcg_per_ml": "500.00",
            "expected_residual_ml": "28.80",  # 40 mL - 28 days x 0.4 mL/day
            "discrepancy_ml": "-0.30",
            "discrepancy_flagged": False,
            "volume_after_fill_ml": "40.00",
            "alarm_on": refill.alarm_on.isoformat(),
            "refill_by": refill.refill_by.isoformat(),
        },
    }
    # The spec's order of keys, and nothing that names the patient.
    assert list(json.loads(request.body)) == ["type", "timestamp", "data"]
    assert pump_a.patient.family_name.encode() not in request.body and b"Alex" not in request.body
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count, delivery.last_status_code, delivery.delivered_at) == (
        DeliveryStatus.SUCCEEDED,
        1,
        200,
        SENT_AT,
    )
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert (attempt.outcome, attempt.status_code, attempt.response_excerpt) == (AttemptOutcome.SUCCEEDED, 200, "answered 200")
    assert attempt.request_headers["webhook-id"] == delivery.event_id
    assert endpoint.secret not in json.dumps(attempt.request_headers)


@pytest.mark.django_db
def test_a_signature_made_with_another_secret_is_rejected(pump_a: Pump, receiver: Receiver) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    send(SENT_AT)
    with pytest.raises(WebhookVerificationError):
        verified(receiver.requests[0], signing.new_secret(), SENT_AT)


@pytest.mark.django_db
def test_a_retry_after_a_500_carries_the_same_webhook_id_and_a_new_signature(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(500)

    assert send(SENT_AT) == ["retry"]
    [delivery] = deliveries()
    assert (delivery.status, delivery.next_attempt_at) == (DeliveryStatus.FAILED, SENT_AT + timedelta(seconds=5))
    assert (delivery.last_status_code, delivery.last_error) == (500, "HTTP 500")
    # The backoff runs out at 5 s (the spec's first retry), not before; the sweep queues it then.
    assert send_due(SENT_AT + timedelta(seconds=4)) == []
    retried_at = SENT_AT + timedelta(seconds=5)
    assert send_due(retried_at) == ["succeeded"]

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 5
    assert verified(first, endpoint.secret, SENT_AT) == verified(second, endpoint.secret, retried_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count) == (DeliveryStatus.SUCCEEDED, 2)
    assert outcomes(delivery) == [(AttemptOutcome.FAILED, 500), (AttemptOutcome.SUCCEEDED, 200)]


@pytest.mark.django_db
def test_a_dose_change_sends_dose_changed(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    program = raise_dose(pump_a, "220")
    send(SENT_AT)
    [request] = receiver.requests
    payload = verified(request, endpoint.secret, SENT_AT)
    assert payload["type"] == "dose.changed"
    assert payload["data"] == {
        "id": program.pk,
        "pump": pump_a.pk,
        "effective_at": "2027-02-01T09:00:00Z",
        "dose_mcg_per_day": "220.000",
        "concentration_mcg_per_ml": "500.00",
        "mode": "simple",
        "previous_dose_mcg_per_day": "200.000",
        "acknowledged_warnings": [],
    }


@pytest.mark.django_db
def test_an_overdue_refill_sends_escalation_raised_and_refill_overdue(clinic_a: Clinic, receiver: Receiver) -> None:
    # An email address: the only escalation is the overdue refill (not "no usable contact").
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, email="alex@example.org"))
    endpoint = endpoint_for(clinic_a, receiver.url)
    day_after = datetime(2027, 2, 10, 12, 0, tzinfo=UTC)
    assert pump.refill_by is not None and pump.refill_by < day_after.date()

    notification_services.replan_pumps([pump.pk], day_after)

    [esc] = Escalation.objects.filter(pump=pump)
    assert esc.reason == EscalationReason.OVERDUE
    assert send(day_after) == ["succeeded", "succeeded"]
    payloads = {p["type"]: p for p in (verified(r, endpoint.secret, day_after) for r in receiver.requests)}
    assert payloads["escalation.raised"] == {
        "type": "escalation.raised",
        "timestamp": "2027-02-10T12:00:00Z",
        "data": {
            "id": esc.pk,
            "pump": pump.pk,
            "patient": pump.patient_id,
            "clinic": clinic_a.pk,
            "reason": "overdue",
            "severity": "warning",
            "raised_at": "2027-02-10T12:00:00Z",
        },
    }
    assert payloads["refill.overdue"] == {
        "type": "refill.overdue",
        "timestamp": "2027-02-10T12:00:00Z",
        "data": {"pump": pump.pk, "patient": pump.patient_id, "refill_by": pump.refill_by.isoformat()},
    }
    # Two events, two webhook-ids.
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2


@pytest.mark.django_db
def test_a_rolled_back_recording_leaves_no_delivery_and_queues_nothing(
    pump_a: Pump, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)

    class Abandoned(Exception):
        pass

    with django_capture_on_commit_callbacks() as queued, pytest.raises(Abandoned), transaction.atomic():
        refill_at_visit(pump_a)
        raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
        assert len(deliveries()) == 2  # written inside the transaction...
        raise Abandoned

    assert deliveries() == [] and delivery_tasks(queued) == []  # ...and gone with it
    assert not pump_a.refills.filter(performed_at=VISIT_AT).exists()
    assert send(SENT_AT) == [] and receiver.requests == []


@pytest.mark.django_db
def test_an_endpoint_receives_only_the_event_types_it_subscribed_to(pump_a: Pump, receiver: Receiver) -> None:
    doses_only = endpoint_for(pump_a.patient.clinic, receiver.url, "dose.changed")
    everything = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    assert [d.event_type for d in deliveries(endpoint=doses_only)] == ["dose.changed"]
    assert [d.event_type for d in deliveries(endpoint=everything)] == ["refill.recorded", "dose.changed"]
    # One event has one webhook-id, whichever endpoint it goes to.
    assert deliveries(endpoint=doses_only)[0].event_id == deliveries(endpoint=everything)[1].event_id


@pytest.mark.django_db
def test_another_clinics_events_never_reach_an_endpoint(pump_a: Pump, pump_b: Pump, receiver: Receiver) -> None:
    endpoint_a = endpoint_for(pump_a.patient.clinic, receiver.url)
    endpoint_b = endpoint_for(pump_b.patient.clinic, receiver.url)
    refill_at_visit(pump_b)
    raise_dose(pump_b, "220", at=VISIT_AT + timedelta(minutes=5))
    notification_services.replan_pumps([pump_b.pk], datetime(2027, 3, 20, 12, tzinfo=UTC))  # overdue in clinic B
    assert deliveries(endpoint=endpoint_a) == []
    assert {d.event_type for d in deliveries(endpoint=endpoint_b)} >= {"refill.recorded", "dose.changed", "escalation.raised"}
    send(SENT_AT)
    assert {verified(r, endpoint_b.secret, SENT_AT)["type"] for r in receiver.requests} >= {"refill.recorded"}


@pytest.mark.django_db
def test_a_disabled_endpoint_gets_no_new_events(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    services.disable_endpoint(endpoint, "Paused by staff.", now=VISIT_AT)
    refill_at_visit(pump_a)
    assert deliveries() == []


@pytest.mark.django_db
def test_a_delivery_queued_before_its_endpoint_was_disabled_is_cancelled_not_sent(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    # Disabled between the task being queued and the worker picking it up.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
    assert send(SENT_AT) == ["cancelled"]
    assert receiver.requests == [] and deliveries()[0].status == DeliveryStatus.CANCELLED


# --------------------------------------------------------------------------- failures


@pytest.mark.django_db
def test_a_delivery_that_cannot_be_prepared_is_a_failed_attempt_on_the_retry_schedule(pump_a: Pump, receiver: Receiver) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    [delivery] = deliveries()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(payload={"data": {}})  # damaged: no type
    with pytest.raises(KeyError):
        services.deliver(delivery.pk, SENT_AT)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at) == (DeliveryStatus.FAILED, SENT_AT + timedelta(seconds=5))
    assert "could not prepare the request" in delivery.last_error and receiver.requests == []
    assert outcomes(delivery) == [(AttemptOutcome.FAILED, None)]


@pytest.mark.django_db
@pytest.mark.parametrize("status", [400, 401, 404, 408, 429, 500, 502, 503, 301])
def test_an_error_answer_other_than_410_is_retried(status: int, pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(status)
    assert send(SENT_AT) == ["retry"]
    [delivery] = deliveries()
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.FAILED, status)
    assert [r.path for r in receiver.requests] == ["/hooks/pumptrack"]
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.consecutive_failures == 0  # only deliveries failed for good count


@pytest.mark.django_db
def test_a_refused_connection_is_retried(pump_a: Pump, free_port: int) -> None:
    endpoint_for(pump_a.patient.clinic, f"http://127.0.0.1:{free_port}/hook")
    refill_at_visit(pump_a)
    assert send(SENT_AT) == ["retry"]
    [delivery] = deliveries()
    assert delivery.status == DeliveryStatus.FAILED and "refused" in delivery.last_error.lower()
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert (attempt.outcome, attempt.status_code) == (AttemptOutcome.FAILED, None)


@pytest.mark.django_db
def test_a_receiver_slower_than_the_timeout_is_retried(pump_a: Pump, receiver: Receiver, settings: Any) -> None:
    settings.PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS = 1
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.hold()
    assert send(SENT_AT) == ["retry"]
    receiver.release()
    assert "timed out" in deliveries()[0].last_error


@pytest.mark.django_db
def test_after_the_last_retry_a_delivery_fails_for_good(pump_a: Pump, receiver: Receiver, settings: Any) -> None:
    settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS = (5, 300)
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(500, 500, 500, 500)
    assert send(SENT_AT) == ["retry"]
    assert send_due(SENT_AT + timedelta(seconds=5)) == ["retry"]
    assert send_due(SENT_AT + timedelta(seconds=304)) == []
    assert send_due(SENT_AT + timedelta(seconds=305)) == ["failed_permanently"]
    [delivery] = deliveries()
    assert (delivery.status, delivery.attempt_count) == (DeliveryStatus.FAILED_PERMANENTLY, 3)
    assert send_due(SENT_AT + timedelta(days=2)) == [] and send(SENT_AT + timedelta(days=2)) == []
    assert len(receiver.requests) == 3 and len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.consecutive_failures) == (True, 1)


def fail_for_good(delivery: WebhookDelivery, receiver: Receiver, now: datetime) -> datetime:
    """Two answers of 500 with one retry configured: the delivery fails for good."""
    receiver.answer(500, 500)
    assert services.deliver(delivery.pk, now).outcome == "retry"
    later = now + timedelta(seconds=5)
    assert services.deliver(delivery.pk, later).outcome == "failed_permanently"
    return later


@pytest.mark.django_db
def test_an_endpoint_is_disabled_after_n_deliveries_in_a_row_fail_for_good(
    pump_a: Pump, receiver: Receiver, settings: Any
) -> None:
    settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS, settings.PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES = (5,), 2
    clinic = pump_a.patient.clinic
    failing = endpoint_for(clinic, receiver.url + "/failing")
    watcher = endpoint_for(clinic, receiver.url + "/watcher", "escalation.raised")
    refill_at_visit(pump_a)
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    fill(pump_a, at=VISIT_AT + timedelta(days=1), volume_added_ml="40", withdrawn_ml="39.60")
    first, second, third = deliveries(endpoint=failing)

    now = fail_for_good(first, receiver, SENT_AT)
    failing.refresh_from_db()
    assert (failing.is_active, failing.consecutive_failures) == (True, 1)
    now = fail_for_good(second, receiver, now + timedelta(minutes=1))

    failing.refresh_from_db()
    assert (failing.is_active, failing.consecutive_failures, failing.disabled_at) == (False, 2, now)
    assert "2 deliveries in a row failed" in failing.disabled_reason
    # What it still had to receive is cancelled, and nothing more is sent to it.
    third.refresh_from_db()
    assert third.status == DeliveryStatus.CANCELLED
    assert services.deliver(third.pk, now).outcome == "not_claimed"
    # Staff are told (an escalation, emailed like the others), and so are the clinic's
    # other integrations, by the escalation's own event.
    [esc] = Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED, clinic=clinic)
    assert esc.severity == Severity.WARNING and f"Webhook endpoint {failing.pk}" in esc.detail
    [told] = deliveries(endpoint=watcher)
    assert told.payload["data"]["id"] == esc.pk and told.payload["data"]["reason"] == "delivery_failed"


@pytest.mark.django_db
def test_a_success_resets_the_count_of_failures(pump_a: Pump, receiver: Receiver, settings: Any) -> None:
    settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS, settings.PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES = (5,), 2
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    fill(pump_a, at=VISIT_AT + timedelta(days=1), volume_added_ml="40", withdrawn_ml="39.60")
    first, second, third = deliveries()
    now = fail_for_good(first, receiver, SENT_AT)
    assert services.deliver(second.pk, now).outcome == "succeeded"
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0
    fail_for_good(third, receiver, now)
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.consecutive_failures) == (True, 1)


@pytest.mark.django_db
def test_410_gone_disables_the_endpoint_at_once(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    gone, waiting = deliveries()
    receiver.answer(410)

    assert services.deliver(gone.pk, SENT_AT).outcome == "failed_permanently"

    endpoint.refresh_from_db()
    assert not endpoint.is_active and "410" in endpoint.disabled_reason
    gone.refresh_from_db()
    waiting.refresh_from_db()
    assert (gone.status, waiting.status) == (DeliveryStatus.FAILED_PERMANENTLY, DeliveryStatus.CANCELLED)
    assert send(SENT_AT + timedelta(days=2)) == [] and len(receiver.requests) == 1
    assert Escalation.objects.filter(reason=EscalationReason.DELIVERY_FAILED).count() == 1


@pytest.mark.django_db
def test_a_reenabled_endpoint_gets_new_events_and_failed_deliveries_can_be_retried(pump_a: Pump, receiver: Receiver) -> None:
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(410)
    send(SENT_AT)
    [delivery] = deliveries()
    assert services.retry_now([delivery.pk], now=SENT_AT) == []  # not while the endpoint is disabled

    assert services.enable_endpoint(endpoint)
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.disabled_reason, endpoint.consecutive_failures) == (True, "", 0)
    later = SENT_AT + timedelta(hours=1)
    assert services.retry_now([delivery.pk], now=later) == [delivery.pk]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count) == (DeliveryStatus.PENDING, 0)
    assert services.deliver(delivery.pk, later).outcome == "succeeded"
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]
    assert outcomes(delivery) == [(AttemptOutcome.FAILED, 410), (AttemptOutcome.SUCCEEDED, 200)]


# --------------------------------------------------------------------------- the sweep


@pytest.mark.django_db
def test_the_sweep_requeues_a_lost_task_only_once_its_claim_period_has_passed(pump_a: Pump, receiver: Receiver) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    [delivery] = deliveries()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(queued_at=VISIT_AT)  # its task went to the broker then
    assert services.dispatch_due(VISIT_AT + timedelta(seconds=299)) == []  # the task may still be on its way
    assert services.dispatch_due(VISIT_AT + timedelta(seconds=301)) == [delivery.pk]
    assert services.dispatch_due(VISIT_AT + timedelta(seconds=302)) == []  # queued once, not every sweep


@pytest.mark.django_db
def test_a_delivery_claimed_by_one_worker_is_not_sent_by_another(pump_a: Pump, receiver: Receiver) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    [delivery] = deliveries()
    receiver.answer(200)
    assert services.deliver(delivery.pk, SENT_AT).outcome == "succeeded"
    assert services.deliver(delivery.pk, SENT_AT).outcome == "not_claimed"
    assert len(receiver.requests) == 1


# --------------------------------------------------------------------------- endpoints


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["ftp://ehr.example.org/in", "file:///etc/passwd", "gopher://ehr.example.org/", "javascript:alert(1)", "ehr.example.org/in"],
)
def test_only_http_and_https_urls_are_accepted(url: str, clinic_a: Clinic) -> None:
    with pytest.raises(ValidationError) as refused:
        endpoint_for(clinic_a, url)
    assert list(refused.value.message_dict) == ["url"]


@pytest.mark.django_db
def test_unknown_event_types_are_refused_by_name(clinic_a: Clinic) -> None:
    with pytest.raises(ValidationError) as refused:
        endpoint_for(clinic_a, "https://ehr.example.org/in", "refill.recorded", "refill.done")
    assert refused.value.message_dict == {
        "event_types": [
            "Unknown event type: refill.done. Known: refill.recorded, dose.changed, refill.overdue, escalation.raised."
        ]
    }


@pytest.mark.django_db
def test_a_rotated_secret_signs_alongside_the_old_one_for_the_grace_period(
    pump_a: Pump, receiver: Receiver, settings: Any
) -> None:
    settings.PUMPTRACK_WEBHOOK_SECRET_ROTATION_GRACE_SECONDS = 3600
    endpoint = endpoint_for(pump_a.patient.clinic, receiver.url)
    old = endpoint.secret
    rotated = services.rotate_secret(endpoint, now=VISIT_AT)
    assert rotated.secret != old
    refill_at_visit(pump_a)
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    first, second = deliveries()
    services.deliver(first.pk, SENT_AT)
    after_grace = VISIT_AT + timedelta(hours=1, seconds=1)
    services.deliver(second.pk, after_grace)

    during, after = receiver.requests
    assert verified(during, rotated.secret, SENT_AT) and verified(during, old, SENT_AT)
    assert verified(after, rotated.secret, after_grace)
    with pytest.raises(WebhookVerificationError):
        verified(after, old, after_grace)


# --------------------------------------------------------------------------- real Celery workers


@contextlib.contextmanager
def tasks_queued_for(worker: WorkerProcess) -> Iterator[None]:
    """This process queues tasks (on commit) where `worker` consumes, not on the shared default queue."""
    before = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = worker.queue
    try:
        yield
    finally:
        celery_app.conf.task_default_queue = before


def wait_for_status(delivery: WebhookDelivery, status: str, worker: WorkerProcess, timeout: float = 20) -> WebhookDelivery:
    deadline = clock.monotonic() + timeout
    while True:
        delivery.refresh_from_db()
        if delivery.status == status:
            return delivery
        if clock.monotonic() > deadline:
            pytest.fail(f"delivery {delivery.status}, expected {status}\n{worker.log_text()[-3000:]}")
        clock.sleep(0.05)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_celery_worker_delivers_the_refill_once_it_commits(
    celery_worker_process: WorkerProcess, receiver: Receiver, clinic_a: Clinic
) -> None:
    # An email address: re-planning on commit raises no "no usable contact" escalation (an event too).
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, email="alex@example.org"))
    endpoint = endpoint_for(clinic_a, receiver.url)
    with tasks_queued_for(celery_worker_process):
        refill_at_visit(pump)  # its own transaction: the task is queued when it commits

    [request] = receiver.wait_for(1)
    [delivery] = deliveries()
    wait_for_status(delivery, DeliveryStatus.SUCCEEDED, celery_worker_process)
    sent_at = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=UTC)
    assert verified(request, endpoint.secret, sent_at)["type"] == "refill.recorded"
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert attempt.outcome == AttemptOutcome.SUCCEEDED and attempt.worker  # the worker's host name


@pytest.mark.integration
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_killed_workers_claim_expires_and_the_sweep_sends_again_with_the_same_webhook_id(
    tmp_path: Path, receiver: Receiver, clinic_a: Clinic
) -> None:
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, email="alex@example.org"))
    endpoint = endpoint_for(clinic_a, receiver.url)
    worker = spawn_worker(tmp_path / "worker.log")
    try:
        receiver.hold()  # the worker's request waits unanswered: it is inside the network call
        with tasks_queued_for(worker):
            refill_at_visit(pump)
        receiver.wait_for(1)
        kill_worker(worker)
    finally:
        stop_worker(worker)
    receiver.release()

    [delivery] = deliveries()
    assert delivery.status == DeliveryStatus.SENDING and delivery.claim_expires_at is not None
    [lost] = WebhookAttempt.objects.filter(delivery=delivery)
    assert lost.outcome == AttemptOutcome.IN_FLIGHT  # committed before the network call
    # Before the claim expires nothing is sent again; after, the sweep queues it and it goes.
    assert services.dispatch_due(delivery.claim_expires_at - timedelta(seconds=1)) == []
    later = delivery.claim_expires_at + timedelta(seconds=1)
    assert services.dispatch_due(later) == [delivery.pk]
    assert services.deliver(delivery.pk, later).outcome == "succeeded"

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.event_id
    assert verified(second, endpoint.secret, later)["data"]["pump"] == pump.pk
    assert outcomes(delivery) == [(AttemptOutcome.WORKER_LOST, None), (AttemptOutcome.SUCCEEDED, 200)]


# --------------------------------------------------------------------------- REST API


def _api(user: Any) -> Any:
    return api_client(user)


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_coordinator_registers_an_endpoint_and_gets_its_secret(clinic_a: Clinic) -> None:
    coordinator = staff((clinic_a, Role.COORDINATOR))
    answer = _api(coordinator).post(
        ENDPOINTS,
        {"clinic": clinic_a.pk, "url": "https://ehr.example.org/in", "description": "EHR", "event_types": ["refill.recorded"]},
    )
    assert answer.status_code == 201, answer.json()
    body = answer.json()
    endpoint = WebhookEndpoint.objects.get()
    assert body["secret"] == endpoint.secret and body["secret"].startswith("whsec_")
    assert (body["event_types"], body["is_active"], endpoint.created_by) == (["refill.recorded"], True, coordinator)
    # A viewer of the clinic sees the endpoint, not its secret; a nurse may not register one.
    viewer = _api(staff((clinic_a, Role.VIEWER))).get(f"{ENDPOINTS}{endpoint.pk}/").json()
    assert viewer["url"] == "https://ehr.example.org/in" and viewer["secret"] is None
    nurse = _api(staff((clinic_a, Role.NURSE))).post(ENDPOINTS, {"clinic": clinic_a.pk, "url": "https://x.example.org/"})
    assert nurse.status_code == 403


@pytest.mark.django_db
@pytest.mark.urls(__name__)
@pytest.mark.parametrize(
    ("fields", "error_field"),
    [
        ({"url": "ftp://ehr.example.org/in"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "https://ehr.example.org/in", "event_types": ["refill.done"]}, "event_types"),
    ],
)
def test_the_api_refuses_a_bad_url_or_event_type_by_field(fields: dict[str, Any], error_field: str, clinic_a: Clinic) -> None:
    answer = _api(staff((clinic_a, Role.CLINICIAN))).post(ENDPOINTS, {"clinic": clinic_a.pk, **fields})
    assert answer.status_code == 400 and error_field in answer.json()
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_the_api_disables_and_reenables_rotates_and_keeps_the_clinic(clinic_a: Clinic, clinic_b: Clinic) -> None:
    endpoint = endpoint_for(clinic_a, "https://ehr.example.org/in")
    client = _api(staff((clinic_a, Role.CLINICIAN), (clinic_b, Role.CLINICIAN)))
    url = f"{ENDPOINTS}{endpoint.pk}/"
    assert client.patch(url, {"is_active": False}).json()["is_active"] is False
    endpoint.refresh_from_db()
    assert endpoint.disabled_reason == "Disabled by staff."
    assert client.patch(url, {"is_active": True, "event_types": ["dose.changed"]}).json()["is_active"] is True
    assert client.patch(url, {"clinic": clinic_b.pk}).json() == {
        "clinic": ["An endpoint stays with the clinic it was registered for."]
    }
    rotated = client.post(f"{url}rotate-secret/").json()
    assert rotated["secret"] != endpoint.secret and rotated["event_types"] == ["dose.changed"]
    assert client.delete(url).status_code == 204 and not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_clinic_bs_member_can_neither_see_nor_change_clinic_as_endpoints_or_deliveries(
    pump_a: Pump, clinic_b: Clinic, receiver: Receiver
) -> None:
    clinic_a = pump_a.patient.clinic
    endpoint = endpoint_for(clinic_a, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(410)
    send(SENT_AT)
    [delivery] = deliveries()
    other = _api(staff((clinic_b, Role.CLINICIAN)))
    detail = f"{ENDPOINTS}{endpoint.pk}/"

    assert other.get(ENDPOINTS).json()["results"] == []
    assert other.get(DELIVERIES).json()["results"] == []
    assert other.get(detail).status_code == 404
    assert other.patch(detail, {"url": "https://evil.example.org/"}).status_code == 404
    assert other.delete(detail).status_code == 404
    assert other.post(f"{detail}rotate-secret/").status_code == 404
    assert other.get(f"{DELIVERIES}{delivery.pk}/").status_code == 404
    assert other.post(f"{DELIVERIES}{delivery.pk}/retry/").status_code == 404
    assert other.get(DELIVERIES, {"endpoint": endpoint.pk}).json().get("results", []) == []
    # Nor can they register an endpoint for clinic A.
    refused = other.post(ENDPOINTS, {"clinic": clinic_a.pk, "url": "https://evil.example.org/"})
    assert refused.status_code == 400 and "clinic" in refused.json()
    endpoint.refresh_from_db()
    assert (endpoint.url, WebhookEndpoint.objects.count()) == (receiver.url, 1)


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_the_delivery_log_nests_attempts_and_a_failed_delivery_can_be_retried(pump_a: Pump, receiver: Receiver) -> None:
    endpoint_for(pump_a.patient.clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(503)
    send(SENT_AT)
    [delivery] = deliveries()
    client = _api(staff((pump_a.patient.clinic, Role.COORDINATOR)))
    [row] = client.get(DELIVERIES).json()["results"]
    assert (row["event_id"], row["event_type"], row["status"]) == (delivery.event_id, "refill.recorded", "failed")
    assert row["payload"]["data"]["id"] == delivery.payload["data"]["id"]
    [attempt] = row["attempts"]
    assert (attempt["outcome"], attempt["status_code"], attempt["response_excerpt"]) == ("failed", 503, "answered 503")

    retried = client.post(f"{DELIVERIES}{delivery.pk}/retry/")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    assert client.post(f"{DELIVERIES}{delivery.pk}/retry/").status_code == 400  # pending: nothing to retry
    viewer = _api(staff((pump_a.patient.clinic, Role.VIEWER)))
    assert viewer.post(f"{DELIVERIES}{delivery.pk}/retry/").status_code == 403


@pytest.mark.django_db
@pytest.mark.urls(__name__)
@pytest.mark.parametrize("listing", [ENDPOINTS, DELIVERIES])
def test_the_webhook_lists_take_the_same_number_of_queries_for_one_row_or_many(
    listing: str, pump_a: Pump, receiver: Receiver
) -> None:
    clinic = pump_a.patient.clinic
    client = _api(staff((clinic, Role.COORDINATOR)))

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(listing).status_code == 200
        return len(captured)

    endpoint_for(clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(500)
    send(SENT_AT)
    queries()  # the first request of a token records when it was used
    one = queries()
    for i in range(3):
        endpoint_for(clinic, f"{receiver.url}/{i}")
    raise_dose(pump_a, "220", at=VISIT_AT + timedelta(minutes=5))
    send(SENT_AT + timedelta(minutes=10))
    assert WebhookDelivery.objects.count() == 5 and WebhookAttempt.objects.count() >= 6
    assert queries() == one


# --------------------------------------------------------------------------- admin


ADMIN_ENDPOINTS = "admin:webhooks_webhookendpoint"
ADMIN_DELIVERIES = "admin:webhooks_webhookdelivery"


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_registers_an_endpoint_and_shows_its_secret_to_the_clinics_managers(clinic_a: Clinic) -> None:
    coordinator = staff((clinic_a, Role.COORDINATOR))
    answer = client_for(coordinator).post(
        reverse(f"{ADMIN_ENDPOINTS}_add"),
        {"clinic": clinic_a.pk, "url": "https://ehr.example.org/in", "description": "EHR", "event_types": ["dose.changed"]},
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.event_types, endpoint.created_by) == (["dose.changed"], coordinator)
    page = reverse(f"{ADMIN_ENDPOINTS}_change", args=[endpoint.pk])
    assert endpoint.secret in client_for(coordinator).get(page).content.decode()
    seen_by_viewer = client_for(staff((clinic_a, Role.VIEWER))).get(page)
    assert seen_by_viewer.status_code == 200 and endpoint.secret not in seen_by_viewer.content.decode()


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_refuses_a_non_http_url_on_the_field(clinic_a: Clinic) -> None:
    answer = client_for(staff((clinic_a, Role.CLINICIAN))).post(
        reverse(f"{ADMIN_ENDPOINTS}_add"), {"clinic": clinic_a.pk, "url": "ftp://ehr.example.org/in", "description": ""}
    )
    assert answer.status_code == 200 and "url" in answer.context["adminform"].form.errors
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_does_not_open_another_clinics_endpoint(clinic_a: Clinic, clinic_b: Clinic) -> None:
    endpoint = endpoint_for(clinic_a, "https://ehr.example.org/in")
    client = client_for(staff((clinic_b, Role.CLINICIAN)))
    page = client.get(reverse(f"{ADMIN_ENDPOINTS}_change", args=[endpoint.pk]))
    assert page.status_code == 302 and endpoint.secret not in page.content.decode()
    listed = client.get(reverse(f"{ADMIN_ENDPOINTS}_changelist"))
    assert list(listed.context["cl"].result_list) == []


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_reenables_rotates_and_retries_for_the_clinics_managers_only(pump_a: Pump, receiver: Receiver) -> None:
    clinic = pump_a.patient.clinic
    endpoint = endpoint_for(clinic, receiver.url)
    refill_at_visit(pump_a)
    receiver.answer(410)
    send(NOW)
    [delivery] = deliveries()
    endpoints, deliveries_page = reverse(f"{ADMIN_ENDPOINTS}_changelist"), reverse(f"{ADMIN_DELIVERIES}_changelist")

    viewer = client_for(staff((clinic, Role.VIEWER)))
    viewer.post(endpoints, {"action": "reenable", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert not endpoint.is_active

    manager = client_for(staff((clinic, Role.CLINICIAN)))
    old_secret = endpoint.secret
    manager.post(endpoints, {"action": "reenable", "_selected_action": [endpoint.pk]})
    manager.post(endpoints, {"action": "rotate", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.secret != old_secret and endpoint.previous_secret == old_secret

    manager.post(deliveries_page, {"action": "retry", "_selected_action": [delivery.pk]})
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    page = manager.get(reverse(f"{ADMIN_DELIVERIES}_change", args=[delivery.pk])).content.decode()
    assert "410" in page and delivery.event_id in page  # the attempt inline and the payload
