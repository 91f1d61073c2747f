"""Which messages and staff escalations should exist for one pump: a pure function.

`plan(facts, policy, contacts, now)` looks at values only (no database, no clock), so the
whole reminder policy is testable as a table. `notifications.services.reconcile_pump`
turns the plan into outbox rows. Sources: DESIGN.md "Messages", clinical.md §6-§7, §11.
"""

from __future__ import annotations

import enum
import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from pumps.domain import refill_keeps_visit

# How far back an event may lie and still get its message when first planned (e.g. a
# pump imported with an implant date years ago gets no "welcome" warnings). Operational,
# not clinical.
CATCH_UP = timedelta(days=7)


class Kind(str, enum.Enum):
    REFILL_REMINDER = "refill_reminder"
    OVERDUE = "overdue"
    WITHDRAWAL_WARNING = "withdrawal_warning"
    HEAT_WARNING = "heat_warning"
    ALCOHOL_WARNING = "alcohol_warning"
    MRI_WARNING = "mri_warning"


class Reason(str, enum.Enum):
    OVERDUE = "overdue"
    ALARM_DATE_REACHED = "alarm_date_reached"
    NO_USABLE_CONTACT = "no_usable_contact"
    POST_MRI_CHECK_MISSING = "post_mri_check_missing"
    MRI_EMPTY_RESERVOIR = "mri_empty_reservoir"
    MRI_UNSAFE = "mri_unsafe"
    BATTERY_PLANNING = "battery_planning"
    REPLACEMENT_INDICATOR = "replacement_indicator"
    APPOINTMENT_MISSED = "appointment_missed"


# Messages that also go to caregivers flagged for safety messages (§6.1 #75: "patients
# and caregivers should be ... educated on the early symptoms of baclofen withdrawal").
SAFETY_KINDS = frozenset({Kind.OVERDUE, Kind.WITHDRAWAL_WARNING, Kind.MRI_WARNING})
# Never deferred by quiet hours or the SMS cap: a refill already missed.
CRITICAL_KINDS = frozenset({Kind.OVERDUE})


@dataclass(frozen=True)
class Contact:
    """A patient or caregiver as a recipient, with what may be used to reach them."""

    key: str  # "patient:<id>" or "caregiver:<id>"
    is_patient: bool
    email: str = ""
    phone: str = ""
    language: str = "en"
    time_zone: str = "UTC"
    # Why a channel may not be used ("" = usable): preference off, opted out, bounced ...
    email_blocked: str = ""
    sms_blocked: str = ""
    receives_safety: bool = True
    caregiver_id: int | None = None

    def channels(self) -> list[tuple[str, str, str]]:
        """(channel, address, suppression reason) for each address this contact has."""
        found = []
        if self.email:
            found.append(("email", self.email, self.email_blocked))
        if self.phone:
            found.append(("sms", self.phone, self.sms_blocked))
        return found

    @property
    def usable(self) -> bool:
        return any(not blocked for _, _, blocked in self.channels())


@dataclass(frozen=True)
class Policy:
    """The clinic's message policy (patients.models.Clinic holds the defaults)."""

    time_zone: str = "UTC"
    reminder_days: tuple[int, ...] = (14, 7, 2, 0)
    high_risk_extra_reminder_days: int = 21
    reminder_time: time = time(10, 0)
    quiet_hours_start: time = time(20, 0)
    quiet_hours_end: time = time(9, 0)
    escalation_time: time = time(9, 0)
    heat_season_month: int = 6
    heat_season_day: int = 1
    alcohol_reminder_months: int = 6
    battery_planning_months: int = 6
    post_mri_check_hours: int = 24


@dataclass(frozen=True)
class Scan:
    """An MRI (planned or done) and whether a post-MRI pump check followed it."""

    event_id: int
    at: datetime
    recorded_at: datetime
    planned: bool
    checked: bool


@dataclass(frozen=True)
class Visit:
    """A refill visit still booked, or missed with no refill since it was booked."""

    appointment_id: int
    starts_at: datetime
    booked_at: datetime
    location: str = ""
    missed: bool = False  # already marked missed (by an earlier sweep)


