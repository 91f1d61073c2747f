"""Workflows for messages: reconcile plans with the outbox, dispatch, send, opt-outs, escalations.

The only place that writes outbox rows. Every periodic job here is safe to run twice at
once: message identities are unique, claims are atomic `UPDATE ... WHERE status` statements,
and a claim expires so a worker killed mid-send strands nothing (STYLE.md §7-§8).
Time comes in as `now`.
"""

from __future__ import annotations

import logging
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from time import monotonic, sleep
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, Exists, ExpressionWrapper, F, OuterRef, Q, QuerySet, Subquery
from django.template.loader import render_to_string
from django.urls import reverse

from notifications import content, planning
from notifications.models import (
    OPEN_STATES,
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
from notifications.signals import escalations_raised
from notifications.transports import Outgoing, TransportError, transport_for
from patients.history import record_create, record_update
from patients.models import Caregiver, Clinic, Patient, parse_day_list
from pumps import appointments
from pumps.domain import EARLY_VISIT_WINDOW
from pumps.models import Appointment, AppointmentStatus, ClinicalEvent, EventKind, Pump, PumpStatus, Refill
from pumps.services import announce_change

logger = logging.getLogger(__name__)

UNSUBSCRIBE_SALT = "pumptrack.notifications.unsubscribe"
# Escalations a re-plan closes by itself once they no longer apply (a refill recorded,
# a post-MRI check recorded, the pump explanted). Battery and ERI tasks wait for a person,
# and so do the pre-MRI ones: only a person can confirm the reservoir was emptied (§7.4 #94).
SELF_RESOLVING = frozenset(
    {
        EscalationReason.OVERDUE,
        EscalationReason.ALARM_DATE_REACHED,
        EscalationReason.NO_USABLE_CONTACT,
        EscalationReason.POST_MRI_CHECK_MISSING,
        EscalationReason.APPOINTMENT_MISSED,
    }
)
# MRIs older than this are history, not pending work.
SCAN_LOOKBACK = timedelta(days=365)


# --------------------------------------------------------------------------- facts


def policy_for(clinic: Clinic) -> planning.Policy:
    return planning.Policy(
        time_zone=clinic.time_zone,
        reminder_days=tuple(parse_day_list(clinic.reminder_days)),
        high_risk_extra_reminder_days=clinic.high_risk_extra_reminder_days,
        reminder_time=clinic.reminder_time,
        quiet_hours_start=clinic.quiet_hours_start,
        quiet_hours_end=clinic.quiet_hours_end,
        escalation_time=clinic.escalation_time,
        heat_season_month=clinic.heat_season_month,
        heat_season_day=clinic.heat_season_day,
        alcohol_reminder_months=clinic.alcohol_reminder_months,
        battery_planning_months=clinic.battery_planning_months,
        post_mri_check_hours=clinic.post_mri_check_hours,
    )


def active_blocks(addresses: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(channel, address) -> why it must not be used, for the active blocks among them."""
    pairs = {pair for pair in addresses if pair[1]}
    if not pairs:
        return {}
    rows = ContactBlock.objects.filter(address__in={a for _, a in pairs}, lifted_at=None).values_list(
        "channel", "address", "reason"
    )
    return {(c, a): str(BlockReason(r).label) for c, a, r in rows if (c, a) in pairs}


def phone_text(value: Any) -> str:
    """A phone field as E.164 text, formatted once (formatting validates: it is not cheap)."""
    if value is None or isinstance(value, str):
        return value or ""
    return str(value)


def contacts_for(patient: Patient, caregivers: Sequence[Caregiver], blocks: dict[tuple[str, str], str]) -> list[planning.Contact]:
    tz = patient.effective_time_zone
    email, phone = patient.email, phone_text(patient.phone)
    found = [
        planning.Contact(
            key=f"patient:{patient.pk}",
            is_patient=True,
            email=email,
            phone=phone,
            language=patient.language,
            time_zone=tz,
            email_blocked="" if patient.contact_by_email else "Patient prefers no email",
            sms_blocked="" if patient.contact_by_sms else "Patient prefers no SMS",
        )
    ]
    for cg in caregivers:
        found.append(
            planning.Contact(
                key=f"caregiver:{cg.pk}",
                is_patient=False,
                email=cg.email,
                phone=phone_text(cg.phone),
                language=cg.language,
                time_zone=tz,
                receives_safety=cg.receives_safety_messages,
                caregiver_id=cg.pk,
            )
        )
    # An opt-out or a dead contact wins over the preference text.
    return [
        planning.Contact(
            **{
                **c.__dict__,
                "email_blocked": blocks.get(("email", c.email), c.email_blocked),
                "sms_blocked": blocks.get(("sms", c.phone), c.sms_blocked),
            }
        )
        for c in found
    ]


@dataclass
class _Loaded:
    pump: Pump
    facts: planning.PumpFacts
    policy: planning.Policy
    contacts: list[planning.Contact]


def load_facts(pump_ids: Sequence[int], now: datetime) -> list[_Loaded]:
    """Facts for a batch of pumps in a constant number of queries."""
    latest = Refill.objects.filter(pump=OuterRef("pk")).order_by("-performed_at", "-pk")
    pumps = list(
        Pump.objects.filter(pk__in=pump_ids)
        .select_related("patient__clinic", "model")
        .prefetch_related("patient__caregivers")
        # The last fill by the (pump, -performed_at) index, not the whole history.
        .annotate(
            last_fill_id=Subquery(latest.values("pk")[:1]),
            last_fill_at=Subquery(latest.values("performed_at")[:1]),
            last_fill_initial=Subquery(latest.values("is_initial_fill")[:1]),
        )
        .order_by("pk")
    )
    events: dict[int, list[ClinicalEvent]] = defaultdict(list)
    for event in ClinicalEvent.objects.filter(
        pump_id__in=pump_ids,
        kind__in=[EventKind.MRI_PLANNED, EventKind.MRI_DONE, EventKind.POST_MRI_CHECK, EventKind.REPLACEMENT_INDICATOR],
        occurred_at__gte=now - SCAN_LOOKBACK,
    ).order_by("occurred_at", "pk"):
        events[event.pump_id].append(event)
    pairs: list[tuple[str, str]] = []
    for pump in pumps:
        people: list[Any] = [pump.patient, *pump.patient.caregivers.all()]
        for person in people:
            pairs += [("email", person.email), ("sms", phone_text(person.phone))]
    blocks = active_blocks(pairs)
    visits: dict[int, list[planning.Visit]] = defaultdict(list)
    # The booked visit, and missed ones still waiting for a refill (their escalation stays open).
    # The refill that keeps a visit (pumps.domain.refill_keeps_visit), as SQL.
    refilled = Refill.objects.filter(
        Q(performed_at__gte=OuterRef("created_at")),
        Q(performed_at__gte=ExpressionWrapper(OuterRef("starts_at") - EARLY_VISIT_WINDOW, output_field=DateTimeField())),
        pump_id=OuterRef("pump_id"),
    )
    for a in (
        Appointment.objects.filter(pump_id__in=pump_ids)
        .filter(Q(status=AppointmentStatus.BOOKED) | Q(status=AppointmentStatus.MISSED) & ~Exists(refilled))
        .order_by("starts_at", "pk")
    ):
        visits[a.pump_id].append(
            planning.Visit(
                appointment_id=a.pk,
                starts_at=a.starts_at,
                booked_at=a.created_at,
                location=a.location,
                missed=a.status == AppointmentStatus.MISSED,
            )
        )
    loaded = []
    for pump in pumps:
        patient, clinic = pump.patient, pump.patient.clinic
        pump_events = events[pump.pk]
        checks = [e.occurred_at for e in pump_events if e.kind == EventKind.POST_MRI_CHECK]
        done = [e for e in pump_events if e.kind == EventKind.MRI_DONE]
        scans = []
        for e in pump_events:
            if e.kind not in (EventKind.MRI_PLANNED, EventKind.MRI_DONE):
                continue
            planned = e.kind == EventKind.MRI_PLANNED
            # A planned scan later recorded as done is the same scan: the "done" record counts.
            if planned and any(abs(d.occurred_at - e.occurred_at) <= timedelta(days=2) for d in done):
                continue
            scans.append(
                planning.Scan(
                    event_id=e.pk,
                    at=e.occurred_at,
                    recorded_at=e.created_at,
                    planned=planned,
                    checked=any(c >= e.occurred_at for c in checks),
                )
            )
        facts = planning.PumpFacts(
            pump_id=pump.pk,
            active=pump.status == PumpStatus.ACTIVE,
            implanted_at=pump.implanted_at,
            refill_by=pump.refill_by,
            alarm_on=pump.alarm_on,
            last_fill_id=pump.last_fill_id,
            last_fill_at=pump.last_fill_at,
            last_fill_initial=bool(pump.last_fill_initial),
            high_risk=patient.high_risk,
            mri_rule=pump.model.mri_rule,
            end_of_service_on=pump.estimated_end_of_service_on,
            replacement_indicators=tuple((e.pk, e.occurred_at) for e in pump_events if e.kind == EventKind.REPLACEMENT_INDICATOR),
            scans=tuple(scans),
            visits=tuple(visits[pump.pk]),
            context={
                "first_name": patient.given_name,
                "clinic_name": clinic.name,
                "clinic_phone": phone_text(clinic.phone),
                "model_name": f"{pump.model.manufacturer} {pump.model.name}",
                "mri_rule": pump.model.mri_rule,
            },
        )
        loaded.append(_Loaded(pump, facts, policy_for(clinic), contacts_for(patient, list(patient.caregivers.all()), blocks)))
    return loaded


# --------------------------------------------------------------------------- reconcile


@dataclass
class ReconcileResult:
    created: int = 0
    updated: int = 0
    cancelled: int = 0
    escalations: int = 0

    def __iadd__(self, other: ReconcileResult) -> ReconcileResult:
        self.created += other.created
        self.updated += other.updated
        self.cancelled += other.cancelled
        self.escalations += other.escalations
        return self


def _new_row(pump: Pump, p: planning.PlannedMessage) -> Message:
    return Message(
        clinic_id=pump.patient.clinic_id,
        patient_id=pump.patient_id,
        pump_id=pump.pk,
        caregiver_id=p.caregiver_id,
        recipient_key=p.recipient_key,
        channel=p.channel,
        kind=p.kind.value,
        subject=p.subject,
        cycle=p.cycle,
        stage=p.stage,
        recipient_kind=RecipientKind.PATIENT if p.is_patient else RecipientKind.CAREGIVER,
        address=p.address,
        language=p.language,
        time_zone=p.time_zone,
        critical=p.critical,
        context=p.context,
        status=Status.SUPPRESSED if p.suppressed else Status.PLANNED,
        status_reason=p.suppressed,
        due_at=p.due_at,
    )


def _identity(m: Message) -> tuple[str, str, str, str, str, str]:
    return (m.recipient_key, m.channel, m.kind, m.subject, m.cycle, m.stage)


def reconcile_pumps(pump_ids: Sequence[int], now: datetime) -> ReconcileResult:
    """Make the outbox match each pump's plan: insert what is missing, update what is still
    open, cancel what became obsolete, raise escalations that are due. Never touches a
    message that is being sent or was sent."""
    result = ReconcileResult()
    with transaction.atomic():
        # Serialises re-plans of the same pump (a refill and a sweep at once); in pk order,
        # so two sweeps over overlapping batches cannot deadlock. NO KEY UPDATE: a send
        # updating a message row still takes its foreign-key share lock on the pump.
        ids = list(
            Pump.objects.select_for_update(no_key=True).filter(pk__in=pump_ids).order_by("pk").values_list("pk", flat=True)
        )
        loaded = load_facts(ids, now)
        subjects = [f"pump:{pk}" for pk in ids]
        open_rows: dict[tuple[str, ...], Message] = {
            _identity(m): m
            # Locked: a worker cannot claim one of these until this commits, and one claimed
            # meanwhile (now sending or sent) no longer matches and is left alone.
            for m in Message.objects.select_for_update()
            .filter(subject__in=subjects, status__in=OPEN_STATES)
            .exclude(kind=Kind.ESCALATION)
        }
        existing = {
            (e.subject, e.reason, e.cycle): e for e in Escalation.objects.filter(subject__in=subjects).select_related("clinic")
        }
        to_create: list[Message] = []
        to_update: list[Message] = []
        new_escalations: list[tuple[_Loaded, planning.PlannedEscalation]] = []
        wanted: set[tuple[str, ...]] = set()
        for item in loaded:
            the_plan = planning.plan(item.facts, item.policy, item.contacts, now)
            for p in the_plan.messages:
                wanted.add(p.identity)
                row = open_rows.get(p.identity)
                if row is None:
                    to_create.append(_new_row(item.pump, p))
                elif _refresh(row, p, item.pump.patient.clinic_id):
                    to_update.append(row)
            _sync_escalations(item, the_plan, existing, now, new_escalations)
            _close_past_visits(item, now)
        result.escalations = _raise_planned(new_escalations, now)
        if to_create:
            to_create, reopened = _reopen_cancelled(to_create, now)
            result.updated += reopened
        if to_create:
            # A concurrent planner may have inserted the same identities: the unique
            # constraint keeps one, and this insert skips it.
            result.created = len(Message.objects.bulk_create(to_create, ignore_conflicts=True, batch_size=1000))
        if to_update:
            fields = [name.removesuffix("_id") for name in REFRESHED] + ["updated_at"]
            for row in to_update:
                row.updated_at = now
            Message.objects.bulk_update(to_update, fields, batch_size=1000)
            result.updated += len(to_update)
        obsolete = [m.pk for key, m in open_rows.items() if key not in wanted]
        if obsolete:
            result.cancelled = Message.objects.filter(pk__in=obsolete, status__in=OPEN_STATES).update(
                status=Status.CANCELLED, status_reason="No longer planned (refill, dose change, or pump ended)", updated_at=now
            )
    return result


def _close_past_visits(item: _Loaded, now: datetime) -> None:
    """Booked visits whose clinic-local day is over stop being booked: missed (the plan
    escalates them), or done if a refill came after the booking without closing them."""
    tz = item.policy.time_zone
    if not item.facts.active:
        # Explanted or replaced: no refill visit is coming for this pump.
        appointments.cancel_for_ended_pump(item.pump.pk, now)
        return
    ended = [v for v in item.facts.visits if not v.missed and now >= planning.visit_day_end(v, tz)]
    if ended:
        appointments.close_past_visits(
            [(v.appointment_id, planning.refilled_since(v, item.facts), item.facts.last_fill_id) for v in ended], now
        )


# What a re-plan may change on an open row (and bulk-updates).
REFRESHED = ("clinic_id", "address", "language", "time_zone", "critical", "context", "status", "status_reason", "due_at")


def _reopen_cancelled(rows: list[Message], now: datetime) -> tuple[list[Message], int]:
    """Of the planned rows missing from the open outbox, return those still to insert.

    An identity already sent (or sending, or failed for good) is left alone. One that was
    cancelled and is planned again (a dose change undone, an address restored) is reopened:
    its unique identity would make the insert skip it, and the message would never go.
    """
    closed = {
        _identity(m): m
        for m in Message.objects.filter(subject__in={r.subject for r in rows}, cycle__in={r.cycle for r in rows}).exclude(
            kind=Kind.ESCALATION
        )
    }
    fresh, reopened = [], []
    for row in rows:
        old = closed.get(_identity(row))
        if old is None:
            fresh.append(row)
            continue
        if old.status != Status.CANCELLED:
            continue
        for name in REFRESHED:
            setattr(old, name, getattr(row, name))
        old.queued_at = old.claimed_at = old.claim_expires_at = old.next_attempt_at = None
        old.attempt_count, old.updated_at = 0, now
        reopened.append(old)
    if reopened:
        fields = [name.removesuffix("_id") for name in REFRESHED]
        fields += ["queued_at", "claimed_at", "claim_expires_at", "next_attempt_at", "attempt_count", "updated_at"]
        Message.objects.bulk_update(reopened, fields, batch_size=1000)
    return fresh, len(reopened)


def _refresh(row: Message, p: planning.PlannedMessage, clinic_id: int) -> bool:
    """Bring an open row in line with its plan (and its patient's clinic); True if anything changed."""
    before = [getattr(row, name) for name in REFRESHED]
    row.clinic_id = clinic_id  # a patient moved to another clinic: its staff see the message
    row.address, row.language, row.time_zone, row.critical, row.context = (
        p.address,
        p.language,
        p.time_zone,
        p.critical,
        p.context,
    )
    if p.suppressed:
        row.status, row.status_reason = Status.SUPPRESSED, p.suppressed
    elif row.status == Status.SUPPRESSED:
        row.status, row.status_reason = Status.PLANNED, ""  # re-subscribed or contact fixed
    if row.status in (Status.PLANNED, Status.SUPPRESSED):
        # A message the SMS cap deferred keeps its later moment.
        row.due_at = max(p.due_at, row.due_at) if row.status_reason.startswith("Deferred") else p.due_at
    return before != [getattr(row, name) for name in REFRESHED]


def _sync_escalations(
    item: _Loaded,
    the_plan: planning.Plan,
    existing: dict[tuple[str, str, str], Escalation],
    now: datetime,
    new: list[tuple[_Loaded, planning.PlannedEscalation]],
) -> None:
    """Collect the plan's due escalations that do not exist yet, reopen those that closed by
    themselves and apply again, and close open ones that no longer apply."""
    subject = item.facts.subject
    planned_keys = {(e.reason.value, e.cycle) for e in the_plan.escalations}
    for e in the_plan.escalations:
        if e.due_at > now:
            continue
        esc = existing.get((subject, e.reason.value, e.cycle))
        if esc is None:
            new.append((item, e))
        elif esc.status == EscalationStatus.RESOLVED and esc.reason in SELF_RESOLVING and esc.resolved_by_id is None:
            # E.g. SMS switched off, on, then off again within one refill cycle: the
            # patient is unreachable again, and staff must hear it again.
            _reopen_escalation(esc, item.pump, now)
    # A scan older than the lookback is not loaded: its missing check is not thereby done.
    loaded_scans = {f"mri:{scan.event_id}" for scan in item.facts.scans}
    stale = [
        esc.pk
        for (subj, reason, cycle), esc in existing.items()
        if subj == subject
        and esc.status == EscalationStatus.OPEN
        and reason in SELF_RESOLVING
        and (reason, cycle) not in planned_keys
        and (reason != EscalationReason.POST_MRI_CHECK_MISSING or cycle in loaded_scans or not item.facts.active)
    ]
    if stale:
        Escalation.objects.filter(pk__in=stale, status=EscalationStatus.OPEN).update(
            status=EscalationStatus.RESOLVED, resolved_at=now, resolution="No longer applies (recorded in pumptrack)."
        )
        record_update(Escalation, stale, reason="No longer applies (recorded in pumptrack).")
        _cancel_escalation_emails(stale, now)


def _reopen_escalation(esc: Escalation, pump: Pump, now: datetime) -> None:
    if Escalation.objects.filter(pk=esc.pk, status=EscalationStatus.RESOLVED, resolved_by=None).update(
        status=EscalationStatus.OPEN, raised_at=now, resolved_at=None, resolution=""
    ):
        record_update(Escalation, [esc.pk], reason="Applies again.")
        esc.status, esc.raised_at = EscalationStatus.OPEN, now
        if esc.clinic.escalation_address:
            _escalation_email(esc, esc.clinic, pump, pump.patient, stage=f"reopened:{int(now.timestamp())}").save()
        escalations_raised.send(sender=Escalation, escalations=[esc])
        logger.warning("escalation reopened: %s %s %s", esc.severity, esc.reason, esc.subject)


def _cancel_escalation_emails(escalation_ids: Iterable[int], now: datetime) -> None:
    """An escalation closed before its email went needs no email (it would send staff chasing)."""
    Message.objects.filter(
        kind=Kind.ESCALATION, subject__in=[f"escalation:{pk}" for pk in escalation_ids], status__in=OPEN_STATES
    ).update(status=Status.CANCELLED, status_reason="Escalation closed before the email went", updated_at=now)


def replan_pumps(pump_ids: Iterable[int], now: datetime) -> ReconcileResult:
    return reconcile_pumps(sorted(set(pump_ids)), now)


def plan_all(now: datetime, *, batch_size: int = 500, progress: Any = None) -> ReconcileResult:
    """The safety-net sweep: re-plan every pump that is active or still has open messages.

    One failing batch is logged and retried pump by pump, so one bad row cannot stop the
    sweep (STYLE.md anti-patterns); the sweep raises at the end if anything failed.
    """
    total = ReconcileResult()
    failed: list[int] = []
    for batch in _sweep_batches(batch_size):
        try:
            total += reconcile_pumps(batch, now)
        except Exception:
            logger.exception("plan_all: batch starting at pump %s failed; retrying one by one", batch[0])
            for pk in batch:
                try:
                    total += reconcile_pumps([pk], now)
                except Exception:
                    logger.exception("plan_all: pump %s failed", pk)
                    failed.append(pk)
        if progress is not None:
            progress(len(batch))
    if failed:
        raise PlanningFailed(f"{len(failed)} pumps could not be planned: {failed[:20]}")
    return total


def _sweep_batches(batch_size: int) -> Iterator[list[int]]:
    """The ids `plan_all` re-plans, batch by batch, without holding them all.

    Active pumps come by keyset pages (`id > last`, in id order): one list of every id
    grew with the register (12 MB at its peak for 100,000 pumps, bench/RESULTS.md issue 6).
    Then the ended pumps that still hold unsent messages, read last, so a pump explanted
    during the sweep is still cleared; there are few, as the sweep cancels their messages.
    """
    last = 0
    while True:
        batch = list(
            Pump.objects.filter(status=PumpStatus.ACTIVE, pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size]
        )
        if not batch:
            break
        yield batch
        last = batch[-1]
    ended = sorted(
        set(
            Message.objects.filter(status__in=OPEN_STATES, pump__isnull=False)
            .exclude(pump__status=PumpStatus.ACTIVE)
            .values_list("pump_id", flat=True)
            .distinct()
        )
    )
    for start in range(0, len(ended), batch_size):
        yield ended[start : start + batch_size]


class PlanningFailed(Exception):
    pass


# --------------------------------------------------------------------------- escalations


def raise_escalation(
    *,
    clinic: Clinic,
    reason: EscalationReason,
    severity: str,
    cycle: str,
    detail: str,
    now: datetime,
    pump: Pump | None = None,
    patient: Patient | None = None,
) -> tuple[Escalation, bool]:
    """Open a staff task once per (subject, reason, cycle), and email the clinic about it."""
    patient = patient or (pump.patient if pump else None)
    subject = f"pump:{pump.pk}" if pump else f"patient:{patient.pk}" if patient else f"clinic:{clinic.pk}"
    with transaction.atomic():
        esc, created = Escalation.objects.get_or_create(
            subject=subject,
            reason=reason,
            cycle=cycle,
            defaults={
                "clinic": clinic,
                "pump": pump,
                "patient": patient,
                "severity": severity,
                "detail": detail,
                "raised_at": now,
            },
        )
        if created and clinic.escalation_address:
            _escalation_email(esc, clinic, pump, patient).save()
        if created:
            escalations_raised.send(sender=Escalation, escalations=[esc])
    if created:
        logger.warning("escalation raised: %s %s %s", severity, reason, subject)  # no names: no health data in logs
    return esc, created


def _escalation_email(esc: Escalation, clinic: Clinic, pump: Pump | None, patient: Patient | None, *, stage: str = "") -> Message:
    """The (unsaved) email telling the clinic's notification address about an escalation."""
    return Message(
        clinic=clinic,
        patient=patient,
        pump=pump,
        recipient_key=f"clinic:{clinic.pk}",
        recipient_kind=RecipientKind.STAFF,
        channel=Channel.EMAIL,
        kind=Kind.ESCALATION,
        subject=f"escalation:{esc.pk}",
        cycle=esc.cycle,
        stage=stage,
        address=clinic.escalation_address,
        time_zone=clinic.time_zone,
        critical=esc.severity == Severity.CRITICAL,
        context={
            "severity": esc.severity,
            "reason": str(EscalationReason(esc.reason).label),
            "detail": esc.detail,
            # Ids, not names: the email leaves pumptrack (README "What messages contain").
            "patient_id": patient.pk if patient else None,
            "pump_id": pump.pk if pump else None,
            "admin_url": settings.SITE_URL.rstrip("/") + reverse("admin:notifications_escalation_change", args=[esc.pk]),
        },
        due_at=esc.raised_at,
    )


def _raise_planned(new: list[tuple[_Loaded, planning.PlannedEscalation]], now: datetime) -> int:
    """Raise a batch's due escalations with one insert, and their emails with another.

    A concurrent planner may insert the same identities: the unique constraint keeps one
    row, and each email's own identity (one per escalation) keeps one email.
    """
    if not new:
        return 0
    rows = [
        Escalation(
            clinic=item.pump.patient.clinic,
            pump=item.pump,
            patient=item.pump.patient,
            reason=e.reason.value,
            severity=Severity.CRITICAL if e.critical else Severity.WARNING,
            subject=e.subject,
            cycle=e.cycle,
            detail=e.detail,
            raised_at=now,
        )
        for item, e in new
    ]
    Escalation.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    pumps = {item.pump.pk: item.pump for item, _ in new}
    wanted = {(e.subject, e.reason.value, e.cycle) for _, e in new}
    raised = [
        esc
        for esc in Escalation.objects.filter(subject__in={s for s, _, _ in wanted}, raised_at=now)
        if (esc.subject, esc.reason, esc.cycle) in wanted
    ]
    record_create(Escalation, raised)
    emails = []
    for esc in raised:
        pump = pumps[esc.pump_id] if esc.pump_id else None
        clinic = pump.patient.clinic if pump else esc.clinic
        if clinic.escalation_address:
            emails.append(_escalation_email(esc, clinic, pump, pump.patient if pump else None))
        logger.warning("escalation raised: %s %s %s", esc.severity, esc.reason, esc.subject)
    Message.objects.bulk_create(emails, ignore_conflicts=True, batch_size=1000)
    if raised:
        escalations_raised.send(sender=Escalation, escalations=raised)
    return len(raised)


def acknowledge_escalation(esc: Escalation, *, by: Any, now: datetime) -> None:
    with transaction.atomic():
        if Escalation.objects.filter(pk=esc.pk, status=EscalationStatus.OPEN).update(
            status=EscalationStatus.ACKNOWLEDGED, acknowledged_at=now, acknowledged_by=by
        ):
            record_update(Escalation, [esc.pk], by=by)


def resolve_escalation(esc: Escalation, *, by: Any, now: datetime, resolution: str = "") -> None:
    with transaction.atomic():
        if (
            Escalation.objects.filter(pk=esc.pk)
            .exclude(status=EscalationStatus.RESOLVED)
            .update(status=EscalationStatus.RESOLVED, resolved_at=now, resolved_by=by, resolution=resolution)
        ):
            record_update(Escalation, [esc.pk], by=by, reason=resolution)
        _cancel_escalation_emails([esc.pk], now)


# --------------------------------------------------------------------------- dispatch


def _claim_seconds() -> timedelta:
    return timedelta(seconds=settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS)


def dispatch_due(now: datetime, *, limit: int | None = None) -> list[int]:
    """Mark planned messages whose moment came as due and pick the ones to send now.

    Returns their ids; the caller queues one send task each once this commits. A message
    queued but never picked up (a lost task) is queued again after the claim period;
    a claim that expired (a killed worker) makes its message sendable again.
    """
    limit = limit or settings.PUMPTRACK_DISPATCH_BATCH
    stale = now - _claim_seconds()
    with transaction.atomic():
        Message.objects.filter(status=Status.PLANNED, due_at__lte=now).update(status=Status.DUE, updated_at=now)
        sendable = (
            Q(status=Status.DUE) & (Q(queued_at=None) | Q(queued_at__lt=stale))
            | Q(status=Status.FAILED, next_attempt_at__lte=now) & (Q(queued_at__lt=F("next_attempt_at")) | Q(queued_at__lt=stale))
            | Q(status=Status.SENDING, claim_expires_at__lte=now)
            & (Q(queued_at__lt=F("claim_expires_at")) | Q(queued_at__lt=stale))
        )
        ids = list(
            Message.objects.select_for_update(skip_locked=True)
            .filter(sendable)
            .order_by("-critical", "due_at", "pk")
            .values_list("pk", flat=True)[:limit]
        )
        Message.objects.filter(pk__in=ids).update(queued_at=now)
    return ids


def channels_of(message_ids: Sequence[int]) -> dict[int, str]:
    """Each message's channel, so the dispatch sweep can queue its send on that channel's queue."""
    return dict(Message.objects.filter(pk__in=message_ids).values_list("pk", "channel"))


def _claimable(now: datetime) -> Q:
    return (
        Q(status=Status.DUE)
        | Q(status=Status.FAILED, next_attempt_at__lte=now)
        | Q(status=Status.SENDING, claim_expires_at__lte=now)
    )


def _claim(pk: int, now: datetime) -> bool:
    """Take the message for one send attempt: one UPDATE, so only one worker wins (STYLE.md §7)."""
    return (
        Message.objects.filter(_claimable(now), pk=pk).update(
            status=Status.SENDING,
            claimed_at=now,
            claim_expires_at=now + _claim_seconds(),
            attempt_count=F("attempt_count") + 1,
            updated_at=now,
        )
        == 1
    )


def _usable(message: Message) -> str:
    """Why this message must not go out now ("" if it may)."""
    if ContactBlock.objects.filter(channel=message.channel, address=message.address, lifted_at=None).exists():
        return "Contact blocked (opted out or failing)"
    if message.recipient_kind == RecipientKind.PATIENT and message.patient is not None:
        if message.channel == Channel.EMAIL and not message.patient.contact_by_email:
            return "Patient prefers no email"
        if message.channel == Channel.SMS and not message.patient.contact_by_sms:
            return "Patient prefers no SMS"
    return ""


def _day_bounds(now: datetime, tz_name: str) -> tuple[datetime, datetime]:
    tz = zoneinfo.ZoneInfo(tz_name)
    day = now.astimezone(tz).date()
    return datetime.combine(day, time(0), tzinfo=tz), datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)


def _capped(message: Message, now: datetime) -> datetime | None:
    """The moment a non-critical SMS must wait for, if one already went to this recipient today.

    At most one non-critical SMS per recipient per local day (DESIGN.md "Messages").
    The caller holds the patient's row lock, so two workers cannot both pass this check.
    """
    if message.channel != Channel.SMS or message.critical or message.recipient_kind == RecipientKind.STAFF:
        return None
    start, end = _day_bounds(now, message.time_zone)
    others = Message.objects.filter(
        recipient_key=message.recipient_key,
        channel=Channel.SMS,
        critical=False,
        status__in=[Status.SENDING, Status.SENT, Status.DELIVERED],
        claimed_at__gte=start,
        claimed_at__lt=end,
    ).exclude(pk=message.pk)
    if not others.exists():
        return None
    clinic = message.clinic
    tomorrow = end.astimezone(zoneinfo.ZoneInfo(message.time_zone)).date()
    return planning.out_of_quiet_hours(
        planning.at_local(tomorrow, clinic.reminder_time, message.time_zone),
        message.time_zone,
        clinic.quiet_hours_start,
        clinic.quiet_hours_end,
    )


@dataclass(frozen=True)
class SendResult:
    outcome: str
    detail: str = ""


def _claim_and_prepare(pk: int, now: datetime, worker: str) -> SendResult | tuple[Message, Attempt, Outgoing]:
    """Claim the message and render it, with an in-flight attempt; or say why it does not go now."""
    with transaction.atomic():
        if not _claim(pk, now):
            return SendResult("not_claimed")
        # An attempt still in flight belonged to a worker that died (its claim expired):
        # say so, so staff can see why a patient may have had this message twice.
        Attempt.objects.filter(message_id=pk, outcome=AttemptOutcome.IN_FLIGHT).update(
            outcome=AttemptOutcome.WORKER_LOST, finished_at=now, error="Claim expired before an outcome was recorded."
        )
        message = Message.objects.select_related("clinic", "patient", "pump__model", "caregiver").get(pk=pk)
        if message.channel == Channel.SMS and not message.critical and message.patient_id is not None:
            # The SMS-cap lock: a second worker sending to this patient waits here, then sees this claim.
            list(Patient.objects.select_for_update().filter(pk=message.patient_id).values_list("pk", flat=True))
        why_not = _usable(message)
        if why_not:
            Message.objects.filter(pk=pk).update(status=Status.SUPPRESSED, status_reason=why_not, updated_at=now)
            Attempt.objects.create(
                message=message, started_at=now, finished_at=now, outcome=AttemptOutcome.SUPPRESSED, error=why_not, worker=worker
            )
            return SendResult("suppressed", why_not)
        later = _capped(message, now)
        if later is not None:
            Message.objects.filter(pk=pk).update(
                status=Status.PLANNED,
                status_reason="Deferred: one non-critical SMS a day",
                due_at=later,
                queued_at=None,
                attempt_count=F("attempt_count") - 1,
                updated_at=now,
            )
            Attempt.objects.create(
                message=message, started_at=now, finished_at=now, outcome=AttemptOutcome.DEFERRED, worker=worker
            )
            return SendResult("deferred", later.isoformat())
        out = render(message)
        attempt = Attempt.objects.create(message=message, started_at=now, worker=worker)
    return message, attempt, out


def send_message(pk: int, now: datetime, *, worker: str = "") -> SendResult:
    """Claim one message, send it once, record the attempt and its outcome."""
    claimed_at = monotonic()  # bounds the wait for a database outage, not a rule's clock
    try:
        prepared = _claim_and_prepare(pk, now, worker)
    except Exception as exc:
        # A bug before the network call (a template, a bad zone) rolled the claim back: record
        # it as a failed attempt so the row retries, then escalates, instead of looping unseen.
        _failed_before_send(pk, now, worker, exc)
        raise
    if isinstance(prepared, SendResult):
        return prepared
    message, attempt, out = prepared
    # The claim and the in-flight attempt are committed before the network call.
    try:
        provider_id = transport_for(message.channel).send(out)
    except TransportError as exc:
        return _failed(message, attempt, exc, now)
    except Exception as exc:
        # A bug in a backend: record it and retry like a transient failure (then escalate),
        # rather than leave the row in SENDING to be reclaimed forever; re-raised to be seen.
        _failed(message, attempt, TransportError(f"unexpected error: {exc!r}"), now)
        raise

    def record_sent() -> None:
        with transaction.atomic():
            Message.objects.filter(pk=pk, status=Status.SENDING, claimed_at=now).update(
                status=Status.SENT,
                status_reason="",
                sent_at=now,
                provider_id=provider_id,
                rendered_subject=out.subject[:255],
                rendered_body=out.text,
                updated_at=now,
            )
            Attempt.objects.filter(pk=attempt.pk).update(finished_at=now, outcome=AttemptOutcome.SENT, provider_id=provider_id)

    # The provider has the message: if this is not written down, the claim expires and the
    # patient gets it twice. A database restart or failover is waited out while the claim holds.
    _write_through_outage(record_sent, until=claimed_at + settings.PUMPTRACK_MESSAGE_CLAIM_SECONDS - 1)
    return SendResult("sent", provider_id)


def _write_through_outage(write: Callable[[], None], *, until: float) -> None:
    """Run `write` (an idempotent transaction), retrying while the database is unreachable
    and the monotonic clock is before `until`; then give up and raise."""
    delay = 0.1
    while True:
        try:
            write()
            return
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or monotonic() + delay > until:
                raise
            logger.warning("database unavailable while recording a sent message; retrying in %.1f s", delay)
            connection.close()  # the broken connection; the next query opens a new one
            sleep(delay)
            delay = min(delay * 2, 2.0)


def _failed_before_send(pk: int, now: datetime, worker: str, exc: Exception) -> None:
    with transaction.atomic():
        if not _claim(pk, now):
            return
        message = Message.objects.select_related("clinic", "patient", "pump").get(pk=pk)
        attempt = Attempt.objects.create(message=message, started_at=now, worker=worker)
    _failed(message, attempt, TransportError(f"could not prepare the message: {exc!r}"), now)


def _failed(message: Message, attempt: Attempt, exc: TransportError, now: datetime) -> SendResult:
    delays = settings.PUMPTRACK_MESSAGE_RETRY_DELAYS
    permanent = exc.permanent or message.attempt_count > len(delays)
    with transaction.atomic():
        Attempt.objects.filter(pk=attempt.pk).update(
            finished_at=now,
            outcome=AttemptOutcome.PERMANENT_FAILURE if exc.permanent else AttemptOutcome.TRANSIENT_FAILURE,
            error=str(exc)[:2000],
        )
        if not permanent:
            Message.objects.filter(pk=message.pk, status=Status.SENDING, claimed_at=now).update(
                status=Status.FAILED,
                status_reason=str(exc)[:200],
                next_attempt_at=now + timedelta(seconds=delays[message.attempt_count - 1]),
                updated_at=now,
            )
            return SendResult("retry", str(exc))
        Message.objects.filter(pk=message.pk, status=Status.SENDING, claimed_at=now).update(
            status=Status.FAILED_PERMANENTLY, status_reason=str(exc)[:200], updated_at=now
        )
        _delivery_failed(message, str(exc), now, disable_contact=exc.permanent)
    return SendResult("failed_permanently", str(exc))


def _delivery_failed(message: Message, error: str, now: datetime, *, disable_contact: bool) -> None:
    """A message that cannot be delivered: disable a dead contact and tell a person."""
    if message.recipient_kind == RecipientKind.STAFF:
        logger.error("escalation email %s to the clinic failed: %s", message.pk, error)
        return
    if disable_contact:
        block_contact(
            message.channel,
            message.address,
            reason=BlockReason.BOUNCED if message.channel == Channel.EMAIL else BlockReason.INVALID,
            method=BlockMethod.PROVIDER,
            detail=error[:300],
            now=now,
            escalate=False,  # the escalation below names the message and the contact
        )
    raise_escalation(
        clinic=message.clinic,
        pump=message.pump,
        patient=message.patient,
        reason=EscalationReason.DELIVERY_FAILED,
        severity=Severity.CRITICAL if message.critical else Severity.WARNING,
        cycle=f"message:{message.pk}",
        # No address: the detail is emailed to the clinic and the message's page names it.
        detail=f"{message.get_kind_display()} by {message.get_channel_display()} (message {message.pk}) "
        f"could not be delivered: {error}. Contact the patient another way and correct the contact details.",
        now=now,
    )


# --------------------------------------------------------------------------- rendering


def unsubscribe_token(channel: str, address: str) -> str:
    return signing.dumps({"c": channel, "a": address}, salt=UNSUBSCRIBE_SALT, compress=True)


def message_unsubscribe_token(message_id: int) -> str:
    """A token naming the message, not the address: a link's path lands in web server and
    proxy logs, and a signed token is only encoded, not encrypted (README "What logs contain")."""
    return signing.dumps({"m": message_id}, salt=UNSUBSCRIBE_SALT)


def read_unsubscribe_token(token: str) -> tuple[str, str]:
    """(channel, address); raises signing.BadSignature if forged or its message is gone.

    Tokens with the address inside (`unsubscribe_token`) are still in inboxes: still honoured.
    """
    data = signing.loads(token, salt=UNSUBSCRIBE_SALT)
    if "m" in data:
        found = Message.objects.filter(pk=data["m"]).values_list("channel", "address").first()
        if found is None:
            raise signing.BadSignature("no such message")
        return str(found[0]), str(found[1])
    return str(data["c"]), str(data["a"])


def unsubscribe_url(channel: str, address: str) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("notifications:unsubscribe", args=[unsubscribe_token(channel, address)])


def render(message: Message) -> Outgoing:
    if message.kind == Kind.ESCALATION:
        ctx = message.context
        text = content.compose_escalation(ctx.get("severity", ""), ctx.get("reason", ""), ctx.get("detail", ""), ctx)
        return Outgoing(message.pk, message.address, text.subject, "\n\n".join(text.paragraphs))
    caregiver = message.recipient_kind == RecipientKind.CAREGIVER
    text = content.compose(message.kind, message.language, message.context, message.time_zone, caregiver=caregiver)
    if message.channel == Channel.SMS:
        return Outgoing(
            message.pk,
            message.address,
            "",
            text.sms,
            status_callback=settings.SITE_URL.rstrip("/") + reverse("notifications:twilio-status"),
        )
    link = settings.SITE_URL.rstrip("/") + reverse("notifications:unsubscribe", args=[message_unsubscribe_token(message.pk)])
    ctx = {
        "text": text,
        "unsubscribe_url": link,
        "language": message.language,
        "clinic_name": message.context.get("clinic_name", ""),
    }
    return Outgoing(
        message.pk,
        message.address,
        text.subject,
        render_to_string("notifications/email.txt", ctx),
        html=render_to_string("notifications/email.html", ctx),
        headers={"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )


# --------------------------------------------------------------------------- contacts


def _people_at(channel: str, address: str) -> tuple[QuerySet[Patient], QuerySet[Caregiver]]:
    field = "email" if channel == Channel.EMAIL else "phone"
    return (
        Patient.objects.filter(**{field: address}).select_related("clinic"),
        Caregiver.objects.filter(**{field: address}).select_related("patient__clinic"),
    )


def _pumps_of(patients: Iterable[Patient]) -> list[int]:
    return list(Pump.objects.filter(patient__in=list(patients)).values_list("pk", flat=True))


def block_contact(
    channel: str,
    address: str,
    *,
    reason: str,
    method: str,
    now: datetime,
    keyword: str = "",
    detail: str = "",
    escalate: bool = True,
) -> ContactBlock | None:
    """Stop using an address; tell staff at once, because silence is not safe (DESIGN.md).

    `escalate=False` when the caller raises its own escalation for the same event (a
    failed delivery), so staff get one task, not two.
    """
    with transaction.atomic():
        try:
            with transaction.atomic():
                block = ContactBlock.objects.create(
                    channel=channel, address=address, reason=reason, method=method, keyword=keyword, detail=detail, created_at=now
                )
        except IntegrityError:
            return None  # already blocked
        patients, caregivers = _people_at(channel, address)
        affected = {p.pk: p for p in patients} | {c.patient.pk: c.patient for c in caregivers}
        label = BlockReason(reason).label
        for patient in affected.values() if escalate else ():
            raise_escalation(
                clinic=patient.clinic,
                patient=patient,
                reason=EscalationReason.OPTED_OUT if reason == BlockReason.OPTED_OUT else EscalationReason.DELIVERY_FAILED,
                severity=Severity.WARNING,
                cycle=f"block:{block.pk}",
                detail=f"{label} on {channel} (contact block {block.pk}) via {BlockMethod(method).label.lower()}"
                + (f" '{keyword}'" if keyword else "")
                + ". Reminders and warnings on this channel stop: make sure the patient is reached another way.",
                now=now,
            )
        pump_ids = _pumps_of(affected.values())
    announce_change(pump_ids)
    return block


def lift_block(channel: str, address: str, *, method: str, now: datetime) -> bool:
    with transaction.atomic():
        active = list(ContactBlock.objects.filter(channel=channel, address=address, lifted_at=None).values_list("pk", flat=True))
        lifted = ContactBlock.objects.filter(pk__in=active, lifted_at=None).update(lifted_at=now, lifted_method=method) > 0
        record_update(ContactBlock, active, reason=f"Lifted ({BlockMethod(method).label.lower()}).")
        patients, caregivers = _people_at(channel, address)
        pump_ids = _pumps_of({*patients, *(c.patient for c in caregivers)})
    announce_change(pump_ids)
    return lifted


# SMS keywords (CTIA / Twilio Advanced Opt-Out defaults).
STOP_WORDS = frozenset({"STOP", "STOPALL", "QUIT", "END", "REVOKE", "OPT OUT", "OPTOUT", "CANCEL", "UNSUBSCRIBE"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})


def handle_inbound_sms(from_number: str, body: str, now: datetime) -> str:
    """Record an opt-out, a re-subscription or answer HELP; returns the reply ("" for none)."""
    word = " ".join(body.strip().upper().split())
    patients, caregivers = _people_at(Channel.SMS, from_number)
    clinic = next(iter([p.clinic for p in patients] + [c.patient.clinic for c in caregivers]), None)
    phone = str(clinic.phone) if clinic and clinic.phone else ""
    name = clinic.name if clinic else "pumptrack"
    if word in STOP_WORDS:
        block_contact(
            Channel.SMS, from_number, reason=BlockReason.OPTED_OUT, method=BlockMethod.SMS_KEYWORD, keyword=word, now=now
        )
        return f"{name}: you will get no more texts. Reply START to resubscribe." + (f" Clinic: {phone}" if phone else "")
    if word in START_WORDS:
        lift_block(Channel.SMS, from_number, method=BlockMethod.SMS_KEYWORD, now=now)
        return f"{name}: texts about your pump are back on. Reply STOP to stop."
    if word in HELP_WORDS:
        return (
            f"{name}: pump refill reminders."
            + (f" Call {phone}." if phone else "")
            + " Reply STOP to stop. In an emergency call your local emergency number."
        )
    return ""


def record_delivery_status(provider_id: str, status: str, error_code: str, now: datetime) -> bool:
    """Twilio's status callback: delivered, or failed/undelivered (clinical urgency decides the rest)."""
    message = Message.objects.select_related("clinic", "patient", "pump").filter(provider_id=provider_id).first()
    if message is None:
        return False
    if status == "delivered":
        Message.objects.filter(pk=message.pk, status=Status.SENT).update(
            status=Status.DELIVERED, delivered_at=now, updated_at=now
        )
    elif status in ("failed", "undelivered"):
        with transaction.atomic():
            changed = Message.objects.filter(pk=message.pk, status__in=[Status.SENT, Status.DELIVERED]).update(
                status=Status.FAILED_PERMANENTLY, status_reason=f"Provider reports {status} (error {error_code})", updated_at=now
            )
            if changed:
                # 30004-30006: blocked, unknown or landline number: the contact is dead. 30003
                # (handset off or out of signal) is usually temporary: escalate, keep the number.
                dead = error_code in {"30004", "30005", "30006"}
                _delivery_failed(message, f"provider reports {status}, error {error_code}", now, disable_contact=dead)
    return True


# --------------------------------------------------------------------------- heartbeat


SWEEPS = {"plan": 15 * 60, "dispatch": 60}


def beat(name: str, now: datetime, detail: str = "", *, ok: bool = True) -> None:
    Heartbeat.objects.update_or_create(
        name=name, defaults={"finished_at": now, "interval_seconds": SWEEPS[name], "detail": detail[:300], "ok": ok}
    )


def stale_sweeps(now: datetime) -> list[str]:
    """Sweeps that have not finished within twice their interval, never ran, or last failed in part."""
    seen = {h.name: h for h in Heartbeat.objects.filter(name__in=list(SWEEPS))}
    problems = []
    for name, interval in SWEEPS.items():
        h = seen.get(name)
        if h is None:
            problems.append(f"{name} sweep has never run")
        elif now - h.finished_at > timedelta(seconds=2 * interval):
            problems.append(f"{name} sweep last finished {h.finished_at:%Y-%m-%d %H:%M:%S} UTC")
        elif not h.ok:
            # Some pumps are not being planned: their patients are not protected.
            problems.append(f"{name} sweep failed in part at {h.finished_at:%Y-%m-%d %H:%M:%S} UTC: {h.detail}")
    return problems
