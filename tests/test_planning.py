"""The reminder policy as a pure function: `notifications.planning.plan` on values, no database.

Sources: DESIGN.md "Messages", clinical.md §6-§7 and R9-R12. Every moment is explicit;
clinics are in Europe/London unless a row says otherwise. Refill-by 2027-02-03 is the
worked example's date (tests/factories.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifications.planning import (
    Contact,
    Kind,
    Plan,
    PlannedEscalation,
    PlannedMessage,
    Policy,
    PumpFacts,
    Reason,
    Scan,
    add_months,
    at_local,
    out_of_quiet_hours,
    plan,
    reminder_stages,
)

LONDON = "Europe/London"
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"
POLICY = Policy(time_zone=LONDON)
REFILL_BY = date(2027, 2, 3)
ALARM_ON = date(2027, 2, 6)
# Long before every date below: no implant warnings unless a test implants "now".
LONG_AGO = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def local(tz: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz))  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def facts(**changes: Any) -> PumpFacts:
    base = PumpFacts(pump_id=1, active=True, implanted_at=LONG_AGO, refill_by=REFILL_BY, alarm_on=ALARM_ON)
    return replace(base, **changes)


def patient(**changes: Any) -> Contact:
    base = Contact(
        key="patient:1", is_patient=True, email="alex@example.org", phone="+442071234567", language="en", time_zone=LONDON
    )
    return replace(base, **changes)


def caregiver(**changes: Any) -> Contact:
    base = Contact(
        key="caregiver:5",
        is_patient=False,
        email="sam@example.org",
        phone="+442071234568",
        time_zone=LONDON,
        receives_safety=True,
        caregiver_id=5,
    )
    return replace(base, **changes)


def messages(result: Plan, kind: Kind, *, key: str | None = None, channel: str | None = None) -> list[PlannedMessage]:
    return [
        m
        for m in result.messages
        if m.kind == kind and (key is None or m.recipient_key == key) and (channel is None or m.channel == channel)
    ]


def stages(result: Plan, kind: Kind = Kind.REFILL_REMINDER, key: str = "patient:1") -> list[str]:
    """The stages planned for one recipient by email, earliest first (d14 before d7)."""
    found = [m.stage for m in messages(result, kind, key=key, channel="email")]
    return sorted(found, key=lambda stage: -int(stage[1:]) if stage[1:].isdigit() else 0)


def stage_messages(result: Plan, stage: str, channel: str) -> list[PlannedMessage]:
    return [m for m in messages(result, Kind.REFILL_REMINDER, key="patient:1", channel=channel) if m.stage == stage]


def escalation(result: Plan, reason: Reason) -> PlannedEscalation | None:
    found = [e for e in result.escalations if e.reason == reason]
    assert len(found) <= 1
    return found[0] if found else None


# --------------------------------------------------------------------------- refill reminders


@pytest.mark.parametrize(
    ("stage", "tz", "expected_utc"),
    [
        # 10:00 in the recipient's zone: New York is UTC-5 in winter, London UTC+0.
        ("d14", NEW_YORK, utc(2027, 1, 20, 15, 0)),
        ("d7", NEW_YORK, utc(2027, 1, 27, 15, 0)),
        ("d2", NEW_YORK, utc(2027, 2, 1, 15, 0)),
        ("d0", NEW_YORK, utc(2027, 2, 3, 15, 0)),
        ("d14", LONDON, utc(2027, 1, 20, 10, 0)),
        ("d0", LONDON, utc(2027, 2, 3, 10, 0)),
        ("d0", TOKYO, utc(2027, 2, 3, 1, 0)),
    ],
)
def test_reminders_go_at_the_clinics_reminder_time_in_the_recipients_zone(stage: str, tz: str, expected_utc: datetime) -> None:
    result = plan(facts(), POLICY, [patient(time_zone=tz)], utc(2027, 1, 1, 12, 0))

    [message] = [m for m in messages(result, Kind.REFILL_REMINDER, channel="email") if m.stage == stage]
    assert message.due_at == expected_utc
    assert message.cycle == "refill_by:2027-02-03"
    assert message.context["days_left"] == int(stage[1:])
    # Only the day's reminder is critical: the SMS cap or quiet hours must not push it past refill-by.
    assert message.critical is (stage == "d0")


def test_it_plans_each_reminder_on_every_channel_the_patient_has() -> None:
    result = plan(facts(), POLICY, [patient()], utc(2027, 1, 1, 12, 0))

    assert sorted((m.channel, m.stage) for m in messages(result, Kind.REFILL_REMINDER)) == sorted(
        (channel, stage) for channel in ("email", "sms") for stage in ("d14", "d7", "d2", "d0")
    )


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2027, 1, 1, 12, 0), ["d14", "d7", "d2", "d0"]),
        (utc(2027, 1, 20, 9, 59), ["d14", "d7", "d2", "d0"]),
        # d14's moment passed: it stays as the latest past stage (a catch-up after downtime).
        (utc(2027, 1, 20, 10, 0), ["d14", "d7", "d2", "d0"]),
        (utc(2027, 1, 26, 12, 0), ["d14", "d7", "d2", "d0"]),
        # d7 passed too: d14 is two stages stale and dropped.
        (utc(2027, 1, 28, 12, 0), ["d7", "d2", "d0"]),
        (utc(2027, 2, 3, 9, 0), ["d2", "d0"]),
        (utc(2027, 2, 3, 11, 0), ["d0"]),
        (utc(2027, 2, 3, 23, 59), ["d0"]),
        # Refill-by has passed (clinic-local): no reminder, the overdue messages take over.
        (utc(2027, 2, 4, 0, 0), []),
        (utc(2027, 3, 1, 12, 0), []),
    ],
)
def test_it_keeps_future_stages_and_only_the_latest_past_one(now: datetime, expected: list[str]) -> None:
    assert stages(plan(facts(), POLICY, [patient()], now)) == expected


def test_it_judges_past_stages_at_the_recipients_own_moments() -> None:
    """A Tokyo patient's d7 (10:00 JST = 01:00 UTC) has passed while the clinic's has not:
    d14 is then two stages stale for that patient and must not be sent as well."""
    now = utc(2027, 1, 27, 3, 0)
    assert stages(plan(facts(), POLICY, [patient(time_zone=TOKYO)], now)) == ["d7", "d2", "d0"]
    assert stages(plan(facts(), POLICY, [patient(time_zone=LONDON)], now)) == ["d14", "d7", "d2", "d0"]


@pytest.mark.parametrize(
    ("reminder_days", "extra", "high_risk", "expected"),
    [
        ((14, 7, 2, 0), 21, False, [14, 7, 2, 0]),
        ((14, 7, 2, 0), 21, True, [21, 14, 7, 2, 0]),
        ((14, 7, 2, 0), 0, True, [14, 7, 2, 0]),
        ((0, 7, 14, 3), 21, False, [14, 7, 3, 0]),
        ((14, 7, 2, 0), 14, True, [14, 7, 2, 0]),
    ],
)
def test_reminder_stages(reminder_days: tuple[int, ...], extra: int, high_risk: bool, expected: list[int]) -> None:
    policy = Policy(reminder_days=reminder_days, high_risk_extra_reminder_days=extra)
    assert reminder_stages(policy, high_risk) == expected


def test_high_risk_patients_get_an_earlier_reminder() -> None:
    now = utc(2027, 1, 1, 12, 0)
    assert stages(plan(facts(high_risk=True), POLICY, [patient()], now)) == ["d21", "d14", "d7", "d2", "d0"]
    assert stages(plan(facts(high_risk=False), POLICY, [patient()], now)) == ["d14", "d7", "d2", "d0"]


@pytest.mark.parametrize(
    ("high_risk", "receives_safety", "expected"),
    [
        (False, True, []),
        (True, True, ["d21", "d14", "d7", "d2", "d0"]),
        (True, False, []),
    ],
)
def test_caregivers_get_reminders_only_for_high_risk_patients(
    high_risk: bool, receives_safety: bool, expected: list[str]
) -> None:
    result = plan(facts(high_risk=high_risk), POLICY, [patient(), caregiver(receives_safety=receives_safety)], utc(2027, 1, 1))

    assert stages(result, key="caregiver:5") == expected


# --------------------------------------------------------------------------- overdue


def test_an_overdue_pump_gets_one_critical_patient_message_for_the_local_day() -> None:
    result = plan(facts(), POLICY, [patient()], utc(2027, 2, 5, 8, 0))

    overdue = messages(result, Kind.OVERDUE)
    assert sorted(m.channel for m in overdue) == ["email", "sms"]
    for m in overdue:
        assert m.stage == "overdue:2027-02-05"
        assert m.cycle == "refill_by:2027-02-03"
        assert m.critical
        assert m.due_at == utc(2027, 2, 5, 10, 0)
        assert m.context["days_overdue"] == 2
    assert messages(result, Kind.REFILL_REMINDER) == []


@pytest.mark.parametrize(
    ("now", "stage"),
    [
        (local(LONDON, 2027, 2, 4, 0, 1), "overdue:2027-02-04"),
        (local(LONDON, 2027, 2, 4, 23, 59), "overdue:2027-02-04"),
        (local(LONDON, 2027, 2, 5, 0, 1), "overdue:2027-02-05"),
        # A clinic in New York: still 4 February there at 03:00 UTC on the 5th.
    ],
)
def test_the_overdue_message_has_one_identity_per_local_day(now: datetime, stage: str) -> None:
    assert stages(plan(facts(), POLICY, [patient()], now), Kind.OVERDUE) == [stage]


def test_the_overdue_day_is_the_clinics_local_day() -> None:
    result = plan(facts(), Policy(time_zone=NEW_YORK), [patient(time_zone=NEW_YORK)], utc(2027, 2, 5, 3, 0))
    assert stages(result, Kind.OVERDUE) == ["overdue:2027-02-04"]


def test_caregivers_flagged_for_safety_get_the_overdue_message() -> None:
    contacts = [patient(), caregiver(), caregiver(key="caregiver:6", caregiver_id=6, receives_safety=False)]
    result = plan(facts(), POLICY, contacts, utc(2027, 2, 5, 8, 0))

    assert {m.recipient_key for m in messages(result, Kind.OVERDUE)} == {"patient:1", "caregiver:5"}


@pytest.mark.parametrize(
    ("clinic_tz", "expected_utc"),
    [
        (LONDON, utc(2027, 2, 4, 9, 0)),
        (NEW_YORK, utc(2027, 2, 4, 14, 0)),
    ],
)
def test_the_overdue_escalation_is_due_the_first_morning_after_refill_by_in_the_clinics_zone(
    clinic_tz: str, expected_utc: datetime
) -> None:
    # The patient's zone does not matter: the morning is the clinic's.
    result = plan(facts(), Policy(time_zone=clinic_tz), [patient(time_zone=TOKYO)], utc(2027, 1, 1))

    esc = escalation(result, Reason.OVERDUE)
    assert esc is not None
    assert esc.due_at == expected_utc
    assert esc.cycle == "refill_by:2027-02-03"
    assert not esc.critical


def test_the_overdue_escalation_follows_the_clinics_escalation_time() -> None:
    result = plan(facts(), Policy(time_zone=LONDON, escalation_time=time(7, 30)), [patient()], utc(2027, 1, 1))

    esc = escalation(result, Reason.OVERDUE)
    assert esc is not None and esc.due_at == utc(2027, 2, 4, 7, 30)


@pytest.mark.parametrize(
    ("clinic_tz", "expected_utc"),
    [
        (LONDON, utc(2027, 2, 6, 0, 0)),
        (NEW_YORK, utc(2027, 2, 6, 5, 0)),
        (TOKYO, utc(2027, 2, 5, 15, 0)),
    ],
)
def test_the_alarm_date_raises_a_critical_escalation_from_its_first_minute(clinic_tz: str, expected_utc: datetime) -> None:
    result = plan(facts(), Policy(time_zone=clinic_tz), [patient()], utc(2027, 1, 1))

    esc = escalation(result, Reason.ALARM_DATE_REACHED)
    assert esc is not None
    assert esc.critical
    assert esc.due_at == expected_utc
    assert esc.cycle == "alarm_on:2027-02-06"


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        (local(LONDON, 2027, 3, 2, 12, 0), local(LONDON, 2027, 3, 2, 12, 0)),
        (local(LONDON, 2027, 3, 2, 9, 0), local(LONDON, 2027, 3, 2, 9, 0)),
        (local(LONDON, 2027, 3, 2, 19, 59), local(LONDON, 2027, 3, 2, 19, 59)),
        (local(LONDON, 2027, 3, 2, 20, 0), local(LONDON, 2027, 3, 3, 9, 0)),
        (local(LONDON, 2027, 3, 2, 23, 30), local(LONDON, 2027, 3, 3, 9, 0)),
        (local(LONDON, 2027, 3, 3, 0, 0), local(LONDON, 2027, 3, 3, 9, 0)),
        (local(LONDON, 2027, 3, 3, 3, 0), local(LONDON, 2027, 3, 3, 9, 0)),
        (local(LONDON, 2027, 3, 3, 8, 59), local(LONDON, 2027, 3, 3, 9, 0)),
        # The evening before the spring-forward night: 09:00 BST the next morning.
        (local(LONDON, 2027, 3, 27, 22, 0), utc(2027, 3, 28, 8, 0)),
    ],
)
def test_out_of_quiet_hours(wall: datetime, expected: datetime) -> None:
    assert out_of_quiet_hours(wall, LONDON, time(20, 0), time(9, 0)) == expected


def test_quiet_hours_that_do_not_wrap_midnight() -> None:
    start, end = time(13, 0), time(14, 0)
    assert out_of_quiet_hours(local(LONDON, 2027, 3, 2, 13, 30), LONDON, start, end) == local(LONDON, 2027, 3, 2, 14, 0)
    assert out_of_quiet_hours(local(LONDON, 2027, 3, 2, 20, 0), LONDON, start, end) == local(LONDON, 2027, 3, 2, 20, 0)


@pytest.mark.parametrize(
    ("fill_at", "expected_due"),
    [
        # 12:00 UTC is 07:00 in New York (quiet) but 12:00 in London (not): the recipient's zone counts.
        (utc(2027, 3, 2, 12, 0), local(NEW_YORK, 2027, 3, 2, 9, 0)),
        # 02:00 UTC is 21:00 the evening before in New York: the next morning there.
        (utc(2027, 3, 3, 2, 0), local(NEW_YORK, 2027, 3, 3, 9, 0)),
        # 17:00 UTC is noon in New York: at once.
        (utc(2027, 3, 2, 17, 0), utc(2027, 3, 2, 17, 0)),
    ],
)
def test_quiet_hours_defer_non_critical_messages_in_the_recipients_zone(fill_at: datetime, expected_due: datetime) -> None:
    result = plan(
        facts(last_fill_id=42, last_fill_at=fill_at, refill_by=None, alarm_on=None),
        POLICY,
        [patient(time_zone=NEW_YORK)],
        fill_at,
    )

    [warning] = messages(result, Kind.WITHDRAWAL_WARNING, channel="sms")
    assert warning.cycle == "refill:42"
    assert warning.due_at == expected_due


def test_critical_messages_are_not_deferred_by_quiet_hours() -> None:
    late = Policy(time_zone=LONDON, reminder_time=time(21, 0))

    [overdue] = messages(plan(facts(), late, [patient()], utc(2027, 2, 5, 8, 0)), Kind.OVERDUE, channel="sms")
    reminders = messages(plan(facts(), late, [patient()], utc(2027, 2, 2, 8, 0)), Kind.REFILL_REMINDER, channel="sms")
    [reminder] = [m for m in reminders if m.stage == "d0"]

    d2 = next(m for m in reminders if m.stage == "d2")

    assert overdue.due_at == local(LONDON, 2027, 2, 5, 21, 0)
    # The day's reminder goes that evening: the morning after would be past refill-by.
    assert reminder.due_at == local(LONDON, 2027, 2, 3, 21, 0)
    assert d2.due_at == local(LONDON, 2027, 2, 2, 9, 0)  # earlier stages still wait for the morning


def test_a_catch_up_planned_during_quiet_hours_waits_for_the_morning() -> None:
    """A reminder whose moment passed unsent (e.g. the pump was recorded at night) must not go
    out the moment it is planned if that is the middle of the recipient's night."""
    night = local(LONDON, 2027, 1, 28, 23, 0)
    day = local(LONDON, 2027, 1, 28, 15, 0)

    [at_night] = stage_messages(plan(facts(), POLICY, [patient()], night), "d7", "sms")
    [by_day] = stage_messages(plan(facts(), POLICY, [patient()], day), "d7", "sms")

    assert at_night.due_at == local(LONDON, 2027, 1, 29, 9, 0)
    assert by_day.due_at == local(LONDON, 2027, 1, 27, 10, 0)  # its own moment: sent at once


