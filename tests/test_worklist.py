"""The staff worklist (issue 5): groups, most urgent first, one row per pump, contact state,
CSV export, outreach logging, clinic scoping and a constant number of queries.

The visit is NOW (2027-02-01 12:00 UTC, admin_support); clinics are in UTC unless a test
says otherwise. The factories' worked example (40 mL at 0.4 mL/day, 2 mL alarm) implanted
on a day D has refill-by D + 30 (titration interval) and its alarm date D + 95.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from admin_support import NOW, client_for, listed, staff
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from factories import ClinicFactory, UserFactory, fill, implanted_pump, screened_patient

from notifications.models import (
    BlockMethod,
    BlockReason,
    Channel,
    ContactBlock,
    Escalation,
    EscalationReason,
    EscalationStatus,
    Kind,
    Message,
    RecipientKind,
    Severity,
    Status,
)
from patients.models import Clinic, Role
from pumps import services as pump_services
from pumps.models import Appointment, AppointmentStatus, EventKind, Pump
from workspace.models import OutreachAttempt, OutreachChannel, OutreachOutcome
from workspace.services import Group, csv_rows, worklist

pytestmark = pytest.mark.django_db

TODAY = NOW.date()  # 2027-02-01


# ----------------------------------------------------------------------------- builders


def pump_in(clinic: Clinic, *, implanted_at: datetime, fill_ml: str | None = None, **patient: Any) -> Pump:
    return implanted_pump(
        patient=screened_patient(clinic=clinic, screened_at=implanted_at - timedelta(days=14), **patient),
        implanted_at=implanted_at,
        fill_ml=fill_ml,
    )


def alarm_reached(clinic: Clinic, days_ago: int = 60, **patient: Any) -> Pump:
    """Filled with 20 mL: the alarm comes 45 days after the implant, long past."""
    return pump_in(clinic, implanted_at=NOW - timedelta(days=days_ago), fill_ml="20", **patient)


def overdue(clinic: Clinic, days_ago: int = 40, **patient: Any) -> Pump:
    """Refill-by (implant + 30) is past; the alarm (implant + 95) is not."""
    return pump_in(clinic, implanted_at=NOW - timedelta(days=days_ago), **patient)


def due_soon(clinic: Clinic, days_ago: int = 28, **patient: Any) -> Pump:
    """Refill-by in 2 days (implant + 30)."""
    return pump_in(clinic, implanted_at=NOW - timedelta(days=days_ago), **patient)


def not_due(clinic: Clinic, **patient: Any) -> Pump:
    """Implanted 5 days ago: refill-by in 25 days, nothing to do."""
    return pump_in(clinic, implanted_at=NOW - timedelta(days=5), **patient)


def escalated(pump: Pump, *, severity: str = Severity.WARNING, reason: str = EscalationReason.NO_USABLE_CONTACT) -> Escalation:
    return Escalation.objects.create(
        clinic=pump.patient.clinic,
        patient=pump.patient,
        pump=pump,
        reason=reason,
        severity=severity,
        subject=f"pump:{pump.pk}",
        cycle=f"test:{reason}",
        raised_at=NOW - timedelta(hours=5),
    )


def mri_done(pump: Pump, *, checked: bool = False) -> None:
    pump_services.record_event(pump=pump, kind=EventKind.MRI_DONE, occurred_at=NOW - timedelta(days=1), now=NOW)
    if checked:
        pump_services.record_event(pump=pump, kind=EventKind.POST_MRI_CHECK, occurred_at=NOW - timedelta(hours=20), now=NOW)


def battery(pump: Pump, end_of_service_on: date) -> Pump:
    return pump_services.update_pump_details(pump, {"estimated_end_of_service_on": end_of_service_on})


def flagged_refill(pump: Pump) -> None:
    """A refill yesterday withdrawing far less than expected (flagged); the next refill-by
    is then 30 days on, so nothing else is due."""
    fill(pump, at=NOW - timedelta(days=1), volume_added_ml="40", withdrawn_ml="20")


def book(pump: Pump, *, days_ahead: int = 1) -> Appointment:
    return Appointment.objects.create(
        pump=pump, starts_at=NOW + timedelta(days=days_ahead), status=AppointmentStatus.BOOKED, created_at=NOW, updated_at=NOW
    )


def message(pump: Pump, *, status: str, at: datetime, channel: str = Channel.SMS, stage: str = "d7") -> Message:
    return Message.objects.create(
        clinic=pump.patient.clinic,
        patient=pump.patient,
        pump=pump,
        recipient_key=f"patient:{pump.patient_id}",
        channel=channel,
        kind=Kind.REFILL_REMINDER,
        subject=f"pump:{pump.pk}",
        cycle="refill_by:test",
        stage=stage,
        recipient_kind=RecipientKind.PATIENT,
        address="+447700900123",
        status=status,
        due_at=at,
        sent_at=at if status in (Status.SENT, Status.DELIVERED) else None,
        delivered_at=at if status == Status.DELIVERED else None,
    )


def groups_of(user: Any, clinic: Clinic | None = None, now: datetime = NOW) -> dict[Group, list[int]]:
    """{group: [pump ids in order]} for the user's (one) clinic."""
    lists = worklist(user, [clinic.pk] if clinic else None, now)
    assert len(lists) == 1
    return {g.group: [r.pump.pk if r.pump else -1 for r in g.rows] for g in lists[0].groups}


