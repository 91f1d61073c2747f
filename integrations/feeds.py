"""The iCalendar of a feed, built from plain values (no database, no clock).

What a subscribing client sees, and why the UIDs are made as they are:

- Each pump has one refill-by event (and a low-reservoir alarm event when the pump has an
  alarm date) per fill cycle: UID `refill-by-pump-<pump>-fill-<last refill or 0>@<domain>`.
- A dose change (or a phase, policy or alarm-volume change) moves the date within the
  cycle: same UID, higher SEQUENCE, newer DTSTAMP/LAST-MODIFIED, so the client moves its
  copy instead of adding a second one.
- A refill starts a new cycle: the old UID leaves the feed (the client deletes it, so a
  done refill no longer shows as due or overdue) and a new UID appears with the new date.
- An explant or replacement: the pump's events leave the feed and the client deletes them.
- An overdue refill (refill-by passed, no refill recorded since) stays in the feed and its
  all-day span is stretched to today, so it shows on today's page until a refill is recorded.

Staff events name the patient by initials and the pumptrack pump number only: the feed URL
is a bearer capability that lands in phones and shared calendars, where a name or an MRN (a
direct identifier) would leak; the number resolves to the patient only behind the staff
sign-in, through the link in the description. Patient events carry no drug name or dose,
like the SMS texts (notifications/content.py), since a calendar shows titles on lock screens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import icalendar
from icalendar.enums import TRANSP

from notifications.content import format_date

PRODID = "-//pumptrack//Calendar feeds//EN"
# How often clients should poll. An hour keeps a moved date fresh within the working day;
# many clients poll less often whatever we say, which is why the feed supplements reminders.
REFRESH_INTERVAL = timedelta(hours=1)
# A patient's alert at 09:00 the day before an all-day event (its start is local midnight).
PATIENT_ALERT_BEFORE = timedelta(hours=15)

REFILL, ALARM = "refill-by", "alarm"


@dataclass(frozen=True)
class PumpDates:
    """One active pump's stored dates, as a feed needs them."""

    pump_id: int
    fill_id: int  # the last recorded refill; 0 when none is recorded (contents unknown)
    refill_by: date
    alarm_on: date | None
    given_name: str
    family_name: str
    staff_url: str  # the pump's page in pumptrack, behind the staff sign-in


@dataclass(frozen=True)
class ClinicInfo:
    name: str
    phone: str  # "" when the clinic has none
    time_zone: str


@dataclass(frozen=True)
class Draft:
    """An event's content, before the version (SEQUENCE, stamps) is attached."""

    uid: str
    pump_id: int
    start: date
    end: date  # exclusive (RFC 5545 all-day DTEND)
    summary: str
    description: str
    url: str = ""
    alert: str = ""  # text of a display alarm the day before; "" for none

    @property
    def fingerprint(self) -> str:
        """Everything a client shows: any change of it needs a higher SEQUENCE."""
        parts = [self.uid, self.start.isoformat(), self.end.isoformat(), self.summary, self.description, self.url, self.alert]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Version:
    sequence: int
    modified_at: datetime


def event_uid(kind: str, pump_id: int, fill_id: int, domain: str, *, patient: bool = False) -> str:
    """Stable within a fill cycle. The patient's copy has its own UID: it is worded
    differently, and a person who subscribes to both must not see one overwrite the other."""
    audience = "-patient" if patient else ""
    return f"{kind}-pump-{pump_id}-fill-{fill_id}{audience}@{domain}"


def initials(given_name: str, family_name: str) -> str:
    return "".join(f"{name.strip()[:1].upper()}." for name in (given_name, family_name) if name.strip())


def refill_span(refill_by: date, today: date) -> tuple[date, date, bool]:
    """All-day start, exclusive end, and whether it is overdue.

    An overdue refill runs from its refill-by date through today: a calendar shows the past
    date to nobody, and an overdue refill is the one that matters most.
    """
    overdue = refill_by < today
    return refill_by, max(refill_by, today) + timedelta(days=1), overdue


# ----------------------------------------------------------------------------- staff feed