# --------------------------------------------------------------------------- DST


@pytest.mark.parametrize(
    ("tz", "day_after", "expected_utc"),
    [
        (LONDON, date(2027, 3, 29), utc(2027, 3, 29, 9, 0)),  # spring forward 28 March: BST
        (LONDON, date(2027, 11, 1), utc(2027, 11, 1, 10, 0)),  # fall back 31 October: GMT
        (NEW_YORK, date(2027, 3, 15), utc(2027, 3, 15, 14, 0)),  # spring forward 14 March: EDT
        (NEW_YORK, date(2027, 11, 8), utc(2027, 11, 8, 15, 0)),  # fall back 7 November: EST
    ],
)
def test_a_reminder_the_day_after_a_dst_change_lands_at_ten_local(tz: str, day_after: date, expected_utc: datetime) -> None:
    result = plan(facts(refill_by=day_after, alarm_on=None), Policy(time_zone=tz), [patient(time_zone=tz)], utc(2027, 1, 1))

    [d0] = [m for m in messages(result, Kind.REFILL_REMINDER, channel="email") if m.stage == "d0"]
    assert d0.due_at == expected_utc
    assert d0.due_at.astimezone(ZoneInfo(tz)).time() == time(10, 0)


@pytest.mark.parametrize(
    ("tz", "on", "wall", "expected_utc"),
    [
        # 01:30 does not exist in London on 28 March 2027: an hour later in real time, never earlier.
        (LONDON, date(2027, 3, 28), time(1, 30), utc(2027, 3, 28, 1, 30)),
        (NEW_YORK, date(2027, 3, 14), time(2, 30), utc(2027, 3, 14, 7, 30)),
        # 01:30 happens twice in London on 31 October 2027: the first one (BST).
        (LONDON, date(2027, 10, 31), time(1, 30), utc(2027, 10, 31, 0, 30)),
    ],
)
def test_at_local_on_dst_change_days(tz: str, on: date, wall: time, expected_utc: datetime) -> None:
    # Compared in UTC: an aware time in a gap or fold never equals one in another zone (PEP 495).
    assert at_local(on, wall, tz).astimezone(UTC) == expected_utc