def rows_by_pump(user: Any, now: datetime = NOW) -> dict[int, Any]:
    return {r.pump.pk: r for wl in worklist(user, None, now) for g in wl.groups for r in g.rows if r.pump}


@pytest.fixture
def clinic() -> Clinic:
    return ClinicFactory(name="Clinic A")


@pytest.fixture
def nurse(clinic: Clinic) -> Any:
    return staff((clinic, Role.NURSE))


# ----------------------------------------------------------------------------- groups


def test_each_group_lists_its_pumps_in_the_order_of_urgency(clinic: Clinic, nurse: Any) -> None:
    critical = alarm_reached(clinic)
    late = overdue(clinic)
    soon = due_soon(clinic)
    with_escalation = not_due(clinic)
    escalated(with_escalation)
    scanned = not_due(clinic)
    mri_done(scanned)
    worn = battery(not_due(clinic), TODAY + timedelta(days=90))
    flagged = not_due(clinic)
    flagged_refill(flagged)
    quiet = not_due(clinic)

    found = groups_of(nurse)

    assert list(found) == list(Group)  # every group shown, most urgent first
    assert found == {
        Group.ALARM_REACHED: [critical.pk],
        Group.OVERDUE: [late.pk],
        Group.DUE_UNBOOKED: [soon.pk],
        Group.ESCALATION: [with_escalation.pk],
        Group.POST_MRI: [scanned.pk],
        Group.BATTERY: [worn.pk],
        Group.DISCREPANCY: [flagged.pk],
    }
    assert quiet.pk not in rows_by_pump(nurse)


def test_rows_within_a_group_come_most_urgent_first(clinic: Clinic, nurse: Any) -> None:
    later = overdue(clinic, days_ago=35)
    earliest = overdue(clinic, days_ago=45)
    middle = overdue(clinic, days_ago=40)
    assert groups_of(nurse)[Group.OVERDUE] == [earliest.pk, middle.pk, later.pk]


def test_critical_escalations_come_before_warnings(clinic: Clinic, nurse: Any) -> None:
    warning, critical = not_due(clinic), not_due(clinic)
    escalated(warning)
    escalated(critical, severity=Severity.CRITICAL, reason=EscalationReason.MRI_UNSAFE)
    assert groups_of(nurse)[Group.ESCALATION] == [critical.pk, warning.pk]


def test_a_pump_is_listed_only_in_its_most_urgent_group_and_names_the_others(clinic: Clinic, nurse: Any) -> None:
    pump = alarm_reached(clinic)
    escalated(pump, severity=Severity.CRITICAL, reason=EscalationReason.ALARM_DATE_REACHED)
    battery(pump, TODAY + timedelta(days=30))

    found = groups_of(nurse)
    row = rows_by_pump(nurse)[pump.pk]

    assert [g for g, ids in found.items() if pump.pk in ids] == [Group.ALARM_REACHED]
    assert row.also == [Group.OVERDUE, Group.ESCALATION, Group.BATTERY]
    assert [e.reason for e in row.escalations] == [EscalationReason.ALARM_DATE_REACHED]  # still on the row