def staff_events(pumps: Iterable[PumpDates], *, clinic: ClinicInfo, today: date, domain: str) -> list[Draft]:
    drafts: list[Draft] = []
    for p in pumps:
        who = f"{initials(p.given_name, p.family_name)} (pump {p.pump_id})"
        due_text = format_date(p.refill_by, "en")
        footer = [f"Open in pumptrack (staff sign-in): {p.staff_url}"]
        if clinic.phone:
            footer.append(f"Clinic phone: {clinic.phone}")
        start, end, overdue = refill_span(p.refill_by, today)
        lines = (
            [f"OVERDUE: the refill was due by {due_text} and no refill is recorded since."]
            if overdue
            else [f"Refill by {due_text}."]
        )
        lines.append(
            f"Low-reservoir alarm date: {format_date(p.alarm_on, 'en')}."
            if p.alarm_on
            else "No alarm date: record the pump's program and fill."
        )
        drafts.append(
            Draft(
                uid=event_uid(REFILL, p.pump_id, p.fill_id, domain),
                pump_id=p.pump_id,
                start=start,
                end=end,
                summary=f"{'OVERDUE ITB refill' if overdue else 'ITB refill due'}: {who}",
                description="\n".join(lines + footer),
                url=p.staff_url,
            )
        )
        if p.alarm_on is not None:
            drafts.append(
                Draft(
                    uid=event_uid(ALARM, p.pump_id, p.fill_id, domain),
                    pump_id=p.pump_id,
                    start=p.alarm_on,
                    end=p.alarm_on + timedelta(days=1),
                    summary=f"ITB low-reservoir alarm: {who}",
                    description="\n".join(
                        [
                            f"The pump's low-reservoir alarm sounds from this day unless it is refilled (refill by {due_text}).",
                            *footer,
                        ]
                    ),
                    url=p.staff_url,
                )
            )
    return drafts


# ----------------------------------------------------------------------------- patient feed


@dataclass(frozen=True)
class _PatientWords:
    refill_due: str
    refill_overdue: str
    alarm: str
    due_line: str  # {date}, {call}
    overdue_line: str
    alarm_line: str
    call: str  # {clinic}, {phone}
    call_no_phone: str
    withdrawal: str
    supplement: str
    calendar_name: str
    calendar_description: str


# The withdrawal one-liner follows the SMS warning in notifications/content.py (clinical.md §6).
WORDS = {
    "en": _PatientWords(
        refill_due="Pump refill due",
        refill_overdue="Pump refill overdue: call the clinic today",
        alarm="Pump alarm date if not refilled",
        due_line="Your pump needs refilling by {date}. If you have no appointment booked, please {call}.",
        overdue_line="Your pump was due for a refill by {date} and no refill is recorded. Please {call} today.",
        alarm_line="If your pump has not been refilled by this day, its low-reservoir alarm will sound: {call} at once.",
        call="call {clinic} on {phone}",
        call_no_phone="call {clinic}",
        withdrawal="If your stiffness or spasms come back, or you have itching, fever or confusion, or the pump alarm "
        "sounds, go to a hospital at once: stopping the drug suddenly can be life-threatening.",
        supplement="This calendar adds to your clinic's reminders; it does not replace them.",
        calendar_name="{clinic}: pump refills",
        calendar_description="Your pump's refill dates from {clinic}. Calendar apps may ignore alerts in subscribed "
        "calendars: this calendar adds to the clinic's reminders, it does not replace them. Keep this address "
        "private: anyone who has it can read these dates.",
    ),
    "es": _PatientWords(
        refill_due="Recarga de la bomba",
        refill_overdue="Recarga de la bomba atrasada: llame hoy a la clínica",
        alarm="Alarma de la bomba si no se ha recargado",
        due_line="Su bomba necesita recargarse antes del {date}. Si no tiene cita, {call}.",
        overdue_line="Su bomba debía recargarse antes del {date} y no consta ninguna recarga. Hoy mismo, {call}.",
        alarm_line="Si su bomba no se ha recargado antes de este día, sonará su alarma de depósito bajo: {call} de inmediato.",
        call="llame a {clinic} al {phone}",
        call_no_phone="llame a {clinic}",
        withdrawal="Si vuelven la rigidez o los espasmos, o tiene picor, fiebre o confusión, o suena la alarma de la "
        "bomba, vaya al hospital de inmediato: suspender el medicamento de golpe puede poner en peligro la vida.",
        supplement="Este calendario se suma a los recordatorios de su clínica; no los sustituye.",
        calendar_name="{clinic}: recargas de la bomba",
        calendar_description="Las fechas de recarga de su bomba, de {clinic}. Las aplicaciones de calendario pueden "
        "ignorar los avisos de los calendarios suscritos: este calendario se suma a los recordatorios de la clínica, "
        "no los sustituye. No comparta esta dirección: quien la tenga puede leer estas fechas.",
    ),
}


def patient_words(language: str) -> _PatientWords:
    return WORDS.get(language, WORDS["en"])


