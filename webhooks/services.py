"""Workflows for outbound webhooks: endpoints, recording events, dispatch and delivery.

The webhook outbox follows the message outbox (notifications/services.py, STYLE.md §7-§8):

- an event becomes one `WebhookDelivery` row per subscribed endpoint, inserted inside the
  transaction that records the refill, dose change or escalation, so both commit or neither;
- a delivery task is queued once that commits; a beat sweep re-queues what a lost task,
  a failed attempt whose backoff ran out, or a dead worker's expired claim left behind;
- a worker claims the row with one `UPDATE ... WHERE status`, commits an in-flight attempt,
  and only then makes the HTTP request; the outcome closes the attempt.

Delivery is at least once: a worker killed after the receiver answered but before our
commit sends again, with the same `webhook-id`, so the receiver can drop the duplicate.
Time comes in as `now`.
"""

from __future__ import annotations

import http.client
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import F, Q

from notifications.models import Escalation, EscalationReason, Severity
from patients.history import record_update
from patients.models import Clinic
from pumps.models import Program, Pump, Refill
from webhooks import sending, signing
from webhooks.models import (
    OPEN_STATES,
    RETRYABLE_STATES,
    AttemptOutcome,
    DeliveryStatus,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

logger = logging.getLogger(__name__)

USER_AGENT = "pumptrack-webhooks/1.0"
# How much of a receiver's answer the delivery log keeps.


# --------------------------------------------------------------------------- payloads


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as the REST API writes datetimes."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_value(field: models.Field[Any, Any], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(field, models.DecimalField):
        # A string with the column's places, as the API shows it ("40.00"): never a float.
        return f"{Decimal(str(value)).quantize(Decimal(1).scaleb(-field.decimal_places)):f}"
    if isinstance(field, models.DateTimeField):
        return iso(value)
    if isinstance(field, models.DateField):
        return value.isoformat()
    return value


def _fields(obj: models.Model, names: Sequence[str]) -> dict[str, Any]:
    """The named fields as JSON values, related objects by id (no names: ids only)."""
    data = {}
    for name in names:
        field = obj._meta.get_field(name)
        if field.is_relation:
            data[name] = getattr(obj, field.attname)  # type: ignore[union-attr]
        else:
            data[name] = _json_value(field, getattr(obj, name))  # type: ignore[arg-type]
    return data


REFILL_FIELDS = (
    "id", "pump", "performed_at", "withdrawn_ml", "volume_added_ml", "concentration_mcg_per_ml",
    "expected_residual_ml", "discrepancy_ml", "discrepancy_flagged", "volume_after_fill_ml", "alarm_on", "refill_by",
)  # fmt: skip
PROGRAM_FIELDS = (
    "id", "pump", "effective_at", "dose_mcg_per_day", "concentration_mcg_per_ml", "mode",
    "previous_dose_mcg_per_day", "acknowledged_warnings",
)  # fmt: skip
ESCALATION_FIELDS = ("id", "pump", "patient", "clinic", "reason", "severity", "raised_at")


def overdue_data(escalation: Escalation, refill_by: Any) -> dict[str, Any]:
    return {
        "pump": escalation.pump_id,
        "patient": escalation.patient_id,
        "refill_by": refill_by.isoformat() if refill_by else None,
    }


def new_event_id() -> str:
    """A `webhook-id`: unique per event, the same for every endpoint and every retry."""
    return "msg_" + secrets.token_hex(16)


@dataclass(frozen=True)
class Event:
    type: EventType
    clinic_id: int
    occurred_at: datetime
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        # The Standard Webhooks payload structure: type, timestamp (of the event) and data.
        return {"type": self.type.value, "timestamp": iso(self.occurred_at), "data": self.data}


# --------------------------------------------------------------------------- recording events


def _active_endpoints(clinic_ids: Iterable[int]) -> dict[int, list[WebhookEndpoint]]:
    found: dict[int, list[WebhookEndpoint]] = defaultdict(list)
    for endpoint in WebhookEndpoint.objects.filter(clinic_id__in=set(clinic_ids), is_active=True).order_by("pk"):
        found[endpoint.clinic_id].append(endpoint)
    return found


def record_events(events: Sequence[Event], now: datetime, endpoints: dict[int, list[WebhookEndpoint]] | None = None) -> list[int]:
    """Insert one delivery per (event, endpoint of the event's clinic that wants it); return their ids.

    Per clinic: an endpoint never receives another clinic's events.
    """
    if endpoints is None:
        endpoints = _active_endpoints(e.clinic_id for e in events)
    rows = []
    for event in events:
        event_id, payload = new_event_id(), event.payload()
        for endpoint in endpoints.get(event.clinic_id, []):
            if endpoint.wants(event.type):
                rows.append(
                    WebhookDelivery(
                        endpoint=endpoint,
                        event_id=event_id,
                        event_type=event.type,
                        payload=payload,
                        # Its task is queued when this transaction commits; the sweep
                        # queues it again only if that task is lost (queued_at goes stale).
                        queued_at=now,
                    )
                )
    return [row.pk for row in WebhookDelivery.objects.bulk_create(rows)]


def refill_events(refill: Refill) -> list[Event]:
    clinic_id = refill.pump.patient.clinic_id
    return [Event(EventType.REFILL_RECORDED, clinic_id, refill.created_at, _fields(refill, REFILL_FIELDS))]


def program_events(program: Program) -> list[Event]:
    clinic_id = program.pump.patient.clinic_id
    return [Event(EventType.DOSE_CHANGED, clinic_id, program.created_at, _fields(program, PROGRAM_FIELDS))]


def escalation_events(escalations: Sequence[Escalation], endpoints: dict[int, list[WebhookEndpoint]]) -> list[Event]:
    """`escalation.raised` for each; `refill.overdue` too for an overdue refill."""
    overdue = [e for e in escalations if e.reason == EscalationReason.OVERDUE and e.clinic_id in endpoints]
    refill_by = dict(Pump.objects.filter(pk__in={e.pump_id for e in overdue}).values_list("pk", "refill_by")) if overdue else {}
    events = []
    for esc in escalations:
        if esc.clinic_id not in endpoints:
            continue  # no query and no payload for a clinic without endpoints (a sweep raises many)
        events.append(Event(EventType.ESCALATION_RAISED, esc.clinic_id, esc.raised_at, _fields(esc, ESCALATION_FIELDS)))
        if esc.reason == EscalationReason.OVERDUE:
            events.append(
                Event(
                    EventType.REFILL_OVERDUE,
                    esc.clinic_id,
                    esc.raised_at,
                    overdue_data(esc, refill_by.get(esc.pump_id) if esc.pump_id else None),
                )
            )
    return events


def on_refill_recorded(refill: Refill, now: datetime) -> None:
    _record_in_transaction(lambda: record_events(refill_events(refill), now))


def on_dose_changed(program: Program, now: datetime) -> None:
    _record_in_transaction(lambda: record_events(program_events(program), now))


def on_escalations_raised(escalations: Sequence[Escalation], now: datetime) -> None:
    def build() -> list[int]:
        endpoints = _active_endpoints(e.clinic_id for e in escalations)
        return record_events(escalation_events(escalations, endpoints), now, endpoints) if endpoints else []

    _record_in_transaction(build)


def _record_in_transaction(build: Callable[[], list[int]]) -> None:
    """Run a signal receiver's inserts in a savepoint of the recording transaction.

    A failure here (a bug in a payload) is logged and rolls back only the webhook rows:
    the refill or dose change a nurse is saving matters more than an integrator's copy of
    it, and integrators can still read it through the API.
    """
    immediate = connection.vendor == "postgresql"
    try:
        with transaction.atomic():
            if immediate:
                # Foreign keys are checked at COMMIT by default: an endpoint deleted meanwhile
                # would then fail the nurse's whole transaction. Checked now, inside this
                # savepoint, the insert fails alone (or locks the endpoint until commit).
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            ids = build()
    except Exception:
        logger.exception("webhooks: events could not be recorded; the record itself was kept")
        ids = []
    finally:
        if immediate:
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    queue_on_commit(ids)


def queue_on_commit(delivery_ids: Iterable[int]) -> None:
    """Queue one delivery task per row once the surrounding transaction commits.

    `robust`: a broker that is down is logged, never turned into a failed request after the
    record was saved; the sweep queues the row again once its `queued_at` is stale.
    """
    from webhooks.tasks import deliver_webhook  # the tasks module imports this one

    for pk in delivery_ids:
        transaction.on_commit(partial(deliver_webhook.delay, pk), robust=True)


# --------------------------------------------------------------------------- endpoints


def _clean(endpoint: WebhookEndpoint) -> None:
    # Field errors name the field (url, event_types, description), for the admin and the API.
    endpoint.full_clean(exclude=["clinic", "created_by"], validate_unique=False, validate_constraints=False)


def create_endpoint(
    *, clinic: Clinic, url: str, by: Any, description: str = "", event_types: Sequence[str] = ()
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        clinic=clinic,
        url=url,
        description=description,
        event_types=sorted(set(event_types)),
        secret=signing.new_secret(),
        created_by=by if getattr(by, "pk", None) else None,
    )
    _clean(endpoint)
    endpoint.save()
    logger.info("webhook endpoint %s registered for clinic %s", endpoint.pk, clinic.pk)
    return endpoint


def update_endpoint(endpoint: WebhookEndpoint, changes: dict[str, Any], *, now: datetime) -> WebhookEndpoint:
    """Change url, description or event types; `is_active` enables or disables.

    The clinic is fixed: moving an endpoint would hand one clinic's queued events to another.
    """
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        active = changes.pop("is_active", None)
        for name, value in changes.items():
            if name not in ("url", "description", "event_types"):
                raise ValueError(f"not a changeable field: {name}")
            setattr(endpoint, name, sorted(set(value)) if name == "event_types" else value)
        _clean(endpoint)
        endpoint.save()
        if active is True and not endpoint.is_active:
            enable_endpoint(endpoint)
        elif active is False and endpoint.is_active:
            disable_endpoint(endpoint, "Disabled by staff.", now=now)
        endpoint.refresh_from_db()
    return endpoint


def delete_endpoint(endpoint: WebhookEndpoint) -> None:
    """Unregister an endpoint, with its delivery log (ids only: the integrator's record).

    The row is locked first: a refill being recorded holds a key-share lock on it (its new
    delivery row), so the delete waits for that commit and then removes that row too,
    instead of failing on a delivery it did not see.
    """
    with transaction.atomic():
        if WebhookEndpoint.objects.select_for_update().filter(pk=endpoint.pk).exists():
            WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()
    logger.info("webhook endpoint %s deleted", endpoint.pk)


def rotate_secret(endpoint: WebhookEndpoint, *, now: datetime) -> WebhookEndpoint:
    """A new secret at once; the old one still signs alongside it for the grace period."""
    grace = timedelta(seconds=settings.PUMPTRACK_WEBHOOK_SECRET_ROTATION_GRACE_SECONDS)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, now + grace
        endpoint.secret = signing.new_secret()
        endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    logger.info("webhook endpoint %s: secret rotated", endpoint.pk)
    return endpoint


def secrets_in_force(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    found = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and now < endpoint.previous_secret_expires_at:
        found.append(endpoint.previous_secret)
    return found


def enable_endpoint(endpoint: WebhookEndpoint) -> bool:
    """Re-enable with a clean failure count. Deliveries cancelled meanwhile stay cancelled
    (staff may send them again with "retry now")."""
    enabled = (
        WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=False).update(
            is_active=True, disabled_at=None, disabled_reason="", consecutive_failures=0
        )
        == 1
    )
    if enabled:
        record_update(WebhookEndpoint, [endpoint.pk])
    return enabled


def disable_endpoint(endpoint: WebhookEndpoint, reason: str, *, now: datetime, escalate: bool = False) -> bool:
    """Stop sending to an endpoint and cancel what it still had to receive.

    `escalate`: the endpoint was disabled by failures, not by a person, so the clinic is
    told (a staff escalation, emailed like the others): an EHR or scheduling system has
    stopped hearing about refills.
    """
    with transaction.atomic():
        if not WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=True).update(
            is_active=False, disabled_at=now, disabled_reason=reason[:300]
        ):
            return False
        record_update(WebhookEndpoint, [endpoint.pk], reason=reason)
        cancelled = WebhookDelivery.objects.filter(endpoint_id=endpoint.pk, status__in=OPEN_STATES).update(
            status=DeliveryStatus.CANCELLED, status_reason=f"Endpoint disabled: {reason}"[:300], updated_at=now
        )
        logger.error("webhook endpoint %s disabled (%s); %s deliveries cancelled", endpoint.pk, reason, cancelled)
        if escalate:
            _escalate_disabled(endpoint, reason, now)
    return True