def test_a_booked_appointment_takes_a_due_pump_off_the_list(clinic: Clinic, nurse: Any) -> None:
    booked, unbooked = due_soon(clinic), due_soon(clinic)
    book(booked)
    cancelled = due_soon(clinic)
    Appointment.objects.create(
        pump=cancelled, starts_at=NOW + timedelta(days=1), status=AppointmentStatus.CANCELLED, created_at=NOW, updated_at=NOW
    )
    assert groups_of(nurse)[Group.DUE_UNBOOKED] == [unbooked.pk, cancelled.pk]
    assert booked.pk not in rows_by_pump(nurse)


def test_an_overdue_pump_stays_overdue_with_an_appointment_booked(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic)
    appointment = book(pump)
    assert groups_of(nurse)[Group.OVERDUE] == [pump.pk]
    assert rows_by_pump(nurse)[pump.pk].appointment == appointment


def test_due_means_within_14_days_of_the_clinic_local_today(nurse: Any, clinic: Clinic) -> None:
    pump = not_due(clinic)  # refill-by 2027-02-26
    assert pump.refill_by == date(2027, 2, 26)
    assert pump.pk not in rows_by_pump(nurse, now=datetime(2027, 2, 11, 23, 0, tzinfo=NOW.tzinfo))
    assert pump.pk in rows_by_pump(nurse, now=datetime(2027, 2, 12, 0, 0, tzinfo=NOW.tzinfo))


def test_overdue_starts_the_day_after_refill_by_in_the_clinic_zone() -> None:
    # Auckland is UTC+13 in February: 11:30 UTC on refill-by day is already the next day there.
    clinic = ClinicFactory(time_zone="Pacific/Auckland")
    user = staff((clinic, Role.NURSE))
    pump = not_due(clinic)
    refill_by = pump.refill_by
    assert refill_by is not None
    before = datetime.combine(refill_by, datetime.min.time(), tzinfo=NOW.tzinfo) + timedelta(hours=10, minutes=30)
    after = before + timedelta(hours=1)
    assert groups_of(user, now=before)[Group.OVERDUE] == []
    assert groups_of(user, now=after)[Group.OVERDUE] == [pump.pk]


def test_a_post_mri_check_recorded_after_the_scan_clears_it(clinic: Clinic, nurse: Any) -> None:
    checked, unchecked = not_due(clinic), not_due(clinic)
    mri_done(checked, checked=True)
    mri_done(unchecked)
    row = rows_by_pump(nurse)[unchecked.pk]
    assert groups_of(nurse)[Group.POST_MRI] == [unchecked.pk]
    assert row.pending_scans == [NOW - timedelta(days=1)]
    assert checked.pk not in rows_by_pump(nurse)


def test_a_planned_mri_still_ahead_is_not_pending(clinic: Clinic, nurse: Any) -> None:
    pump = not_due(clinic)
    pump_services.record_event(pump=pump, kind=EventKind.MRI_PLANNED, occurred_at=NOW + timedelta(days=3), now=NOW)
    assert pump.pk not in rows_by_pump(nurse)


def test_battery_replacement_follows_the_clinics_planning_months(clinic: Clinic, nurse: Any) -> None:
    inside = battery(not_due(clinic), date(2027, 8, 1))  # six months from today
    outside = battery(not_due(clinic), date(2027, 8, 2))
    assert groups_of(nurse)[Group.BATTERY] == [inside.pk]
    Clinic.objects.filter(pk=clinic.pk).update(battery_planning_months=7)
    assert groups_of(nurse)[Group.BATTERY] == [inside.pk, outside.pk]


def test_a_replacement_indicator_lists_the_pump_first_among_batteries(clinic: Clinic, nurse: Any) -> None:
    planned = battery(not_due(clinic), TODAY + timedelta(days=30))
    eri = not_due(clinic)
    pump_services.record_event(pump=eri, kind=EventKind.REPLACEMENT_INDICATOR, occurred_at=NOW - timedelta(days=1), now=NOW)
    assert groups_of(nurse)[Group.BATTERY] == [eri.pk, planned.pk]