@dataclass(frozen=True)
class PumpFacts:
    pump_id: int
    active: bool
    implanted_at: datetime
    refill_by: date | None
    alarm_on: date | None
    last_fill_id: int | None = None
    last_fill_at: datetime | None = None
    last_fill_initial: bool = False  # the implant's first fill, which the implant warnings cover
    high_risk: bool = False
    mri_rule: str = "check_after"
    end_of_service_on: date | None = None
    replacement_indicators: tuple[tuple[int, datetime], ...] = ()
    scans: tuple[Scan, ...] = ()
    visits: tuple[Visit, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"pump:{self.pump_id}"


@dataclass(frozen=True)
class PlannedMessage:
    recipient_key: str
    channel: str
    kind: Kind
    subject: str
    cycle: str
    stage: str
    due_at: datetime
    critical: bool
    address: str
    language: str
    time_zone: str
    is_patient: bool
    caregiver_id: int | None
    suppressed: str  # "" or why the message must not be sent
    context: dict[str, Any]

    @property
    def identity(self) -> tuple[str, str, str, str, str, str]:
        return (self.recipient_key, self.channel, self.kind.value, self.subject, self.cycle, self.stage)


@dataclass(frozen=True)
class PlannedEscalation:
    reason: Reason
    critical: bool
    subject: str
    cycle: str
    due_at: datetime
    detail: str


@dataclass
class Plan:
    messages: list[PlannedMessage] = field(default_factory=list)
    escalations: list[PlannedEscalation] = field(default_factory=list)


# --------------------------------------------------------------------------- time helpers


def at_local(on: date, at: time, tz_name: str) -> datetime:
    """The aware moment of wall-clock `at` on `on` in `tz_name`.

    A wall time that DST skips (02:30 on a spring-forward day) resolves to the same
    offset as just before the jump, i.e. an hour later in real time: never earlier.
    """
    return datetime.combine(on, at, tzinfo=zoneinfo.ZoneInfo(tz_name))


def local_date(moment: datetime, tz_name: str) -> date:
    return moment.astimezone(zoneinfo.ZoneInfo(tz_name)).date()


def in_quiet_hours(moment: datetime, tz_name: str, start: time, end: time) -> bool:
    wall = moment.astimezone(zoneinfo.ZoneInfo(tz_name)).time()
    if start == end:
        return False
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end  # the window wraps midnight (20:00-09:00)


def out_of_quiet_hours(moment: datetime, tz_name: str, start: time, end: time) -> datetime:
    """`moment`, or the end of the quiet hours it falls in (recipient-local)."""
    if not in_quiet_hours(moment, tz_name, start, end):
        return moment
    day = local_date(moment, tz_name)
    wall = moment.astimezone(zoneinfo.ZoneInfo(tz_name)).time()
    if start > end and wall >= start:
        day += timedelta(days=1)  # evening: the quiet hours end tomorrow morning
    return at_local(day, end, tz_name)


def visit_day_end(visit: Visit, tz_name: str) -> datetime:
    """The first moment after the visit's clinic-local day."""
    return at_local(local_date(visit.starts_at, tz_name) + timedelta(days=1), time(0), tz_name)


def refilled_since(visit: Visit, facts: PumpFacts) -> bool:
    """Whether the last refill is the visit kept (pumps.domain.refill_keeps_visit)."""
    return facts.last_fill_at is not None and refill_keeps_visit(visit.booked_at, visit.starts_at, facts.last_fill_at)


def upcoming_visit(facts: PumpFacts, policy: Policy, now: datetime) -> Visit | None:
    """The booked visit reminders name: booked, and its clinic-local day not yet over."""
    return next(
        (v for v in facts.visits if not v.missed and now < visit_day_end(v, policy.time_zone)),
        None,
    )


def missed_visits(facts: PumpFacts, policy: Policy, now: datetime) -> list[Visit]:
    """Visits whose clinic-local day ended with no refill since they were booked (issue 5)."""
    return [v for v in facts.visits if now >= visit_day_end(v, policy.time_zone) and not refilled_since(v, facts)]


def add_months(on: date, months: int) -> date:
    month0 = on.month - 1 + months
    year, month = on.year + month0 // 12, month0 % 12 + 1
    for day in (on.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the plan


def plan(facts: PumpFacts, policy: Policy, contacts: list[Contact], now: datetime) -> Plan:
    """Every message and escalation that should exist for this pump at `now`.

    Messages whose moment has passed are still listed when they are the latest of their
    series (a catch-up after downtime), never older ones: a reminder two stages stale
    would only confuse. The reconciler never touches what was already sent.
    """
    result = Plan()
    if not facts.active:
        return result  # explanted or replaced: every unsent message becomes obsolete
    patient = next((c for c in contacts if c.is_patient), None)
    _refill_messages(result, facts, policy, contacts, now)
    _safety_messages(result, facts, policy, contacts, now)
    _escalations(result, facts, policy, patient, now)
    return result


def _add(
    result: Plan,
    facts: PumpFacts,
    policy: Policy,
    contacts: list[Contact],
    kind: Kind,
    cycle: str,
    stage: str,
    moment: datetime | None,
    now: datetime,
    *,
    to_caregivers: bool = False,
    extra: dict[str, Any] | None = None,
    at: time | None = None,
    on: date | None = None,
    critical: bool = False,
) -> None:
    """Plan one message for each contact and channel.

    Either `moment` (an instant) or `on` + `at` (a recipient-local wall time) is given.
    """
    critical = critical or kind in CRITICAL_KINDS
    for contact in contacts:
        if not contact.is_patient and not (contact.receives_safety and (kind in SAFETY_KINDS or to_caregivers)):
            continue
        due = moment if moment is not None else at_local(on, at, contact.time_zone)  # type: ignore[arg-type]
        if not critical:
            # Quiet hours are the recipient's (DESIGN.md "Messages").
            quiet = (contact.time_zone, policy.quiet_hours_start, policy.quiet_hours_end)
            due = out_of_quiet_hours(due, *quiet)
            if due < now and in_quiet_hours(now, *quiet):
                # A moment already past (a catch-up) would go out at once: not in their night.
                due = out_of_quiet_hours(now, *quiet)
        for channel, address, blocked in contact.channels():
            result.messages.append(
                PlannedMessage(
                    recipient_key=contact.key,
                    channel=channel,
                    kind=kind,
                    subject=facts.subject,
                    cycle=cycle,
                    stage=stage,
                    due_at=due,
                    critical=critical,
                    address=address,
                    language=contact.language,
                    time_zone=contact.time_zone,
                    is_patient=contact.is_patient,
                    caregiver_id=contact.caregiver_id,
                    suppressed=blocked,
                    context={**facts.context, **(extra or {})},
                )
            )


def reminder_stages(policy: Policy, high_risk: bool) -> list[int]:
    days = set(policy.reminder_days)
    if high_risk and policy.high_risk_extra_reminder_days:
        days.add(policy.high_risk_extra_reminder_days)  # R12: earlier for high-risk patients
    return sorted(days, reverse=True)


def _refill_messages(result: Plan, facts: PumpFacts, policy: Policy, contacts: list[Contact], now: datetime) -> None:
    if facts.refill_by is None:
        return
    cycle = f"refill_by:{facts.refill_by.isoformat()}"
    extra = {"refill_by": facts.refill_by.isoformat(), "alarm_on": facts.alarm_on.isoformat() if facts.alarm_on else ""}
    visit = upcoming_visit(facts, policy, now)
    if visit is not None:
        # Only the refill messages name the visit: the same identities, their text updated
        # in place when it is booked, moved or cancelled (the rows' context is refreshed).
        extra |= {"appointment_at": visit.starts_at.isoformat(), "appointment_location": visit.location}
    today = local_date(now, policy.time_zone)
    if today <= facts.refill_by:
        stages = reminder_stages(policy, facts.high_risk)
        for contact in contacts:
            # The latest stage already passed (a catch-up) and every stage still to come,
            # judged at the moments this recipient gets them (their zone, not the clinic's).
            moments = {n: at_local(facts.refill_by - timedelta(days=n), policy.reminder_time, contact.time_zone) for n in stages}
            past = [n for n in stages if moments[n] <= now]
            keep = [n for n in stages if moments[n] > now] + past[-1:]
            for n in keep:
                _add(
                    result,
                    facts,
                    policy,
                    [contact],
                    Kind.REFILL_REMINDER,
                    cycle,
                    f"d{n}",
                    None,
                    now,
                    on=facts.refill_by - timedelta(days=n),
                    at=policy.reminder_time,
                    to_caregivers=facts.high_risk,  # R12: caregivers of high-risk patients
                    extra={**extra, "days_left": n},
                    # The day's reminder is the last before the pump may run low: the SMS
                    # cap must not push it past refill-by, where it would be dropped.
                    critical=n == 0,
                )
    else:
        # Overdue: one message a day while no refill is recorded (today's only).
        _add(
            result,
            facts,
            policy,
            contacts,
            Kind.OVERDUE,
            cycle,
            f"overdue:{today.isoformat()}",
            None,
            now,
            on=today,
            at=policy.reminder_time,
            extra={**extra, "days_overdue": (today - facts.refill_by).days},
        )


def _safety_messages(result: Plan, facts: PumpFacts, policy: Policy, contacts: list[Contact], now: datetime) -> None:
    recent = now - CATCH_UP
    implant = facts.implanted_at
    if implant >= recent:
        for kind in (Kind.WITHDRAWAL_WARNING, Kind.HEAT_WARNING, Kind.ALCOHOL_WARNING, Kind.MRI_WARNING):
            _add(result, facts, policy, contacts, kind, "implant", "", implant, now)
    # §6.1 #75-#81: withdrawal signs and "never miss a refill" after each refill.
    fill_at = facts.last_fill_at
    # The initial fill belongs to the implant's warnings.
    initial = facts.last_fill_initial or (fill_at is not None and fill_at <= implant + timedelta(hours=12))
    if fill_at is not None and facts.last_fill_id is not None and fill_at >= recent and not initial:
        _add(result, facts, policy, contacts, Kind.WITHDRAWAL_WARNING, f"refill:{facts.last_fill_id}", "", fill_at, now)
    # §7.2 #89: heat, at the start of the clinic's heat season each year.
    for year in (local_date(now, policy.time_zone).year, local_date(now, policy.time_zone).year + 1):
        season = date(year, policy.heat_season_month, policy.heat_season_day)
        start = at_local(season, policy.reminder_time, policy.time_zone)
        if start >= recent and start > implant:
            _add(
                result,
                facts,
                policy,
                contacts,
                Kind.HEAT_WARNING,
                f"heat:{year}",
                "",
                None,
                now,
                on=season,
                at=policy.reminder_time,
            )
            break
    # §7.3 #90: alcohol, every N months after implant (0 would never leave the loop).
    implant_day = local_date(implant, policy.time_zone)
    k = 1
    while policy.alcohol_reminder_months > 0:
        on = add_months(implant_day, k * policy.alcohol_reminder_months)
        if at_local(on, policy.reminder_time, policy.time_zone) >= recent:
            _add(
                result,
                facts,
                policy,
                contacts,
                Kind.ALCOHOL_WARNING,
                f"alcohol:{k}",
                "",
                None,
                now,
                on=on,
                at=policy.reminder_time,
            )
            break
        k += 1
    # §7.4 #91-#95: MRI rules for this model, whenever an MRI is planned.
    for scan in facts.scans:
        if scan.planned and scan.at >= recent:
            _add(
                result,
                facts,
                policy,
                contacts,
                Kind.MRI_WARNING,
                f"mri:{scan.event_id}",
                "",
                scan.recorded_at,
                now,
                extra={"scan_at": scan.at.isoformat()},
            )


def _escalations(result: Plan, facts: PumpFacts, policy: Policy, patient: Contact | None, now: datetime) -> None:
    tz = policy.time_zone
    add = result.escalations.append
    if facts.refill_by is not None:
        cycle = f"refill_by:{facts.refill_by.isoformat()}"
        # The first morning after refill-by (DESIGN.md "Messages").
        add(
            PlannedEscalation(
                Reason.OVERDUE,
                False,
                facts.subject,
                cycle,
                at_local(facts.refill_by + timedelta(days=1), policy.escalation_time, tz),
                f"No refill recorded by {facts.refill_by.isoformat()}.",
            )
        )
        if patient is None or not patient.usable:
            # An unusable contact silences messages, never the safety net: raised at once.
            add(
                PlannedEscalation(
                    Reason.NO_USABLE_CONTACT,
                    False,
                    facts.subject,
                    cycle,
                    now,
                    "The patient cannot be reached by email or SMS (no address, opted out or failing): "
                    f"remind them of the refill due by {facts.refill_by.isoformat()} another way.",
                )
            )
    if facts.alarm_on is not None:
        # Critical, from the first minute of the alarm date, at any hour (§6.1 #80).
        add(
            PlannedEscalation(
                Reason.ALARM_DATE_REACHED,
                True,
                facts.subject,
                f"alarm_on:{facts.alarm_on.isoformat()}",
                at_local(facts.alarm_on, time(0, 0), tz),
                f"The reservoir reaches its low-reservoir alarm volume on {facts.alarm_on.isoformat()}: "
                "refill now to prevent withdrawal.",
            )
        )
    for scan in facts.scans:
        cycle = f"mri:{scan.event_id}"
        if not scan.checked:
            # §7.4 #92: every MRI needs a post-MRI interrogation record.
            add(
                PlannedEscalation(
                    Reason.POST_MRI_CHECK_MISSING,
                    True,
                    facts.subject,
                    cycle,
                    scan.at + timedelta(hours=policy.post_mri_check_hours),
                    f"MRI at {scan.at.isoformat()} has no post-MRI pump check recorded: "
                    "interrogate the pump to confirm it restarted.",
                )
            )
        if scan.planned and scan.at > now:
            if facts.mri_rule == "empty_before":
                # §7.4 #94: Prometra: failure to empty the pump before MRI could cause an overdose.
                add(
                    PlannedEscalation(
                        Reason.MRI_EMPTY_RESERVOIR,
                        False,
                        facts.subject,
                        cycle,
                        scan.recorded_at,
                        f"MRI planned for {scan.at.isoformat()}: empty the reservoir before the scan "
                        "and plan the refill after it.",
                    )
                )
            elif facts.mri_rule == "unsafe":
                add(
                    PlannedEscalation(
                        Reason.MRI_UNSAFE,
                        True,
                        facts.subject,
                        cycle,
                        scan.recorded_at,
                        f"MRI planned for {scan.at.isoformat()} but this pump model is MR Unsafe (§7.4 #96).",
                    )
                )
    if facts.end_of_service_on is not None:
        # R9: plan the replacement about six months before the expected shutdown.
        on = add_months(facts.end_of_service_on, -policy.battery_planning_months)
        add(
            PlannedEscalation(
                Reason.BATTERY_PLANNING,
                False,
                facts.subject,
                f"eos:{facts.end_of_service_on.isoformat()}",
                at_local(on, policy.escalation_time, tz),
                f"Estimated end of service {facts.end_of_service_on.isoformat()}: plan the pump replacement.",
            )
        )
    for visit in missed_visits(facts, policy, now):
        # Once per visit (its own cycle); closes by itself when a refill is recorded.
        add(
            PlannedEscalation(
                Reason.APPOINTMENT_MISSED,
                False,
                facts.subject,
                f"appointment:{visit.appointment_id}",
                visit_day_end(visit, tz),
                f"The refill visit booked for {visit.starts_at.astimezone(zoneinfo.ZoneInfo(tz)):%Y-%m-%d %H:%M}"
                + (f" ({visit.location})" if visit.location else "")
                + " was missed: no refill recorded that day. Call the patient and book a new visit"
                + (f" (refill due by {facts.refill_by.isoformat()})." if facts.refill_by else "."),
            )
        )
    for event_id, at in facts.replacement_indicators:
        # R9: SynchroMed II stops 90 days after ERI: schedule the replacement now.
        add(
            PlannedEscalation(
                Reason.REPLACEMENT_INDICATOR,
                True,
                facts.subject,
                f"eri:{event_id}",
                at,
                f"Replacement indicator recorded {at.isoformat()}: replace the pump within 90 days.",
            )
        )