def _escalate_disabled(endpoint: WebhookEndpoint, reason: str, now: datetime) -> None:
    from notifications.services import raise_escalation

    clinic = Clinic.objects.get(pk=endpoint.clinic_id)
    host = urlsplit(endpoint.url).hostname or ""  # not the full URL: its query may hold a token
    raise_escalation(
        clinic=clinic,
        reason=EscalationReason.DELIVERY_FAILED,
        severity=Severity.WARNING,
        cycle=f"webhook-endpoint:{endpoint.pk}:{int(now.timestamp())}",
        detail=f"Webhook endpoint {endpoint.pk} ({endpoint.description or host}) was disabled: {reason} "
        "The system it feeds no longer hears about refills, dose changes or escalations. "
        "Fix the receiver, then re-enable the endpoint and retry its failed deliveries in the admin.",
        now=now,
    )


def retry_now(delivery_ids: Iterable[int], *, now: datetime) -> list[int]:
    """Send failed or cancelled deliveries again, with a fresh retry schedule (the attempts
    stay in the log). Only deliveries of active endpoints; returns those reset, and queues them."""
    with transaction.atomic():
        ids = list(
            WebhookDelivery.objects.select_for_update(of=("self",))
            .filter(pk__in=list(delivery_ids), status__in=RETRYABLE_STATES, endpoint__is_active=True)
            .values_list("pk", flat=True)
        )
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status=DeliveryStatus.PENDING,
            status_reason="Retry requested by staff.",
            attempt_count=0,
            next_attempt_at=None,
            claimed_at=None,
            claim_expires_at=None,
            queued_at=now,
            updated_at=now,
        )
        queue_on_commit(ids)
    return ids


