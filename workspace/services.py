"""The staff worklist: who needs action today, per clinic, most urgent first (issue 5).

`worklist(user, clinic_ids, now)` reads everything in a constant number of queries, whatever
the number of pumps, and decides each pump's group with the pure `classify`. The MRI and
contact facts come from the message planner's loader (`notifications.services.load_facts`), so
the worklist and the escalations it lists never disagree on what "post-MRI check pending"
or "contact blocked" means.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from notifications import planning
from notifications.models import (
    SEVERITY_RANK,
    BlockReason,
    Escalation,
    EscalationStatus,
    Message,
    RecipientKind,
    Severity,
    Status,
)
from notifications.services import SCAN_LOOKBACK, load_facts
from patients.access import WRITE_ROLES, clinics_for
from patients.models import Clinic, Membership, Patient
from pumps.models import Appointment, AppointmentStatus, ClinicalEvent, EventKind, Pump, PumpStatus, Refill
from pumptrack import spreadsheet
from workspace.models import OutreachAttempt, OutreachChannel, OutreachOutcome

# "Due within 14 days with no appointment booked" (issue 5): the first refill reminder
# goes out 14 days ahead (DESIGN.md "Messages"), so a visit should be booked by then.
DUE_WITHIN_DAYS = 14

# Messages whose outcome tells staff whether the patient can be reached.
CONTACT_STATES = (Status.SENT, Status.DELIVERED, Status.FAILED, Status.FAILED_PERMANENTLY)
OPEN_ESCALATION = (EscalationStatus.OPEN, EscalationStatus.ACKNOWLEDGED)
# The same ranking as notifications.models.SEVERITY_RANK, for rows sorted in Python.
SEVERITY_ORDER: dict[str, int] = {Severity.CRITICAL: 2, Severity.WARNING: 1, Severity.INFO: 0}


class Group(models.TextChoices):
    """Worklist groups, in the order of urgency (declaration order is the order shown)."""

    ALARM_REACHED = "alarm_reached", "Low-reservoir alarm date reached (critical)"
    OVERDUE = "overdue", "Refill overdue"
    DUE_UNBOOKED = "due_unbooked", f"Due within {DUE_WITHIN_DAYS} days, no appointment booked"
    ESCALATION = "escalation", "Open escalations"
    POST_MRI = "post_mri", "Post-MRI pump check pending"
    BATTERY = "battery", "Battery replacement due"
    DISCREPANCY = "discrepancy", "Discrepancy flagged at the last refill"


GROUP_ORDER = {g: i for i, g in enumerate(Group)}


# --------------------------------------------------------------------------- the pure rule


@dataclass(frozen=True)
class PumpSituation:
    """What the grouping rule looks at for one pump, as values."""

    active: bool
    today: date  # clinic-local
    refill_by: date | None
    alarm_on: date | None
    appointment_booked: bool
    open_escalations: int
    pending_scans: int
    end_of_service_on: date | None
    replacement_indicator: bool
    battery_planning_months: int
    discrepancy_flagged: bool


def classify(s: PumpSituation) -> list[Group]:
    """Every group the pump belongs to, most urgent first; the first is where it is listed.

    An explanted or replaced pump needs no refill: only its open escalations list it.
    The alarm date counts from its first minute, as the critical escalation does
    (DESIGN.md "Messages"); overdue means refill-by lies before the clinic's today.
    """
    found: list[Group] = []
    if s.active:
        if s.alarm_on is not None and s.alarm_on <= s.today:
            found.append(Group.ALARM_REACHED)
        if s.refill_by is not None and s.refill_by < s.today:
            found.append(Group.OVERDUE)
        elif s.refill_by is not None and s.refill_by <= s.today + timedelta(days=DUE_WITHIN_DAYS) and not s.appointment_booked:
            found.append(Group.DUE_UNBOOKED)
    if s.open_escalations:
        found.append(Group.ESCALATION)
    if s.active:
        if s.pending_scans:
            found.append(Group.POST_MRI)
        # R9: plan the replacement N months before the estimated end of service; an ERI
        # already recorded means the pump stops within 90 days.
        planning_from = planning.add_months(s.today, s.battery_planning_months)
        if s.replacement_indicator or (s.end_of_service_on is not None and s.end_of_service_on <= planning_from):
            found.append(Group.BATTERY)
        if s.discrepancy_flagged:
            found.append(Group.DISCREPANCY)
    return found


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ContactState:
    """Whether the patient can be reached by the reminders, and what the last message did."""

    usable: bool
    opted_out: bool
    problems: tuple[str, ...]  # e.g. "email: Opted out", "no mobile number"
    last_message: Message | None

    @property
    def last_failed(self) -> bool:
        return self.last_message is not None and self.last_message.status in (Status.FAILED, Status.FAILED_PERMANENTLY)

    @property
    def last_at(self) -> datetime | None:
        m = self.last_message
        return None if m is None else (m.delivered_at or m.sent_at or m.updated_at)

    def summary(self, tz: Any = None) -> str:
        """One line of text (the CSV column)."""
        parts = []
        m = self.last_message
        if m is not None:
            at = self.last_at
            when = at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if at is not None else ""
            parts.append(f"last {m.get_channel_display()} {m.get_status_display().lower()} {when}".strip())
        else:
            parts.append("no message sent yet")
        if not self.usable:
            parts.append("NO USABLE CONTACT")
        parts.extend(self.problems)
        return "; ".join(parts)


@dataclass
class Row:
    group: Group
    clinic: Clinic
    pump: Pump | None
    patient: Patient | None
    also: list[Group] = field(default_factory=list)
    last_fill: Refill | None = None
    appointment: Appointment | None = None
    escalations: list[Escalation] = field(default_factory=list)
    pending_scans: list[datetime] = field(default_factory=list)
    replacement_indicator_at: datetime | None = None
    contact: ContactState | None = None
    last_outreach: OutreachAttempt | None = None

    @property
    def refill_by(self) -> date | None:
        return self.pump.refill_by if self.pump else None

    @property
    def alarm_on(self) -> date | None:
        return self.pump.alarm_on if self.pump else None

    @property
    def end_of_service_on(self) -> date | None:
        return self.pump.estimated_end_of_service_on if self.pump else None

    @property
    def groups(self) -> list[Group]:
        return [self.group, *self.also]

    @property
    def battery_due(self) -> bool:
        return Group.BATTERY in self.groups


@dataclass(frozen=True)
class Permissions:
    """Which action links a user gets in one clinic (patients.access.WRITE_ROLES)."""

    refill: bool = False
    dose: bool = False
    book: bool = False
    outreach: bool = False
    escalation: bool = False


@dataclass
class GroupRows:
    group: Group
    rows: list[Row]

    @property
    def label(self) -> str:
        return str(self.group.label)

    @property
    def critical(self) -> bool:
        return self.group == Group.ALARM_REACHED


@dataclass
class ClinicWorklist:
    clinic: Clinic
    today: date
    groups: list[GroupRows]
    may: Permissions

    @property
    def count(self) -> int:
        return sum(len(g.rows) for g in self.groups)


# --------------------------------------------------------------------------- reading


def _permissions(user: Any, clinic_ids: Sequence[int]) -> dict[int, Permissions]:
    if user.is_superuser:
        return {pk: Permissions(True, True, True, True, True) for pk in clinic_ids}
    roles: dict[int, set[str]] = defaultdict(set)
    for clinic_id, role in Membership.objects.filter(user=user, clinic_id__in=clinic_ids).values_list("clinic_id", "role"):
        roles[clinic_id].add(role)
    staff = bool(user.is_active and user.is_staff)

    def may(label: str, clinic_id: int) -> bool:
        return staff and bool(roles[clinic_id] & WRITE_ROLES.get(label, frozenset()))

    return {
        pk: Permissions(
            refill=may("pumps.refill", pk),
            dose=may("pumps.program", pk),  # clinicians only
            book=may("pumps.appointment", pk),
            outreach=may("workspace.outreachattempt", pk),
            escalation=may("notifications.escalation", pk),
        )
        for pk in clinic_ids
    }


def _contact_state(contact: planning.Contact | None, message: Message | None) -> ContactState:
    if contact is None:
        return ContactState(usable=False, opted_out=False, problems=("no contact details",), last_message=message)
    problems = []
    opted_out = False
    for name, address, blocked in (("email", contact.email, contact.email_blocked), ("SMS", contact.phone, contact.sms_blocked)):
        if not address:
            problems.append(f"no {'email address' if name == 'email' else 'mobile number'}")
        elif blocked:
            problems.append(f"{name}: {blocked}")
            opted_out = opted_out or blocked == BlockReason.OPTED_OUT.label
    return ContactState(usable=contact.usable, opted_out=opted_out, problems=tuple(problems), last_message=message)


def _sort_key(row: Row) -> tuple[Any, ...]:
    far = date.max
    if row.group == Group.ALARM_REACHED:
        return (row.alarm_on or far, row.refill_by or far)
    if row.group in (Group.OVERDUE, Group.DUE_UNBOOKED, Group.DISCREPANCY):
        return (row.refill_by or far,)
    if row.group == Group.ESCALATION:
        # Critical first, then the longest waiting (the order of the escalation list).
        worst = max((SEVERITY_ORDER.get(e.severity, 0) for e in row.escalations), default=0)
        return (-worst, min(e.raised_at for e in row.escalations).timestamp())
    if row.group == Group.POST_MRI:
        return (min(row.pending_scans).timestamp() if row.pending_scans else 0.0,)
    if row.group == Group.BATTERY:
        # An ERI recorded comes first: the pump stops within 90 days of it.
        return (row.replacement_indicator_at is None, row.end_of_service_on or far)
    return ()


def worklist(user: Any, clinic_ids: Collection[int] | None, now: datetime) -> list[ClinicWorklist]:
    """The worklist of each clinic `user` belongs to (superuser: all), limited to `clinic_ids`
    when given; empty groups are kept so that staff see they were checked.

    A pump is listed once, in its most urgent group; the row names the other groups it is
    in. Constant queries: clinics, roles, escalations, candidate pumps, the planner's
    loader (pumps, caregivers, events, blocks), then last fills, booked appointments, last
    messages and last outreach attempts by id.
    """
    clinics_qs = clinics_for(user).order_by("name")
    if clinic_ids is not None:
        clinics_qs = clinics_qs.filter(pk__in=list(clinic_ids))
    clinics = {c.pk: c for c in clinics_qs}
    if not clinics:
        return []
    ids = list(clinics)
    may = _permissions(user, ids)
    todays = {pk: planning.local_date(now, c.time_zone) for pk, c in clinics.items()}

    escalations = list(
        Escalation.objects.filter(clinic_id__in=ids, status__in=OPEN_ESCALATION)
        .select_related("patient")
        .order_by(SEVERITY_RANK.desc(), "raised_at", "pk")
    )
    escalation_pumps = {e.pump_id for e in escalations if e.pump_id is not None}
    # An escalation about a patient (an opt-out, a dead contact) belongs on their pump's row.
    escalation_patients = {e.patient_id for e in escalations if e.pump_id is None and e.patient_id is not None}

    # Candidates by conservative bounds (the latest "today" and the longest planning
    # horizon of these clinics); `classify` then decides exactly, per clinic.
    latest_today = max(todays.values())
    horizon = planning.add_months(latest_today, max(c.battery_planning_months for c in clinics.values()))
    events = ClinicalEvent.objects.filter(pump=OuterRef("pk"), occurred_at__gte=now - SCAN_LOOKBACK)
    last_fill = Refill.objects.filter(pump=OuterRef("pk")).order_by("-performed_at", "-pk")
    booked = Appointment.objects.filter(pump=OuterRef("pk"), status=AppointmentStatus.BOOKED).order_by("starts_at", "pk")
    last_message = (
        Message.objects.filter(patient=OuterRef("patient"), recipient_kind=RecipientKind.PATIENT, status__in=CONTACT_STATES)
        .annotate(moment=Coalesce("delivered_at", "sent_at", "updated_at"))
        .order_by("-moment", "-pk")
    )
    last_outreach = OutreachAttempt.objects.filter(pump=OuterRef("pk")).order_by("-at", "-pk")
    due = (
        Q(alarm_on__lte=latest_today)
        | Q(refill_by__lte=latest_today + timedelta(days=DUE_WITHIN_DAYS))
        | Q(estimated_end_of_service_on__lte=horizon)
        | Q(mri=True)
        | Q(flagged=True)
    )
    candidates = list(
        Pump.objects.filter(patient__clinic_id__in=ids)
        .annotate(
            mri=Exists(
                events.filter(
                    Q(kind__in=[EventKind.MRI_DONE, EventKind.MRI_PLANNED], occurred_at__lte=now)
                    | Q(kind=EventKind.REPLACEMENT_INDICATOR)
                )
            ),
            flagged=Subquery(last_fill.values("discrepancy_flagged")[:1]),
            last_fill_id=Subquery(last_fill.values("pk")[:1]),
            appointment_id=Subquery(booked.values("pk")[:1]),
            last_message_id=Subquery(last_message.values("pk")[:1]),
            last_outreach_id=Subquery(last_outreach.values("pk")[:1]),
        )
        .filter((Q(status=PumpStatus.ACTIVE) & (due | Q(patient_id__in=escalation_patients))) | Q(pk__in=escalation_pumps))
        .values("pk", "last_fill_id", "appointment_id", "last_message_id", "last_outreach_id")
    )
    refs = {c["pk"]: c for c in candidates}
    loaded = load_facts(sorted(refs), now)

    def by_id(model: type[Any], key: str, select: Sequence[str] = ()) -> dict[int, Any]:
        wanted = [c[key] for c in candidates if c[key] is not None]
        return {obj.pk: obj for obj in model.objects.filter(pk__in=wanted).select_related(*select)} if wanted else {}

    fills = by_id(Refill, "last_fill_id")
    appointments = by_id(Appointment, "appointment_id")
    messages = by_id(Message, "last_message_id")
    outreach = by_id(OutreachAttempt, "last_outreach_id", select=["by"])

    active_pump_of = {item.pump.patient_id: item.pump.pk for item in loaded if item.facts.active}
    pump_escalations: dict[int, list[Escalation]] = defaultdict(list)
    for esc in escalations:
        pump_id = esc.pump_id if esc.pump_id is not None else active_pump_of.get(esc.patient_id or 0)
        if pump_id is not None:
            pump_escalations[pump_id].append(esc)

    rows: dict[int, list[Row]] = defaultdict(list)
    shown: set[int] = set()
    for item in loaded:
        pump, facts = item.pump, item.facts
        clinic_id = pump.patient.clinic_id
        ref = refs[pump.pk]
        fill = fills.get(ref["last_fill_id"])
        appointment = appointments.get(ref["appointment_id"])
        # §7.4 #92: a scan that has happened with no pump check recorded since (the planner's rule).
        pending = [scan.at for scan in facts.scans if not scan.checked and scan.at <= now]
        eri = max((at for _, at in facts.replacement_indicators), default=None)
        groups = classify(
            PumpSituation(
                active=facts.active,
                today=todays[clinic_id],
                refill_by=pump.refill_by,
                alarm_on=pump.alarm_on,
                appointment_booked=appointment is not None,
                open_escalations=len(pump_escalations[pump.pk]),
                pending_scans=len(pending),
                end_of_service_on=pump.estimated_end_of_service_on,
                replacement_indicator=eri is not None,
                battery_planning_months=pump.patient.clinic.battery_planning_months,
                discrepancy_flagged=bool(fill and fill.discrepancy_flagged),
            )
        )
        if not groups:
            continue
        shown.add(pump.pk)
        patient_contact = next((c for c in item.contacts if c.is_patient), None)
        rows[clinic_id].append(
            Row(
                group=groups[0],
                clinic=clinics[clinic_id],
                pump=pump,
                patient=pump.patient,
                also=groups[1:],
                last_fill=fill,
                appointment=appointment,
                escalations=pump_escalations[pump.pk],
                pending_scans=pending,
                replacement_indicator_at=eri,
                contact=_contact_state(patient_contact, messages.get(ref["last_message_id"])),
                last_outreach=outreach.get(ref["last_outreach_id"]),
            )
        )
    # Escalations on no row yet (a clinic-wide one, a patient with no active pump, or a
    # pump whose patient moved to a clinic outside this user's): listed on their own,
    # with the patient only when the patient is in one of the user's clinics.
    listed = {esc.pk for pump_id in shown for esc in pump_escalations[pump_id]}
    for esc in escalations:
        if esc.pk in listed:
            continue
        patient = esc.patient if esc.patient is not None and esc.patient.clinic_id in clinics else None
        rows[esc.clinic_id].append(
            Row(group=Group.ESCALATION, clinic=clinics[esc.clinic_id], pump=None, patient=patient, escalations=[esc])
        )

    result = []
    for pk, clinic in clinics.items():
        grouped = []
        for group in Group:
            members = sorted((r for r in rows[pk] if r.group == group), key=_sort_key)
            grouped.append(GroupRows(group, members))
        result.append(ClinicWorklist(clinic=clinic, today=todays[pk], groups=grouped, may=may[pk]))
    return result


# --------------------------------------------------------------------------- CSV


CSV_HEADER = [
    "group",
    "clinic",
    "MRN",
    "patient",
    "high risk",
    "pump",
    "refill by",
    "alarm date",
    "last refill",
    "appointment",
    "also in",
    "escalations",
    "post-MRI scans",
    "end of service",
    "contact",
    "last outreach",
]


def csv_rows(worklists: Iterable[ClinicWorklist]) -> list[list[str]]:
    """One line per worklist row, in the page's order; times in the clinic's zone."""
    lines = [CSV_HEADER]
    for wl in worklists:
        tz = wl.clinic.tz

        def moment(at: datetime | None) -> str:
            return at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if at else ""  # noqa: B023 (used in this iteration)

        for group in wl.groups:
            for row in group.rows:
                pump, patient = row.pump, row.patient
                outreach = row.last_outreach
                lines.append(
                    [
                        spreadsheet.cell(v)
                        for v in (
                            group.label,
                            wl.clinic.name,
                            patient.mrn if patient else "",
                            patient.full_name if patient else "",
                            ("yes" if patient.high_risk else "no") if patient else "",
                            f"{pump.model.name} {pump.model.model_number} #{pump.serial_number}" if pump else "",
                            row.refill_by.isoformat() if row.refill_by else "",
                            row.alarm_on.isoformat() if row.alarm_on else "",
                            moment(row.last_fill.performed_at if row.last_fill else None),
                            moment(row.appointment.starts_at if row.appointment else None),
                            ", ".join(str(g.label) for g in row.also),
                            "; ".join(
                                f"{e.get_severity_display()}: {e.get_reason_display()} ({e.get_status_display().lower()})"
                                for e in row.escalations
                            ),
                            ", ".join(moment(at) for at in row.pending_scans),
                            row.end_of_service_on.isoformat() if row.end_of_service_on else "",
                            row.contact.summary(tz) if row.contact else "",
                            (
                                f"{moment(outreach.at)} {outreach.get_channel_display()}: {outreach.get_outcome_display()}"
                                if outreach
                                else ""
                            ),
                        )
                    ]
                )
    return lines


# --------------------------------------------------------------------------- writes


def log_outreach(
    pump: Pump, *, at: datetime, channel: str, outcome: str, note: str = "", by: Any, now: datetime
) -> OutreachAttempt:
    """Record one attempt to reach the pump's patient. Refuses a moment in the future or
    before the implant (the record says what happened, not what is planned)."""
    errors: dict[str, list[str]] = {}
    if at > now:
        errors.setdefault("at", []).append("Cannot be in the future.")
    if at < pump.implanted_at:
        errors.setdefault("at", []).append(f"Cannot be before the implant ({pump.implanted_at:%Y-%m-%d %H:%M}).")
    if channel not in OutreachChannel.values:
        errors.setdefault("channel", []).append(f"Unknown channel {channel!r}.")
    if outcome not in OutreachOutcome.values:
        errors.setdefault("outcome", []).append(f"Unknown outcome {outcome!r}.")
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        return OutreachAttempt.objects.create(
            pump=pump, patient_id=pump.patient_id, at=at, channel=channel, outcome=outcome, note=note.strip(), by=by
        )