def patient_events(pumps: Iterable[PumpDates], *, clinic: ClinicInfo, language: str, today: date, domain: str) -> list[Draft]:
    words = patient_words(language)
    lang = language if language in WORDS else "en"
    call = (words.call if clinic.phone else words.call_no_phone).format(clinic=clinic.name, phone=clinic.phone)
    drafts: list[Draft] = []
    for p in pumps:
        start, end, overdue = refill_span(p.refill_by, today)
        line = (words.overdue_line if overdue else words.due_line).format(date=format_date(p.refill_by, lang), call=call)
        summary = words.refill_overdue if overdue else words.refill_due
        drafts.append(
            Draft(
                uid=event_uid(REFILL, p.pump_id, p.fill_id, domain, patient=True),
                pump_id=p.pump_id,
                start=start,
                end=end,
                summary=summary,
                description="\n\n".join([line, words.withdrawal, words.supplement]),
                alert=summary,
            )
        )
        if p.alarm_on is not None:
            drafts.append(
                Draft(
                    uid=event_uid(ALARM, p.pump_id, p.fill_id, domain, patient=True),
                    pump_id=p.pump_id,
                    start=p.alarm_on,
                    end=p.alarm_on + timedelta(days=1),
                    summary=words.alarm,
                    description="\n\n".join([words.alarm_line.format(call=call), words.withdrawal, words.supplement]),
                )
            )
    return drafts


# ----------------------------------------------------------------------------- the calendar


@dataclass(frozen=True)
class CalendarInfo:
    uid: str
    name: str
    description: str
    time_zone: str  # the clinic's: every date in the feed is a clinic-local date


def staff_calendar_info(*, uid: str, clinic: ClinicInfo) -> CalendarInfo:
    return CalendarInfo(
        uid=uid,
        name=f"{clinic.name}: ITB refills",
        description=(
            f"Refill-by and low-reservoir alarm dates of {clinic.name}'s active ITB pumps; an overdue refill stays on "
            "today until a refill is recorded. Calendar apps may ignore alerts in subscribed calendars: this feed "
            "supplements pumptrack's reminders and escalations, it does not replace them. Keep this address private: "
            "anyone who has it can read the calendar."
        ),
        time_zone=clinic.time_zone,
    )


def patient_calendar_info(*, uid: str, clinic: ClinicInfo, language: str) -> CalendarInfo:
    words = patient_words(language)
    return CalendarInfo(
        uid=uid,
        name=words.calendar_name.format(clinic=clinic.name),
        description=words.calendar_description.format(clinic=clinic.name),
        time_zone=clinic.time_zone,
    )


TZ_FIRST, TZ_LAST = date(2024, 1, 1), date(2040, 1, 1)


def build_calendar(info: CalendarInfo, drafts: Sequence[Draft], versions: Mapping[str, Version]) -> bytes:
    """The feed's bytes: the same values always give the same bytes (so the ETag holds)."""
    ordered = sorted(drafts, key=lambda d: (d.start, d.uid))
    cal = icalendar.Calendar.new(
        prodid=PRODID,
        uid=info.uid,  # without it the library invents a random one on every render
        name=info.name,
        description=info.description,
        # No calendar-level LAST-MODIFIED: when events leave the feed (a refill, an
        # explant) no remaining stamp moves, so it would claim nothing changed.
    )
    # The library writes these names raw: TEXT values must escape "," and ";" (RFC 5545
    # §3.3.11), or "St Mary, Leeds; Neuro" reaches a client as three values.
    for name in ("NAME", "X-WR-CALNAME"):
        if name in cal:
            cal[name] = icalendar.vText(info.name)
    if "X-WR-CALDESC" in cal:
        cal["X-WR-CALDESC"] = icalendar.vText(info.description)
    # RFC 7986 REFRESH-INTERVAL needs VALUE=DURATION; X-PUBLISHED-TTL is what Outlook and
    # older clients read. Dates are all-day (floating); the zone is named for clients that
    # display it, and its VTIMEZONE keeps a feed with no dates a valid calendar (RFC 5545
    # §3.6: at least one component). Fixed bounds keep the bytes, and so the ETag, stable.
    cal.add("refresh-interval", REFRESH_INTERVAL, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", icalendar.vDuration(REFRESH_INTERVAL))
    cal.add("x-wr-timezone", info.time_zone)
    cal.add("calscale", "GREGORIAN")
    cal.add_component(icalendar.Timezone.from_tzid(info.time_zone, first_date=TZ_FIRST, last_date=TZ_LAST))
    for draft in ordered:
        version = versions[draft.uid]
        event = icalendar.Event.new(
            uid=draft.uid,
            start=draft.start,
            end=draft.end,
            stamp=version.modified_at,
            last_modified=version.modified_at,
            sequence=version.sequence,
            summary=draft.summary,
            description=draft.description,
            url=draft.url or None,
            transparency=TRANSP.TRANSPARENT,  # a due date does not make anyone busy
        )
        # A shared or delegated calendar shows only "busy/private" to those not invited.
        event.add("class", "PRIVATE")
        if draft.alert:
            alarm = icalendar.Alarm()
            alarm.add("action", "DISPLAY")
            alarm.add("description", draft.alert)
            alarm.add("trigger", -PATIENT_ALERT_BEFORE)
            event.add_component(alarm)
        cal.add_component(event)
    return bytes(cal.to_ical())