# --------------------------------------------------------------------------- safety warnings

SAFETY = (Kind.WITHDRAWAL_WARNING, Kind.HEAT_WARNING, Kind.ALCOHOL_WARNING, Kind.MRI_WARNING)


def test_every_safety_warning_goes_out_at_implant() -> None:
    implanted = utc(2027, 1, 4, 11, 0)
    result = plan(facts(implanted_at=implanted, last_fill_id=1, last_fill_at=implanted), POLICY, [patient()], implanted)

    for kind in SAFETY:
        implant = [m for m in messages(result, kind) if m.cycle == "implant"]
        assert sorted(m.channel for m in implant) == ["email", "sms"], kind
        assert all(m.due_at == implanted for m in implant)


def test_a_pump_implanted_long_ago_gets_no_implant_warnings() -> None:
    result = plan(facts(), POLICY, [patient()], utc(2027, 1, 20))
    assert [m for m in result.messages if m.cycle == "implant"] == []


def test_each_refill_gets_a_withdrawal_warning() -> None:
    fill_at = utc(2027, 2, 2, 11, 0)
    result = plan(facts(last_fill_id=42, last_fill_at=fill_at), POLICY, [patient()], fill_at + timedelta(minutes=5))

    warnings = messages(result, Kind.WITHDRAWAL_WARNING)
    assert {(m.cycle, m.channel, m.due_at) for m in warnings} == {("refill:42", "email", fill_at), ("refill:42", "sms", fill_at)}