def test_only_the_last_refills_discrepancy_counts(clinic: Clinic, nurse: Any) -> None:
    pump = pump_in(clinic, implanted_at=NOW - timedelta(days=20))
    fill(pump, at=NOW - timedelta(days=10), volume_added_ml="40", withdrawn_ml="10")  # flagged
    fill(pump, at=NOW - timedelta(days=1), volume_added_ml="40", withdrawn_ml="36.40")  # as expected
    assert pump.pk not in rows_by_pump(nurse)


def test_an_explanted_pump_leaves_the_list_unless_an_escalation_is_open(clinic: Clinic, nurse: Any) -> None:
    gone, with_task = overdue(clinic), overdue(clinic)
    for pump in (gone, with_task):
        pump_services.end_pump(pump, status="explanted", on=TODAY, reason="infection", now=NOW)
    escalated(with_task)
    found = groups_of(nurse)
    assert found[Group.OVERDUE] == []
    assert found[Group.ESCALATION] == [with_task.pk]


def test_a_resolved_escalation_is_not_listed_and_an_acknowledged_one_is(clinic: Clinic, nurse: Any) -> None:
    resolved, acknowledged = not_due(clinic), not_due(clinic)
    escalated(resolved).__class__.objects.filter(pump=resolved).update(status=EscalationStatus.RESOLVED)
    escalated(acknowledged).__class__.objects.filter(pump=acknowledged).update(status=EscalationStatus.ACKNOWLEDGED)
    assert groups_of(nurse)[Group.ESCALATION] == [acknowledged.pk]


def test_an_escalation_without_a_pump_is_listed_on_its_own(clinic: Clinic, nurse: Any) -> None:
    Escalation.objects.create(
        clinic=clinic,
        reason=EscalationReason.DELIVERY_FAILED,
        severity=Severity.WARNING,
        subject="webhook:1",
        cycle="x",
        raised_at=NOW,
        detail="Webhook endpoint disabled.",
    )
    rows = next(g for g in worklist(nurse, None, NOW)[0].groups if g.group == Group.ESCALATION).rows
    assert [(r.pump, [e.subject for e in r.escalations]) for r in rows] == [(None, ["webhook:1"])]


# ----------------------------------------------------------------------------- the row


def test_contact_state_shows_the_last_message_and_blocks(clinic: Clinic, nurse: Any) -> None:
    pump = due_soon(clinic, phone="+447700900123", email="alex@example.org")
    message(pump, status=Status.DELIVERED, at=NOW - timedelta(days=3), stage="d14")
    failed = message(pump, status=Status.FAILED_PERMANENTLY, at=NOW - timedelta(days=2), stage="d7")
    Message.objects.filter(pk=failed.pk).update(updated_at=NOW - timedelta(days=2))
    ContactBlock.objects.create(
        channel=Channel.SMS,
        address="+447700900123",
        reason=BlockReason.OPTED_OUT,
        method=BlockMethod.SMS_KEYWORD,
        keyword="STOP",
        created_at=NOW - timedelta(days=1),
    )

    contact = rows_by_pump(nurse)[pump.pk].contact

    assert contact.last_message.pk == failed.pk and contact.last_failed
    assert contact.opted_out and contact.usable  # email still works
    assert contact.problems == ("SMS: Opted out",)


def test_contact_state_says_when_no_channel_is_usable(clinic: Clinic, nurse: Any) -> None:
    pump = due_soon(clinic)  # no email, no phone
    contact = rows_by_pump(nurse)[pump.pk].contact
    assert not contact.usable and contact.last_message is None
    assert contact.problems == ("no email address", "no mobile number")


def test_the_row_carries_the_dates_that_matter(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic)
    appointment = book(pump, days_ahead=2)
    row = rows_by_pump(nurse)[pump.pk]
    assert (row.refill_by, row.alarm_on) == (pump.refill_by, pump.alarm_on)
    assert row.last_fill is not None and row.last_fill.performed_at == pump.implanted_at
    assert row.appointment == appointment