# --------------------------------------------------------------------------- dispatch


def _claim_period() -> timedelta:
    return timedelta(seconds=settings.PUMPTRACK_WEBHOOK_CLAIM_SECONDS)


def dispatch_due(now: datetime, *, limit: int | None = None) -> list[int]:
    """Pick the deliveries to (re)queue now; the caller queues one task each after commit.

    A pending row whose task was lost is queued again once its `queued_at` is older than
    the claim period; a failed row once its backoff has run out; a sending row once its
    claim expired (a killed worker). Locked rows are skipped, so two sweeps split the work.
    """
    limit = limit or settings.PUMPTRACK_WEBHOOK_DISPATCH_BATCH
    stale = now - _claim_period()

    def not_queued_since(moment: F) -> Q:
        return Q(queued_at=None) | Q(queued_at__lt=moment) | Q(queued_at__lt=stale)

    sendable = (
        Q(status=DeliveryStatus.PENDING) & (Q(queued_at=None) | Q(queued_at__lt=stale))
        | Q(status=DeliveryStatus.FAILED, next_attempt_at__lte=now) & not_queued_since(F("next_attempt_at"))
        | Q(status=DeliveryStatus.SENDING, claim_expires_at__lte=now) & not_queued_since(F("claim_expires_at"))
    )
    with transaction.atomic():
        ids = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(sendable)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=ids).update(queued_at=now)
    return ids