def test_the_initial_fill_gets_no_withdrawal_warning_of_its_own() -> None:
    implanted = utc(2027, 1, 4, 11, 0)
    result = plan(facts(implanted_at=implanted, last_fill_id=1, last_fill_at=implanted), POLICY, [patient()], implanted)

    assert {m.cycle for m in messages(result, Kind.WITHDRAWAL_WARNING)} == {"implant"}


def test_an_initial_fill_recorded_a_day_after_implant_gets_no_withdrawal_warning_of_its_own() -> None:
    implanted = utc(2027, 1, 4, 11, 0)
    filled = implanted + timedelta(days=1)
    result = plan(
        facts(implanted_at=implanted, last_fill_id=1, last_fill_at=filled, last_fill_initial=True), POLICY, [patient()], filled
    )

    assert {m.cycle for m in messages(result, Kind.WITHDRAWAL_WARNING)} == {"implant"}


def test_an_old_refill_gets_no_late_withdrawal_warning() -> None:
    result = plan(facts(last_fill_id=42, last_fill_at=utc(2027, 1, 1)), POLICY, [patient()], utc(2027, 1, 20))
    assert messages(result, Kind.WITHDRAWAL_WARNING) == []


@pytest.mark.parametrize(
    ("month", "day", "now", "cycle", "due"),
    [
        (6, 1, utc(2027, 5, 20), "heat:2027", local(LONDON, 2027, 6, 1, 10, 0)),
        (6, 1, utc(2027, 6, 5, 12, 0), "heat:2027", local(LONDON, 2027, 6, 1, 10, 0)),  # a catch-up within the week
        (6, 1, utc(2027, 6, 20), "heat:2028", local(LONDON, 2028, 6, 1, 10, 0)),
        (4, 15, utc(2027, 1, 20), "heat:2027", local(LONDON, 2027, 4, 15, 10, 0)),
        (4, 15, utc(2027, 5, 20), "heat:2028", local(LONDON, 2028, 4, 15, 10, 0)),
    ],
)
def test_the_heat_warning_goes_at_the_start_of_the_clinics_heat_season(
    month: int, day: int, now: datetime, cycle: str, due: datetime
) -> None:
    policy = Policy(time_zone=LONDON, heat_season_month=month, heat_season_day=day)
    heat = messages(plan(facts(), policy, [patient()], now), Kind.HEAT_WARNING, channel="email")

    assert [(m.cycle, m.due_at) for m in heat] == [(cycle, due)]