# ----------------------------------------------------------------------------- scoping


def test_another_clinics_pumps_are_absent_and_a_superuser_sees_all(clinic: Clinic, nurse: Any) -> None:
    other = ClinicFactory(name="Clinic B")
    mine, theirs = overdue(clinic), overdue(other)
    assert set(rows_by_pump(nurse)) == {mine.pk}
    assert [wl.clinic for wl in worklist(nurse, [other.pk], NOW)] == []  # asking for it gives nothing
    root = UserFactory(is_staff=True, is_superuser=True)
    assert set(rows_by_pump(root)) == {mine.pk, theirs.pk}


def test_another_clinics_escalations_are_absent(clinic: Clinic, nurse: Any) -> None:
    escalated(not_due(ClinicFactory()))
    assert groups_of(nurse)[Group.ESCALATION] == []


# ----------------------------------------------------------------------------- the page


@pytest.mark.usefixtures("frozen_clock")
def test_anonymous_visitors_are_sent_to_the_login() -> None:
    client = Client()
    for url in ("/work/", "/work/worklist.csv", "/work/outreach/1/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.usefixtures("frozen_clock")
def test_staff_of_no_clinic_and_non_staff_are_sent_to_the_login(clinic: Clinic) -> None:
    outsider = UserFactory(is_staff=True)
    not_staff = staff((clinic, Role.NURSE))
    not_staff.is_staff = False
    not_staff.save()
    for user in (outsider, not_staff):
        assert client_for(user).get("/work/").status_code == 302


@pytest.mark.usefixtures("frozen_clock")
def test_the_home_page_sends_members_to_the_worklist_and_others_to_the_login(nurse: Any) -> None:
    assert client_for(nurse).get("/")["Location"] == "/work/"
    assert Client().get("/")["Location"] == "/admin/login/?next=/work/"


@pytest.mark.usefixtures("frozen_clock")
def test_the_page_shows_rows_and_role_dependent_actions(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic, withdrawal_history=True)
    esc = escalated(pump)
    clinician = staff((clinic, Role.CLINICIAN))
    viewer = staff((clinic, Role.VIEWER))

    page = client_for(nurse).get("/work/").content.decode()
    assert pump.patient.mrn in page and "HIGH RISK" in page and pump.serial_number in page
    assert "most urgent group" in page
    assert f"/admin/pumps/refill/add/?pump={pump.pk}" in page
    assert f"/admin/pumps/appointment/add/?pump={pump.pk}" in page
    assert f"/work/outreach/{pump.pk}/" in page
    assert f"/admin/notifications/escalation/{esc.pk}/change/" in page
    assert "/admin/pumps/program/add/" not in page  # dose changes: clinicians only

    assert f"/admin/pumps/program/add/?pump={pump.pk}" in client_for(clinician).get("/work/").content.decode()

    seen = client_for(viewer).get("/work/").content.decode()
    assert pump.patient.mrn in seen
    for action in ("/admin/pumps/refill/add/", "/admin/pumps/appointment/add/", "/work/outreach/"):
        assert action not in seen


@pytest.mark.usefixtures("frozen_clock")
def test_the_clinic_selector_narrows_the_page_and_refuses_other_clinics(clinic: Clinic) -> None:
    second, foreign = ClinicFactory(name="Clinic Z"), ClinicFactory(name="Clinic Q")
    user = staff((clinic, Role.NURSE), (second, Role.NURSE))
    a, z = overdue(clinic), overdue(second)
    client = client_for(user)

    both = client.get("/work/")
    assert 'name="clinic"' in both.content.decode()
    assert {r.pump.pk for wl in both.context["worklists"] for g in wl.groups for r in g.rows} == {a.pk, z.pk}
    narrowed = client.get(f"/work/?clinic={second.pk}")
    assert [wl.clinic for wl in narrowed.context["worklists"]] == [second]
    assert client.get(f"/work/?clinic={foreign.pk}").status_code == 404
    assert client.get("/work/?clinic=x").status_code == 404
    assert 'name="clinic"' not in client_for(staff((clinic, Role.NURSE))).get("/work/").content.decode()


@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_index_links_to_the_worklist(nurse: Any) -> None:
    assert 'href="/work/"' in client_for(nurse).get("/admin/").content.decode()


def _page_queries(user: Any) -> list[str]:
    client = client_for(user)
    client.get("/work/")  # warm the session
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/work/")
    assert response.status_code == 200
    return [q["sql"] for q in ctx.captured_queries]


def _one_of_each(clinic: Clinic, author: Any) -> None:
    """A pump in every group, each with a message, a booked appointment where it may have
    one, an escalation and an outreach attempt: every per-row lookup is exercised."""
    pumps = [alarm_reached(clinic), overdue(clinic), due_soon(clinic, email="p@example.org")]
    with_escalation = not_due(clinic)
    escalated(with_escalation)
    scanned = not_due(clinic)
    mri_done(scanned)
    worn = battery(not_due(clinic), TODAY + timedelta(days=60))
    flagged = not_due(clinic)
    flagged_refill(flagged)
    booked = overdue(clinic)
    book(booked)
    Escalation.objects.create(  # about the patient: shown on the pump's row
        clinic=clinic,
        patient=pumps[2].patient,
        reason=EscalationReason.OPTED_OUT,
        severity=Severity.WARNING,
        subject=f"patient:{pumps[2].patient_id}",
        cycle="x",
        raised_at=NOW,
    )
    Escalation.objects.create(  # about a patient without a pump: a row of its own
        clinic=clinic,
        patient=screened_patient(clinic=clinic),
        reason=EscalationReason.OPTED_OUT,
        severity=Severity.WARNING,
        subject="patient:none",
        cycle=f"x{with_escalation.pk}",
        raised_at=NOW,
    )
    for pump in [*pumps, with_escalation, scanned, worn, flagged, booked]:
        message(pump, status=Status.DELIVERED, at=NOW - timedelta(days=1))
        OutreachAttempt.objects.create(
            pump=pump, patient=pump.patient, at=NOW - timedelta(hours=1), outcome=OutreachOutcome.NO_ANSWER, by=author
        )


@pytest.mark.usefixtures("frozen_clock")
def test_the_page_answers_with_a_constant_number_of_queries(clinic: Clinic, nurse: Any) -> None:
    _one_of_each(clinic, nurse)
    once = _page_queries(nurse)
    for _ in range(9):
        _one_of_each(clinic, nurse)
    assert sum(len(g.rows) for g in worklist(nurse, None, NOW)[0].groups) == 90
    tenfold = _page_queries(nurse)
    assert len(tenfold) == len(once), "\n".join(tenfold)
    # Session, user, zone, roles; clinics twice, permissions, escalations, candidates; the
    # planner's loader (4); fills, appointments, messages, outreach; the sweep heartbeat.
    assert len(once) <= 20, "\n".join(once)


# ----------------------------------------------------------------------------- CSV


def _csv(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="worklist-2027-02-01.csv"'
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.usefixtures("frozen_clock")
def test_the_csv_has_one_line_per_row_in_the_page_order(clinic: Clinic, nurse: Any) -> None:
    late = overdue(clinic, phone="+447700900123")
    critical = alarm_reached(clinic, withdrawal_history=True)
    message(late, status=Status.FAILED_PERMANENTLY, at=NOW - timedelta(days=1))
    Message.objects.filter(pump=late).update(updated_at=NOW - timedelta(days=1))
    OutreachAttempt.objects.create(
        pump=late,
        patient=late.patient,
        at=NOW - timedelta(hours=2),
        channel=OutreachChannel.PHONE,
        outcome=OutreachOutcome.NO_ANSWER,
    )

    lines = _csv(client_for(nurse).get("/work/worklist.csv"))
    header, rows = lines[0], [dict(zip(lines[0], line, strict=True)) for line in lines[1:]]

    assert header[:6] == ["group", "clinic", "MRN", "patient", "high risk", "pump"]
    assert [r["MRN"] for r in rows] == [critical.patient.mrn, late.patient.mrn]
    first, second = rows
    assert first["group"] == Group.ALARM_REACHED.label and first["high risk"] == "yes"
    assert first["alarm date"] == critical.alarm_on.isoformat()
    assert first["also in"] == Group.OVERDUE.label
    assert second == {
        **second,
        "group": Group.OVERDUE.label,
        "clinic": "Clinic A",
        "patient": late.patient.full_name,
        "pump": f"SynchroMed II 8637-40 #{late.serial_number}",
        "refill by": late.refill_by.isoformat(),
        "last refill": late.implanted_at.strftime("%Y-%m-%d %H:%M"),
        "appointment": "",
        "last outreach": "2027-02-01 10:00 Phone call: No answer",
    }
    assert second["contact"] == "last SMS failed permanently 2027-01-31 12:00; no email address"


def test_csv_cells_cannot_run_as_spreadsheet_formulas(clinic: Clinic, nurse: Any) -> None:
    overdue(clinic, family_name='=HYPERLINK("http://evil.example","x")', given_name="-2+3", mrn="=1+1")
    line = csv_rows(worklist(nurse, None, NOW))[1]
    assert line[2] == "'=1+1"
    assert line[3] == '\'-2+3 =HYPERLINK("http://evil.example","x")'


@pytest.mark.usefixtures("frozen_clock")
def test_the_csv_follows_the_clinic_selector_and_scoping(clinic: Clinic, nurse: Any) -> None:
    mine, theirs = overdue(clinic), overdue(ClinicFactory())
    lines = _csv(client_for(nurse).get("/work/worklist.csv"))
    assert [line[2] for line in lines[1:]] == [mine.patient.mrn]
    assert theirs.patient.mrn not in str(lines)
    assert client_for(nurse).get(f"/work/worklist.csv?clinic={theirs.patient.clinic_id}").status_code == 404


# ----------------------------------------------------------------------------- outreach


@pytest.mark.usefixtures("frozen_clock")
def test_a_nurse_logs_an_outreach_attempt_and_the_worklist_shows_it(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic)
    client = client_for(nurse)
    form = client.get(f"/work/outreach/{pump.pk}/?next=/work/%3Fclinic%3D{clinic.pk}")
    assert form.status_code == 200 and pump.patient.full_name in form.content.decode()

    response = client.post(
        f"/work/outreach/{pump.pk}/",
        {
            "at": "2027-02-01T11:30",
            "channel": "phone",
            "outcome": "left_message",
            "note": "Asked to call back.",
            "next": f"/work/?clinic={clinic.pk}",
        },
    )

    assert response.status_code == 302 and response["Location"] == f"/work/?clinic={clinic.pk}"
    attempt = OutreachAttempt.objects.get()
    assert (attempt.pump, attempt.patient, attempt.by) == (pump, pump.patient, nurse)
    assert (attempt.at, attempt.channel, attempt.outcome, attempt.note) == (
        datetime(2027, 2, 1, 11, 30, tzinfo=NOW.tzinfo),
        OutreachChannel.PHONE,
        OutreachOutcome.LEFT_MESSAGE,
        "Asked to call back.",
    )
    assert rows_by_pump(nurse)[pump.pk].last_outreach == attempt
    assert "Left a message" in client.get("/work/").content.decode()


@pytest.mark.usefixtures("frozen_clock")
def test_outreach_times_are_typed_on_the_pumps_clinic_clock() -> None:
    clinic = ClinicFactory(time_zone="America/New_York")  # UTC-5 in February
    user = staff((clinic, Role.COORDINATOR))
    pump = overdue(clinic)
    client_for(user).post(f"/work/outreach/{pump.pk}/", {"at": "2027-02-01T06:30", "channel": "sms", "outcome": "reached"})
    assert OutreachAttempt.objects.get().at == datetime(2027, 2, 1, 11, 30, tzinfo=NOW.tzinfo)


@pytest.mark.usefixtures("frozen_clock")
def test_a_viewer_may_not_log_outreach(clinic: Clinic) -> None:
    pump = overdue(clinic)
    client = client_for(staff((clinic, Role.VIEWER)))
    assert client.get(f"/work/outreach/{pump.pk}/").status_code == 403
    assert (
        client.post(
            f"/work/outreach/{pump.pk}/", {"at": "2027-02-01T11:30", "channel": "phone", "outcome": "reached"}
        ).status_code
        == 403
    )
    assert not OutreachAttempt.objects.exists()


@pytest.mark.usefixtures("frozen_clock")
def test_another_clinics_pump_answers_404_for_outreach(nurse: Any) -> None:
    pump = overdue(ClinicFactory())
    client = client_for(nurse)
    assert client.get(f"/work/outreach/{pump.pk}/").status_code == 404
    assert (
        client.post(
            f"/work/outreach/{pump.pk}/", {"at": "2027-02-01T11:30", "channel": "phone", "outcome": "reached"}
        ).status_code
        == 404
    )
    assert not OutreachAttempt.objects.exists()


@pytest.mark.usefixtures("frozen_clock")
def test_an_outreach_attempt_in_the_future_is_refused(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic)
    response = client_for(nurse).post(
        f"/work/outreach/{pump.pk}/", {"at": "2027-02-01T13:00", "channel": "phone", "outcome": "reached"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors == {"at": ["Cannot be in the future."]}
    assert not OutreachAttempt.objects.exists()


@pytest.mark.usefixtures("frozen_clock")
def test_the_outreach_form_does_not_redirect_off_site(clinic: Clinic, nurse: Any) -> None:
    pump = overdue(clinic)
    response = client_for(nurse).post(
        f"/work/outreach/{pump.pk}/",
        {"at": "2027-02-01T11:00", "channel": "phone", "outcome": "reached", "next": "https://evil.example/"},
    )
    assert response["Location"] == "/work/"


def test_discrepancy_rows_show_the_discrepancy(clinic: Clinic, nurse: Any) -> None:
    pump = not_due(clinic)
    flagged_refill(pump)
    row = rows_by_pump(nurse)[pump.pk]
    assert row.group == Group.DISCREPANCY
    assert row.last_fill.discrepancy_flagged and row.last_fill.discrepancy_ml < Decimal("-2")


@pytest.mark.usefixtures("frozen_clock")
def test_the_admin_lists_outreach_attempts_of_the_users_clinics_only(clinic: Clinic, nurse: Any) -> None:
    mine, theirs = overdue(clinic), overdue(ClinicFactory())
    seen = OutreachAttempt.objects.create(pump=mine, patient=mine.patient, at=NOW, outcome=OutreachOutcome.REACHED)
    OutreachAttempt.objects.create(pump=theirs, patient=theirs.patient, at=NOW, outcome=OutreachOutcome.REACHED)
    response = client_for(nurse).get("/admin/workspace/outreachattempt/")
    assert listed(response) == {seen.pk}


def test_an_escalation_about_a_patient_is_shown_on_their_pumps_row(clinic: Clinic, nurse: Any) -> None:
    due, quiet = due_soon(clinic), not_due(clinic)
    for pump in (due, quiet):
        Escalation.objects.create(
            clinic=clinic,
            patient=pump.patient,
            reason=EscalationReason.OPTED_OUT,
            severity=Severity.WARNING,
            subject=f"patient:{pump.patient_id}",
            cycle="x",
            raised_at=NOW,
        )
    found = groups_of(nurse)
    rows = rows_by_pump(nurse)
    assert (found[Group.DUE_UNBOOKED], found[Group.ESCALATION]) == ([due.pk], [quiet.pk])
    assert [e.reason for e in rows[due.pk].escalations] == [EscalationReason.OPTED_OUT]
    assert rows[due.pk].also == [Group.ESCALATION]


def test_an_escalation_about_a_patient_without_an_active_pump_names_the_patient(clinic: Clinic, nurse: Any) -> None:
    patient = screened_patient(clinic=clinic)
    Escalation.objects.create(
        clinic=clinic,
        patient=patient,
        reason=EscalationReason.OPTED_OUT,
        severity=Severity.WARNING,
        subject="p",
        cycle="x",
        raised_at=NOW,
    )
    rows = next(g for g in worklist(nurse, None, NOW)[0].groups if g.group == Group.ESCALATION).rows
    assert [(r.pump, r.patient) for r in rows] == [(None, patient)]