def _claimable(now: datetime) -> Q:
    return (
        Q(status=DeliveryStatus.PENDING)
        | Q(status=DeliveryStatus.FAILED, next_attempt_at__lte=now)
        | Q(status=DeliveryStatus.SENDING, claim_expires_at__lte=now)
    )


def _claim(pk: int, now: datetime) -> bool:
    """Take the delivery for one attempt: one UPDATE, so only one worker wins (STYLE.md §7)."""
    return (
        WebhookDelivery.objects.filter(_claimable(now), pk=pk).update(
            status=DeliveryStatus.SENDING,
            claimed_at=now,
            claim_expires_at=now + _claim_period(),
            attempt_count=F("attempt_count") + 1,
            updated_at=now,
        )
        == 1
    )


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class _Request:
    delivery: WebhookDelivery
    attempt: WebhookAttempt
    url: str
    body: bytes
    headers: dict[str, str]


def body_of(payload: dict[str, Any]) -> bytes:
    # The spec's order (type, timestamp, data) whatever order the database kept the keys in.
    ordered = {"type": payload["type"], "timestamp": payload["timestamp"], "data": payload["data"], **payload}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


def _claim_and_prepare(pk: int, now: datetime, worker: str) -> DeliveryResult | _Request:
    with transaction.atomic():
        if not _claim(pk, now):
            return DeliveryResult("not_claimed")
        # An attempt still in flight belonged to a worker that died (its claim expired): say
        # so, so the log explains why the receiver may have seen this webhook-id twice.
        WebhookAttempt.objects.filter(delivery_id=pk, outcome=AttemptOutcome.IN_FLIGHT).update(
            outcome=AttemptOutcome.WORKER_LOST, finished_at=now, error="Claim expired before an outcome was recorded."
        )
        delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=pk)
        endpoint = delivery.endpoint
        if not endpoint.is_active:
            WebhookDelivery.objects.filter(pk=pk).update(
                status=DeliveryStatus.CANCELLED, status_reason="Endpoint disabled.", updated_at=now
            )
            return DeliveryResult("cancelled", "endpoint disabled")
        body = body_of(delivery.payload)
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature_header(secrets_in_force(endpoint, now), delivery.event_id, timestamp, body),
        }
        attempt = WebhookAttempt.objects.create(
            delivery=delivery, started_at=now, url=endpoint.url, request_headers=headers, worker=worker
        )
    return _Request(delivery, attempt, endpoint.url, body, headers)