@pytest.mark.parametrize(
    ("implanted_at", "months", "now", "cycle", "on"),
    [
        (utc(2026, 8, 31, 10, 0), 6, utc(2026, 12, 1), "alcohol:1", date(2027, 2, 28)),
        (utc(2026, 8, 31, 10, 0), 6, utc(2027, 3, 10), "alcohol:2", date(2027, 8, 31)),
        (utc(2027, 8, 31, 10, 0), 6, utc(2027, 12, 1), "alcohol:1", date(2028, 2, 29)),
        (utc(2026, 1, 31, 10, 0), 1, utc(2026, 2, 1), "alcohol:1", date(2026, 2, 28)),
        (utc(2026, 1, 31, 10, 0), 1, utc(2026, 3, 10), "alcohol:2", date(2026, 3, 31)),
        (utc(2026, 3, 10, 10, 0), 3, utc(2027, 1, 20), "alcohol:4", date(2027, 3, 10)),
    ],
)
def test_the_alcohol_warning_repeats_every_n_months_after_implant(
    implanted_at: datetime, months: int, now: datetime, cycle: str, on: date
) -> None:
    policy = Policy(time_zone=LONDON, alcohol_reminder_months=months)
    alcohol = [
        m
        for m in messages(plan(facts(implanted_at=implanted_at), policy, [patient()], now), Kind.ALCOHOL_WARNING, channel="email")
        if m.cycle != "implant"
    ]

    assert [(m.cycle, m.due_at) for m in alcohol] == [(cycle, at_local(on, time(10, 0), LONDON))]


