"""Refill appointments (issue 5): the booking rules, a refill closing the visit, reminders
naming the visit, the missed-visit escalation, and the admin's booking form and week view.

The worked example (tests/factories.py): implanted and filled 2027-01-04 09:00 UTC,
refill by 2027-02-03, alarm on 2027-04-09.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from admin_support import NOW, client_for, form_errors, listed, split_moment, staff
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from factories import ClinicFactory, UserFactory, fill, implanted_pump, screened_patient

from notifications import services as notifications
from notifications.models import Escalation, EscalationReason, EscalationStatus, Kind, Message, Severity
from patients.models import Clinic, Role
from pumps import appointments
from pumps.models import Appointment, AppointmentStatus, Pump, PumpStatus

pytestmark = pytest.mark.django_db

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
BOOKED_AT = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
REFILL_BY = date(2027, 2, 3)


def a_pump(clinic: Clinic | None = None, **patient_fields: Any) -> Pump:
    clinic = clinic or ClinicFactory(time_zone="Europe/London", phone="+442071234500")
    fields = {"email": "alex@example.org", "phone": "+442071234567", **patient_fields}
    return implanted_pump(patient=screened_patient(clinic=clinic, **fields))


def book(pump: Pump, starts_at: datetime, now: datetime = BOOKED_AT, **kwargs: Any) -> Appointment:
    return appointments.book_appointment(pump, starts_at, kwargs.pop("location", "Day unit, room 3"), "", None, now, **kwargs)


def replan(pump: Pump, now: datetime) -> None:
    notifications.replan_pumps([pump.pk], now)


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return exc.value.message_dict


@pytest.fixture
def committed_at(django_capture_on_commit_callbacks: Any) -> Callable[[datetime], Any]:
    """Run a block as a request would at `moment`: its commit hooks (the re-plan) run on exit."""

    @contextmanager
    def at(moment: datetime) -> Iterator[None]:
        with time_machine.travel(moment, tick=False), django_capture_on_commit_callbacks(execute=True):
            yield

    return at


# --------------------------------------------------------------------------- pure rules


TZ = LONDON
RULE_NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("starts_at", "acknowledged", "reason", "active", "already", "expected"),
    [
        (datetime(2027, 2, 1, 10, 0, tzinfo=TZ), False, "", True, None, set()),
        # The refill-by day itself is still in time, up to its last minute.
        (datetime(2027, 2, 3, 23, 59, tzinfo=TZ), False, "", True, None, set()),
        (datetime(2027, 2, 4, 0, 0, tzinfo=TZ), False, "", True, None, {"starts_at"}),
        (datetime(2027, 2, 4, 9, 0, tzinfo=TZ), True, "", True, None, {"reason"}),
        (datetime(2027, 2, 4, 9, 0, tzinfo=TZ), True, "   ", True, None, {"reason"}),
        (datetime(2027, 2, 4, 9, 0, tzinfo=TZ), True, "Patient abroad until then", True, None, set()),
        (datetime(2027, 1, 10, 11, 59, tzinfo=UTC), False, "", True, None, {"starts_at"}),
        (datetime(2027, 2, 1, 10, 0, tzinfo=TZ), False, "", False, None, {"pump"}),
        (datetime(2027, 2, 1, 10, 0, tzinfo=TZ), False, "", True, datetime(2027, 1, 30, 9, 0, tzinfo=UTC), {"pump"}),
    ],
)
def test_booking_rules(
    starts_at: datetime, acknowledged: bool, reason: str, active: bool, already: datetime | None, expected: set[str]
) -> None:
    errors = appointments.booking_errors(
        pump_active=active,
        starts_at=starts_at,
        now=RULE_NOW,
        refill_by=REFILL_BY,
        tz=TZ,
        already_booked=already,
        acknowledged_late=acknowledged,
        reason=reason,
    )
    assert set(errors) == expected


def test_after_refill_by_is_judged_on_the_clinics_calendar() -> None:
    # 2027-02-04 03:00 UTC is still 2027-02-03 in New York: in time there, late in London.
    moment = datetime(2027, 2, 4, 3, 0, tzinfo=UTC)
    assert not appointments.is_after_refill_by(moment, REFILL_BY, NEW_YORK)
    assert appointments.is_after_refill_by(moment, REFILL_BY, LONDON)


def test_a_visit_is_missed_only_after_its_clinic_local_day() -> None:
    starts = datetime(2027, 2, 1, 15, 0, tzinfo=NEW_YORK)  # 20:00 UTC
    assert not appointments.is_missed(starts, NEW_YORK, datetime(2027, 2, 2, 4, 59, tzinfo=UTC))
    assert appointments.is_missed(starts, NEW_YORK, datetime(2027, 2, 2, 5, 0, tzinfo=UTC))


# --------------------------------------------------------------------------- booking


def test_a_late_booking_is_refused_then_accepted_with_a_reason_and_stored() -> None:
    pump = a_pump()
    late = datetime(2027, 2, 5, 10, 0, tzinfo=LONDON)
    with pytest.raises(ValidationError) as refused:
        book(pump, late)
    assert "starts_at" in errors_of(refused)
    with pytest.raises(ValidationError) as no_reason:
        book(pump, late, acknowledged_late=True, reason=" ")
    assert "reason" in errors_of(no_reason)
    assert not Appointment.objects.exists()

    appointment = book(pump, late, acknowledged_late=True, reason="Patient abroad until 4 February")

    appointment.refresh_from_db()
    assert (appointment.status, appointment.after_refill_by, appointment.reason) == (
        AppointmentStatus.BOOKED,
        True,
        "Patient abroad until 4 February",
    )


def test_a_booking_in_time_stores_no_reason() -> None:
    appointment = book(a_pump(), datetime(2027, 2, 1, 10, 0, tzinfo=LONDON), acknowledged_late=True, reason="not needed")
    assert (appointment.after_refill_by, appointment.reason) == (False, "")


def test_a_booking_in_the_past_or_for_an_ended_pump_is_refused() -> None:
    pump = a_pump()
    with pytest.raises(ValidationError) as past:
        book(pump, BOOKED_AT - timedelta(minutes=1))
    assert "starts_at" in errors_of(past)
    Pump.objects.filter(pk=pump.pk).update(status=PumpStatus.EXPLANTED)
    pump.refresh_from_db()
    with pytest.raises(ValidationError) as ended:
        book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    assert "pump" in errors_of(ended)


def test_a_pump_has_one_booked_visit_at_a_time() -> None:
    pump = a_pump()
    first = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    with pytest.raises(ValidationError) as second:
        book(pump, datetime(2027, 2, 2, 10, 0, tzinfo=LONDON))
    assert "pump" in errors_of(second)

    appointments.cancel_appointment(first, by=None, now=BOOKED_AT, reason="Patient asked")
    again = book(pump, datetime(2027, 2, 2, 10, 0, tzinfo=LONDON))

    first.refresh_from_db()
    assert (first.status, first.cancellation_reason, first.closed_at) == (AppointmentStatus.CANCELLED, "Patient asked", BOOKED_AT)
    assert again.status == AppointmentStatus.BOOKED


def test_rescheduling_cancels_the_old_visit_and_books_the_new_one_under_the_same_rules() -> None:
    pump = a_pump()
    old = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    with pytest.raises(ValidationError):
        appointments.reschedule(old, datetime(2027, 2, 6, 10, 0, tzinfo=LONDON), by=None, now=BOOKED_AT)
    assert Appointment.objects.get(pk=old.pk).status == AppointmentStatus.BOOKED  # nothing half-done

    new = appointments.reschedule(old, datetime(2027, 2, 2, 14, 30, tzinfo=LONDON), by=None, now=BOOKED_AT)

    old.refresh_from_db()
    assert old.status == AppointmentStatus.CANCELLED and "2027-02-02 14:30" in old.cancellation_reason
    assert (new.status, new.location) == (AppointmentStatus.BOOKED, "Day unit, room 3")


def test_a_cancelled_or_done_visit_cannot_be_cancelled_again() -> None:
    pump = a_pump()
    appointment = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    appointments.cancel_appointment(appointment, by=None, now=BOOKED_AT)
    with pytest.raises(ValidationError):
        appointments.cancel_appointment(appointment, by=None, now=BOOKED_AT)


# --------------------------------------------------------------------------- a refill closes the visit


def test_a_recorded_refill_marks_the_booked_visit_done_with_the_refill() -> None:
    pump = a_pump()
    appointment = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))

    refill = fill(pump, at=datetime(2027, 2, 1, 10, 20, tzinfo=LONDON), withdrawn_ml="28.4", volume_added_ml="40")

    appointment.refresh_from_db()
    assert (appointment.status, appointment.refill_id) == (AppointmentStatus.DONE, refill.pk)
    book(pump, datetime(2027, 3, 1, 10, 0, tzinfo=LONDON), now=datetime(2027, 2, 1, 11, 0, tzinfo=UTC))  # the next one


def test_a_refill_performed_before_the_booking_leaves_the_next_visit_booked() -> None:
    # The nurse books the next visit at the end of this one, then types in the refill done earlier.
    pump = a_pump()
    refill_at = datetime(2027, 2, 1, 10, 0, tzinfo=UTC)
    appointment = book(pump, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=refill_at + timedelta(minutes=30))

    fill(pump, at=refill_at, withdrawn_ml="28.8", volume_added_ml="40")

    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED


# --------------------------------------------------------------------------- reminders


def reminder(pump: Pump, channel: str, stage: str = "d7") -> Message:
    return Message.objects.get(
        pump=pump, kind=Kind.REFILL_REMINDER, channel=channel, stage=stage, recipient_key__startswith="patient:"
    )


@pytest.mark.parametrize(
    ("language", "first", "second"),
    [
        ("en", "1 February 2027, 10:00", "2 February 2027, 14:30"),
        ("es", "1 de febrero de 2027, 10:00", "2 de febrero de 2027, 14:30"),
    ],
)
def test_reminders_name_the_booked_date_and_time_and_follow_a_rebooking(language: str, first: str, second: str) -> None:
    pump = a_pump(language=language)
    replan(pump, BOOKED_AT)
    email, sms = reminder(pump, "email"), reminder(pump, "sms")
    assert first not in notifications.render(email).text

    appointment = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    replan(pump, BOOKED_AT)

    email_out, sms_out = notifications.render(reminder(pump, "email")), notifications.render(reminder(pump, "sms"))
    assert first in email_out.subject and first in email_out.text and "Day unit, room 3" in email_out.text
    assert first in sms_out.text
    assert "Day unit" not in sms_out.text  # SMS: least detail, date and time only

    appointments.reschedule(appointment, datetime(2027, 2, 2, 14, 30, tzinfo=LONDON), by=None, now=BOOKED_AT)
    replan(pump, BOOKED_AT)

    # The same rows (identities), their text updated: nothing planned twice.
    assert (reminder(pump, "email").pk, reminder(pump, "sms").pk) == (email.pk, sms.pk)
    email_out, sms_out = notifications.render(reminder(pump, "email")), notifications.render(reminder(pump, "sms"))
    assert second in email_out.text and first not in email_out.text
    assert second in sms_out.text and first not in sms_out.text
    assert Message.objects.filter(pump=pump, kind=Kind.REFILL_REMINDER, stage="d7").count() == 2  # one email, one SMS


def test_a_cancelled_visit_is_no_longer_named() -> None:
    pump = a_pump()
    appointment = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    replan(pump, BOOKED_AT)
    assert "1 February 2027, 10:00" in notifications.render(reminder(pump, "sms")).text

    appointments.cancel_appointment(appointment, by=None, now=BOOKED_AT)
    replan(pump, BOOKED_AT)

    text = notifications.render(reminder(pump, "sms")).text
    assert "1 February 2027" not in text and "no appointment" in text


def test_the_overdue_message_names_a_visit_booked_after_refill_by() -> None:
    pump = a_pump()
    book(pump, datetime(2027, 2, 6, 9, 30, tzinfo=LONDON), acknowledged_late=True, reason="No earlier slot")
    replan(pump, datetime(2027, 2, 5, 12, 0, tzinfo=UTC))
    overdue = Message.objects.get(pump=pump, kind=Kind.OVERDUE, channel="sms", recipient_key__startswith="patient:")
    assert "6 February 2027, 09:30" in notifications.render(overdue).text


# --------------------------------------------------------------------------- missed visits


def missed(pump: Pump) -> Any:
    return Escalation.objects.filter(pump=pump, reason=EscalationReason.APPOINTMENT_MISSED)


def test_a_missed_visit_escalates_once_at_the_end_of_its_clinic_local_day_and_closes_with_the_refill(
    committed_at: Any,
) -> None:
    pump = a_pump(ClinicFactory(time_zone="America/New_York"))
    appointment = book(pump, datetime(2027, 2, 1, 15, 0, tzinfo=NEW_YORK))

    replan(pump, datetime(2027, 2, 2, 4, 59, tzinfo=UTC))  # 23:59 in New York: still its day
    assert not missed(pump).exists()
    assert Appointment.objects.get(pk=appointment.pk).status == AppointmentStatus.BOOKED

    end_of_day = datetime(2027, 2, 2, 5, 0, tzinfo=UTC)
    replan(pump, end_of_day)
    replan(pump, end_of_day + timedelta(hours=1))

    esc = missed(pump).get()
    assert (esc.status, esc.severity, esc.cycle, esc.raised_at) == (
        EscalationStatus.OPEN,
        Severity.WARNING,
        f"appointment:{appointment.pk}",
        end_of_day,
    )
    assert "2027-02-01 15:00" in esc.detail
    appointment.refresh_from_db()
    assert (appointment.status, appointment.closed_at) == (AppointmentStatus.MISSED, end_of_day)

    refill_at = datetime(2027, 2, 2, 15, 0, tzinfo=UTC)
    with committed_at(refill_at):
        fill(pump, at=refill_at, withdrawn_ml="28.0", volume_added_ml="40")

    esc.refresh_from_db()
    assert (esc.status, esc.resolved_at) == (EscalationStatus.RESOLVED, refill_at)
    assert Appointment.objects.get(pk=appointment.pk).status == AppointmentStatus.MISSED  # history stays true
    replan(pump, refill_at + timedelta(days=1))
    assert missed(pump).get().status == EscalationStatus.RESOLVED


def test_a_kept_visit_raises_nothing() -> None:
    pump = a_pump()
    book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    fill(pump, at=datetime(2027, 2, 1, 10, 30, tzinfo=LONDON), withdrawn_ml="28.4", volume_added_ml="40")
    replan(pump, datetime(2027, 2, 3, 12, 0, tzinfo=UTC))
    assert not missed(pump).exists()


def test_an_explanted_pumps_booked_visit_is_cancelled_not_missed() -> None:
    from pumps import services as pump_services

    pump = a_pump()
    appointment = book(pump, datetime(2027, 2, 1, 10, 0, tzinfo=LONDON))
    pump_services.end_pump(pump, status=PumpStatus.EXPLANTED, on=date(2027, 1, 10), reason="Infection", now=BOOKED_AT)

    replan(pump, datetime(2027, 2, 3, 12, 0, tzinfo=UTC))

    appointment.refresh_from_db()
    assert (appointment.status, appointment.cancellation_reason) == (AppointmentStatus.CANCELLED, "Pump explanted or replaced")
    assert not missed(pump).exists()


# --------------------------------------------------------------------------- admin


def booking_data(pump: Pump, at: datetime, tz: Any = UTC, **fields: Any) -> dict[str, Any]:
    moment = split_moment(at, tz)
    data = {
        "pump": pump.pk,
        "starts_at_0": moment["0"],
        "starts_at_1": moment["1"],
        "location": "Room 3",
        "notes": "",
        "reason": "",
        "_save": "Save",
    }
    data.update(fields)
    return data


ADD = "admin:pumps_appointment_add"


def test_the_booking_form_shows_the_refill_by_date_and_refuses_a_late_visit_without_a_reason(
    frozen_clock: None, pump_a: Pump
) -> None:
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))
    page = nurse.get(reverse(ADD) + f"?pump={pump_a.pk}")
    assert page.status_code == 200
    assert "Wednesday 3 February 2027" in page.content.decode()  # refill by, on the clinic's calendar
    assert page.context["adminform"].form.initial["pump"] == str(pump_a.pk)

    late = datetime(2027, 2, 5, 10, 0, tzinfo=UTC)
    refused = nurse.post(reverse(ADD), booking_data(pump_a, late))
    assert refused.status_code == 200 and "starts_at" in form_errors(refused)
    no_reason = nurse.post(reverse(ADD), booking_data(pump_a, late, acknowledged_late="on"))
    assert "reason" in form_errors(no_reason)

    saved = nurse.post(reverse(ADD), booking_data(pump_a, late, acknowledged_late="on", reason="Transport only on Fridays"))

    assert saved.status_code == 302
    appointment = Appointment.objects.get()
    assert (appointment.starts_at, appointment.after_refill_by, appointment.reason, appointment.booked_by_id) == (
        late,
        True,
        "Transport only on Fridays",
        saved.wsgi_request.user.pk,
    )


def test_the_booking_form_reads_the_clinics_wall_clock(frozen_clock: None) -> None:
    clinic = ClinicFactory(time_zone="America/New_York")
    pump = implanted_pump(patient=screened_patient(clinic=clinic))
    nurse = client_for(staff((clinic, Role.NURSE)))
    wall = datetime(2027, 2, 2, 9, 15, tzinfo=NEW_YORK)
    assert nurse.post(reverse(ADD), booking_data(pump, wall, NEW_YORK)).status_code == 302
    assert Appointment.objects.get().starts_at == wall


def test_a_viewer_cannot_book(frozen_clock: None, pump_a: Pump) -> None:
    viewer = client_for(staff((pump_a.patient.clinic, Role.VIEWER)))
    assert viewer.get(reverse(ADD) + f"?pump={pump_a.pk}").status_code == 403
    assert viewer.post(reverse(ADD), booking_data(pump_a, datetime(2027, 2, 2, 10, 0, tzinfo=UTC))).status_code == 403
    assert not Appointment.objects.exists()


def test_a_nurse_cannot_book_for_another_clinics_pump(frozen_clock: None, pump_a: Pump, pump_b: Pump) -> None:
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))
    response = nurse.post(reverse(ADD), booking_data(pump_b, datetime(2027, 2, 2, 10, 0, tzinfo=UTC)))
    assert "pump" in form_errors(response)
    assert not Appointment.objects.exists()


def test_cancel_from_the_visit_page(frozen_clock: None, pump_a: Pump, pump_b: Pump) -> None:
    mine = book(pump_a, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    theirs = book(pump_b, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))

    page = nurse.get(reverse("admin:pumps_appointment_change", args=[mine.pk]))
    assert "Cancel this visit" in page.content.decode()
    nurse.post(reverse("admin:pumps_appointment_cancel", args=[mine.pk]), {"cancellation_reason": "Unwell"})
    assert nurse.post(reverse("admin:pumps_appointment_cancel", args=[theirs.pk])).status_code == 404

    mine.refresh_from_db()
    assert (mine.status, mine.cancellation_reason) == (AppointmentStatus.CANCELLED, "Unwell")
    assert Appointment.objects.get(pk=theirs.pk).status == AppointmentStatus.BOOKED


def test_moving_a_visit_on_its_page_reschedules_it(frozen_clock: None, pump_a: Pump) -> None:
    old = book(pump_a, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))
    data = booking_data(pump_a, datetime(2027, 2, 3, 15, 0, tzinfo=UTC), location="Room 9")
    del data["pump"]

    assert nurse.post(reverse("admin:pumps_appointment_change", args=[old.pk]), data).status_code == 302

    old.refresh_from_db()
    new = Appointment.objects.get(status=AppointmentStatus.BOOKED)
    assert old.status == AppointmentStatus.CANCELLED
    assert (new.starts_at, new.location) == (datetime(2027, 2, 3, 15, 0, tzinfo=UTC), "Room 9")


def test_the_list_holds_only_the_users_clinics(frozen_clock: None, pump_a: Pump, pump_b: Pump) -> None:
    mine = book(pump_a, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    theirs = book(pump_b, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))
    assert listed(nurse.get(reverse("admin:pumps_appointment_changelist"))) == {mine.pk}
    assert nurse.get(reverse("admin:pumps_appointment_change", args=[theirs.pk])).status_code == 302  # admin: "does not exist"


WEEK = "admin:pumps_appointment_week"


def test_the_week_view_shows_visits_and_unbooked_refill_by_dates_of_the_users_clinics_only(
    frozen_clock: None, clinic_a: Clinic, clinic_b: Clinic
) -> None:
    booked = implanted_pump(patient=screened_patient(clinic=clinic_a, family_name="Booked"))
    unbooked = implanted_pump(patient=screened_patient(clinic=clinic_a, family_name="Waiting"))
    elsewhere = implanted_pump(patient=screened_patient(clinic=clinic_b, family_name="Elsewhere"))
    book(booked, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW, location="Room 7")
    book(elsewhere, datetime(2027, 2, 2, 11, 0, tzinfo=UTC), now=NOW, location="Their room")
    nurse = client_for(staff((clinic_a, Role.NURSE)))

    response = nurse.get(reverse(WEEK) + "?start=2027-02-03")  # a Wednesday: its Monday's week

    assert response.status_code == 200
    days = {d["day"]: d for d in response.context["days"]}
    assert min(days) == date(2027, 2, 1) and len(days) == 7
    assert [v.pump_id for v in days[date(2027, 2, 2)]["visits"]] == [booked.pk]
    assert [p.pk for p in days[REFILL_BY]["unbooked"]] == [unbooked.pk]
    html = response.content.decode()
    assert "Room 7" in html and "Waiting" in html and f"?pump={unbooked.pk}" in html
    assert "Elsewhere" not in html and "Their room" not in html
    assert "?start=2027-01-25" in html and "?start=2027-02-08" in html


def test_the_week_view_places_visits_on_the_clinics_calendar(frozen_clock: None) -> None:
    clinic = ClinicFactory(time_zone="America/New_York")
    pump = implanted_pump(patient=screened_patient(clinic=clinic))
    book(pump, datetime(2027, 2, 1, 21, 0, tzinfo=NEW_YORK), now=NOW)  # 02:00 UTC on the 2nd
    nurse = client_for(staff((clinic, Role.NURSE)))
    days = {d["day"]: d for d in nurse.get(reverse(WEEK) + "?start=2027-02-01").context["days"]}
    assert [v.pump_id for v in days[date(2027, 2, 1)]["visits"]] == [pump.pk]


def test_the_week_view_answers_in_a_constant_number_of_queries(frozen_clock: None, clinic_a: Clinic) -> None:
    nurse = client_for(staff((clinic_a, Role.NURSE)))

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert nurse.get(reverse(WEEK) + "?start=2027-02-01").status_code == 200
        return len(ctx)

    first = implanted_pump(patient=screened_patient(clinic=clinic_a))
    book(first, datetime(2027, 2, 2, 10, 0, tzinfo=UTC), now=NOW)
    implanted_pump(patient=screened_patient(clinic=clinic_a))
    few = queries()
    for n in range(4):
        pump = implanted_pump(patient=screened_patient(clinic=clinic_a))
        if n % 2:
            book(pump, datetime(2027, 2, 3, 9 + n, 0, tzinfo=UTC), now=NOW)
    assert queries() == few


def test_the_week_view_needs_a_staff_member(clinic_a: Clinic) -> None:
    outsider = client_for(UserFactory(is_staff=False))
    assert outsider.get(reverse(WEEK)).status_code == 302  # to the admin login