def deliver(pk: int, now: datetime, *, worker: str = "") -> DeliveryResult:
    """Claim one delivery, POST it once, record the attempt and its outcome."""
    try:
        prepared = _claim_and_prepare(pk, now, worker)
    except Exception as exc:
        # A bug before the network call (a damaged payload) rolled the claim back: record it
        # as a failed attempt so the row follows the retry schedule and, in the end, staff are
        # told, instead of being queued again unseen at every sweep.
        _failed_before_send(pk, now, worker, exc)
        raise
    if isinstance(prepared, DeliveryResult):
        return prepared
    if prepared.delivery.attempt_count > len(settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS) + 1:
        # Every try so far ended without a recorded outcome (killed workers): the retry
        # budget is spent all the same, so give up and tell staff rather than POST for ever.
        return _failed(prepared, now, 0, status=None, excerpt="", error="No outcome was recorded for any attempt: given up.")
    # The claim and the in-flight attempt are committed before the network call.
    started = time.monotonic()
    timeout = settings.PUMPTRACK_WEBHOOK_TIMEOUT_SECONDS
    try:
        # The whole exchange ends well inside the claim (webhooks.E001: claim >= 10 x timeout).
        answer = sending.post(prepared.url, prepared.body, prepared.headers, timeout=timeout, deadline=3 * timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Refused, reset, timed out, unresolvable, a malformed answer: all worth retrying.
        return _failed(prepared, now, _ms(started), status=None, excerpt="", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        # A bug: record it like a transient failure rather than leave the row SENDING to
        # be reclaimed forever; re-raised to be seen.
        _failed(prepared, now, _ms(started), status=None, excerpt="", error=f"unexpected error: {exc!r}")
        raise
    status, excerpt = answer.status, answer.excerpt + (f" [{answer.note}]" if answer.note else "")
    if 200 <= status < 300:
        return _succeeded(prepared, now, _ms(started), status, excerpt)
    return _failed(prepared, now, _ms(started), status=status, excerpt=excerpt, error=f"HTTP {status}")


def _failed_before_send(pk: int, now: datetime, worker: str, exc: Exception) -> None:
    with transaction.atomic():
        if not _claim(pk, now):
            return
        delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=pk)
        attempt = WebhookAttempt.objects.create(delivery=delivery, started_at=now, url=delivery.endpoint.url, worker=worker)
    prepared = _Request(delivery, attempt, delivery.endpoint.url, b"", {})
    _failed(prepared, now, 0, status=None, excerpt="", error=f"could not prepare the request: {exc!r}")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _finish(prepared: _Request, now: datetime, ms: int, outcome: str, status: int | None, excerpt: str, error: str) -> None:
    WebhookAttempt.objects.filter(pk=prepared.attempt.pk).update(
        finished_at=now + timedelta(milliseconds=ms),
        outcome=outcome,
        status_code=status,
        response_excerpt=sending.clean_text(excerpt),
        error=sending.clean_text(error)[:2000],
        duration_ms=ms,
    )


def _succeeded(prepared: _Request, now: datetime, ms: int, status: int, excerpt: str) -> DeliveryResult:
    with transaction.atomic():
        _finish(prepared, now, ms, AttemptOutcome.SUCCEEDED, status, excerpt, "")
        if WebhookDelivery.objects.filter(pk=prepared.delivery.pk, status=DeliveryStatus.SENDING, claimed_at=now).update(
            status=DeliveryStatus.SUCCEEDED,
            status_reason="",
            delivered_at=now,
            last_status_code=status,
            last_error="",
            updated_at=now,
        ):
            WebhookEndpoint.objects.filter(pk=prepared.delivery.endpoint_id).update(consecutive_failures=0)
    return DeliveryResult("succeeded", str(status))


def _failed(prepared: _Request, now: datetime, ms: int, *, status: int | None, excerpt: str, error: str) -> DeliveryResult:
    error = sending.clean_text(error)
    delivery = prepared.delivery
    delays = settings.PUMPTRACK_WEBHOOK_RETRY_DELAYS
    # 410 Gone: the receiver says it wants no more (Standard Webhooks): never retried.
    gone = status == 410
    permanent = gone or delivery.attempt_count > len(delays)
    mine = WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING, claimed_at=now)
    with transaction.atomic():
        _finish(prepared, now, ms, AttemptOutcome.FAILED, status, excerpt, error)
        if not permanent:
            mine.update(
                status=DeliveryStatus.FAILED,
                status_reason=error[:300],
                next_attempt_at=now + timedelta(seconds=delays[delivery.attempt_count - 1]),
                last_status_code=status,
                last_error=error[:500],
                updated_at=now,
            )
            return DeliveryResult("retry", error)
        if not mine.update(
            status=DeliveryStatus.FAILED_PERMANENTLY,
            status_reason=error[:300],
            last_status_code=status,
            last_error=error[:500],
            updated_at=now,
        ):
            return DeliveryResult("failed_permanently", error)
        endpoint = delivery.endpoint
        if gone:
            disable_endpoint(endpoint, "The receiver answered 410 Gone (it wants no more events).", now=now, escalate=True)
            return DeliveryResult("failed_permanently", error)
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=F("consecutive_failures") + 1)
        limit = settings.PUMPTRACK_WEBHOOK_DISABLE_AFTER_FAILURES
        if WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=True, consecutive_failures__gte=limit).exists():
            disable_endpoint(
                endpoint,
                f"{limit} deliveries in a row failed after every retry (last: {error}).",
                now=now,
                escalate=True,
            )
        logger.warning("webhook delivery %s failed permanently: %s", delivery.pk, error)
    return DeliveryResult("failed_permanently", error)