@pytest.mark.parametrize(
    ("on", "months", "expected"),
    [
        (date(2026, 8, 31), 6, date(2027, 2, 28)),
        (date(2027, 8, 31), 6, date(2028, 2, 29)),
        (date(2027, 1, 31), 1, date(2027, 2, 28)),
        (date(2027, 1, 30), 1, date(2027, 2, 28)),
        (date(2027, 3, 31), 1, date(2027, 4, 30)),
        (date(2027, 3, 31), -1, date(2027, 2, 28)),
        (date(2027, 5, 15), -6, date(2026, 11, 15)),
        (date(2027, 12, 15), 1, date(2028, 1, 15)),
        (date(2027, 1, 15), -1, date(2026, 12, 15)),
        (date(2027, 1, 15), 0, date(2027, 1, 15)),
    ],
)
def test_add_months(on: date, months: int, expected: date) -> None:
    assert add_months(on, months) == expected


def test_a_planned_mri_gets_its_warning_when_it_is_recorded() -> None:
    recorded = utc(2027, 3, 2, 14, 0)
    scan = Scan(event_id=7, at=utc(2027, 3, 12, 9, 0), recorded_at=recorded, planned=True, checked=False)
    result = plan(facts(scans=(scan,)), POLICY, [patient()], recorded)

    mri = messages(result, Kind.MRI_WARNING)
    assert {(m.channel, m.cycle, m.due_at) for m in mri} == {("email", "mri:7", recorded), ("sms", "mri:7", recorded)}
    assert all(m.context["scan_at"] == "2027-03-12T09:00:00+00:00" for m in mri)


def test_a_scan_already_done_gets_no_warning() -> None:
    scan = Scan(event_id=7, at=utc(2027, 3, 1, 9, 0), recorded_at=utc(2027, 3, 1, 12, 0), planned=False, checked=False)
    assert messages(plan(facts(scans=(scan,)), POLICY, [patient()], utc(2027, 3, 1, 12, 0)), Kind.MRI_WARNING) == []


def test_caregivers_flagged_for_safety_get_the_safety_kinds() -> None:
    implanted = utc(2027, 1, 4, 11, 0)
    scan = Scan(event_id=7, at=implanted + timedelta(days=10), recorded_at=implanted, planned=True, checked=False)
    result = plan(facts(implanted_at=implanted, scans=(scan,)), POLICY, [patient(), caregiver()], implanted)

    to_caregiver = {(m.kind, m.cycle) for m in result.messages if m.recipient_key == "caregiver:5"}
    assert to_caregiver == {
        (Kind.WITHDRAWAL_WARNING, "implant"),
        (Kind.MRI_WARNING, "implant"),
        (Kind.MRI_WARNING, "mri:7"),
    }
    assert all(not m.is_patient and m.caregiver_id == 5 for m in result.messages if m.recipient_key == "caregiver:5")


def test_caregivers_not_flagged_for_safety_get_nothing() -> None:
    implanted = utc(2027, 1, 4, 11, 0)
    scan = Scan(event_id=7, at=implanted + timedelta(days=10), recorded_at=implanted, planned=True, checked=False)
    contacts = [patient(), caregiver(receives_safety=False)]
    for pump, now in [
        (facts(implanted_at=implanted, scans=(scan,), high_risk=True), implanted),
        (facts(high_risk=True), utc(2027, 1, 1)),  # reminders
        (facts(high_risk=True), utc(2027, 2, 5, 8, 0)),  # overdue
    ]:
        assert [m for m in plan(pump, POLICY, contacts, now).messages if m.recipient_key == "caregiver:5"] == []


# --------------------------------------------------------------------------- escalations


def test_a_scan_without_a_post_mri_check_escalates_after_the_window() -> None:
    scan_at = utc(2027, 3, 12, 9, 0)
    unchecked = Scan(event_id=7, at=scan_at, recorded_at=utc(2027, 3, 1), planned=False, checked=False)

    esc = escalation(plan(facts(scans=(unchecked,)), POLICY, [patient()], scan_at), Reason.POST_MRI_CHECK_MISSING)
    assert esc is not None
    assert esc.critical
    assert esc.cycle == "mri:7"
    assert esc.due_at == scan_at + timedelta(hours=24)

    policy = Policy(time_zone=LONDON, post_mri_check_hours=6)
    esc = escalation(plan(facts(scans=(unchecked,)), policy, [patient()], scan_at), Reason.POST_MRI_CHECK_MISSING)
    assert esc is not None and esc.due_at == scan_at + timedelta(hours=6)


def test_a_checked_scan_needs_no_escalation() -> None:
    checked = Scan(event_id=7, at=utc(2027, 3, 12, 9, 0), recorded_at=utc(2027, 3, 1), planned=False, checked=True)
    assert escalation(plan(facts(scans=(checked,)), POLICY, [patient()], utc(2027, 3, 14)), Reason.POST_MRI_CHECK_MISSING) is None


@pytest.mark.parametrize(
    ("mri_rule", "reason", "critical"),
    [
        ("empty_before", Reason.MRI_EMPTY_RESERVOIR, False),
        ("unsafe", Reason.MRI_UNSAFE, True),
    ],
)
def test_a_planned_mri_escalates_by_the_pump_models_rule(mri_rule: str, reason: Reason, critical: bool) -> None:
    recorded = utc(2027, 3, 2, 14, 0)
    scan = Scan(event_id=7, at=utc(2027, 3, 12, 9, 0), recorded_at=recorded, planned=True, checked=False)
    result = plan(facts(scans=(scan,), mri_rule=mri_rule), POLICY, [patient()], recorded)

    esc = escalation(result, reason)
    assert esc is not None
    assert (esc.critical, esc.cycle, esc.due_at) == (critical, "mri:7", recorded)
    others = {Reason.MRI_EMPTY_RESERVOIR, Reason.MRI_UNSAFE} - {reason}
    assert not [e for e in result.escalations if e.reason in others]


def test_a_planned_mri_on_a_synchromed_needs_no_pre_scan_task() -> None:
    scan = Scan(event_id=7, at=utc(2027, 3, 12, 9, 0), recorded_at=utc(2027, 3, 2), planned=True, checked=False)
    result = plan(facts(scans=(scan,), mri_rule="check_after"), POLICY, [patient()], utc(2027, 3, 2))

    assert escalation(result, Reason.MRI_EMPTY_RESERVOIR) is None
    assert escalation(result, Reason.MRI_UNSAFE) is None


@pytest.mark.parametrize(
    ("end_of_service_on", "months", "expected"),
    [
        (date(2028, 3, 31), 6, local(LONDON, 2027, 9, 30, 9, 0)),
        (date(2028, 8, 15), 6, local(LONDON, 2028, 2, 15, 9, 0)),
        (date(2028, 8, 15), 3, local(LONDON, 2028, 5, 15, 9, 0)),
    ],
)
def test_battery_replacement_is_planned_months_before_end_of_service(
    end_of_service_on: date, months: int, expected: datetime
) -> None:
    policy = Policy(time_zone=LONDON, battery_planning_months=months)
    esc = escalation(
        plan(facts(end_of_service_on=end_of_service_on), policy, [patient()], utc(2027, 1, 1)), Reason.BATTERY_PLANNING
    )

    assert esc is not None
    assert (esc.due_at, esc.cycle, esc.critical) == (expected, f"eos:{end_of_service_on.isoformat()}", False)


def test_a_replacement_indicator_escalates_at_once() -> None:
    at = utc(2027, 3, 2, 14, 0)
    esc = escalation(plan(facts(replacement_indicators=((9, at),)), POLICY, [patient()], at), Reason.REPLACEMENT_INDICATOR)

    assert esc is not None
    assert (esc.due_at, esc.cycle, esc.critical) == (at, "eri:9", True)


@pytest.mark.parametrize(
    ("contacts", "unreachable"),
    [
        ([patient(email="", phone="")], True),
        ([patient(email_blocked="Opted out", sms_blocked="Patient prefers no SMS")], True),
        ([patient(email="", sms_blocked="Opted out")], True),
        ([], True),
        # A caregiver does not make the patient reachable.
        ([patient(email="", phone=""), caregiver()], True),
        ([patient(sms_blocked="Opted out")], False),
        ([patient(email="")], False),
        ([patient()], False),
    ],
)
def test_a_patient_without_a_usable_channel_escalates_at_once(contacts: list[Contact], unreachable: bool) -> None:
    now = utc(2027, 1, 20, 3, 0)
    esc = escalation(plan(facts(), POLICY, contacts, now), Reason.NO_USABLE_CONTACT)

    if unreachable:
        assert esc is not None
        assert esc.due_at == now
        assert esc.cycle == "refill_by:2027-02-03"
    else:
        assert esc is None


def test_an_inactive_pump_has_an_empty_plan() -> None:
    scan = Scan(event_id=7, at=utc(2027, 1, 10), recorded_at=utc(2027, 1, 1), planned=False, checked=False)
    pump = facts(
        active=False,
        implanted_at=utc(2027, 1, 4),
        last_fill_id=3,
        last_fill_at=utc(2027, 1, 10),
        end_of_service_on=date(2027, 3, 1),
        replacement_indicators=((9, utc(2027, 1, 10)),),
        scans=(scan,),
    )
    result = plan(pump, POLICY, [], utc(2027, 2, 10))

    assert result.messages == []
    assert result.escalations == []


# --------------------------------------------------------------------------- suppression


def test_a_blocked_channel_gives_a_suppressed_message_not_no_message() -> None:
    result = plan(facts(), POLICY, [patient(sms_blocked="Opted out")], utc(2027, 1, 1))

    sms = messages(result, Kind.REFILL_REMINDER, channel="sms")
    email = messages(result, Kind.REFILL_REMINDER, channel="email")
    assert [m.stage for m in sms] == ["d14", "d7", "d2", "d0"]
    assert all(m.suppressed == "Opted out" for m in sms)
    assert all(m.suppressed == "" for m in email)
    assert escalation(result, Reason.NO_USABLE_CONTACT) is None


def test_the_identity_of_a_message_is_stable_across_plans() -> None:
    earlier = plan(facts(), POLICY, [patient(), caregiver()], utc(2027, 1, 1))
    later = plan(facts(), POLICY, [patient(), caregiver()], utc(2027, 1, 2))

    assert {m.identity for m in earlier.messages} == {m.identity for m in later.messages}
    assert len({m.identity for m in earlier.messages}) == len(earlier.messages)
