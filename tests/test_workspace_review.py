"""Second read of issue 5's staff workspace: guards for odd input and edge cases the review
checked and found handled (a form error, never a server error; a pump with unknown contents
stays on the worklist and its page and documents render).

The visit is NOW (2027-02-01 12:00 UTC, admin_support).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from admin_support import NOW, client_for, staff
from django.urls import reverse
from factories import ClinicFactory, fill, implant, implanted_pump, screened_patient

from patients.models import Clinic, Role
from pumps import appointments
from pumps import services as pump_services
from pumps.domain import Rule
from pumps.models import Appointment, AppointmentStatus, Pump, PumpStatus
from workspace.models import OutreachAttempt
from workspace.services import Group, worklist

WEEK = "admin:pumps_appointment_week"

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("zone", "typed"), [("America/New_York", "9999-12-31T23:59"), ("Asia/Tokyo", "0001-01-01T00:00")])
def test_an_outreach_moment_at_the_calendars_edge_is_a_form_error(frozen_clock: None, zone: str, typed: str) -> None:
    clinic = ClinicFactory(time_zone=zone)
    pump = implanted_pump(patient=screened_patient(clinic=clinic))
    nurse = client_for(staff((clinic, Role.NURSE)))

    response = nurse.post(
        reverse("workspace:outreach", args=[pump.pk]), {"at": typed, "channel": "phone", "outcome": "reached", "note": ""}
    )

    assert response.status_code == 200
    assert response.context["form"].errors
    assert not OutreachAttempt.objects.exists()


def test_a_visit_in_year_one_is_a_form_error(frozen_clock: None) -> None:
    """Midnight of 0001-01-01 in Tokyo lies before datetime.min in UTC."""
    clinic = ClinicFactory(time_zone="Asia/Tokyo")
    pump = implanted_pump(patient=screened_patient(clinic=clinic))
    nurse = client_for(staff((clinic, Role.NURSE)))
    data: dict[str, Any] = {
        "pump": pump.pk,
        "starts_at_0": "0001-01-01",
        "starts_at_1": "00:00:00",
        "location": "Room 3",
        "notes": "",
        "reason": "",
        "_save": "Save",
    }

    response = nurse.post(reverse("admin:pumps_appointment_add"), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert not Appointment.objects.exists()


def test_a_pump_with_unknown_contents_is_overdue_from_the_day_after_its_implant(clinic_a: Clinic) -> None:
    """No fill or program recorded: refill-by is the implant date (pumps.services)."""
    bare = implant(screened_patient(clinic=clinic_a), implanted_at=NOW - timedelta(days=3))
    nurse = staff((clinic_a, Role.NURSE))

    (listing,) = worklist(nurse, None, NOW)

    overdue = next(g for g in listing.groups if g.group == Group.OVERDUE)
    assert [row.pump.pk for row in overdue.rows if row.pump] == [bare.pk]


def test_the_page_and_documents_of_a_pump_with_unknown_contents_render(frozen_clock: None, clinic_a: Clinic) -> None:
    bare = implant(screened_patient(clinic=clinic_a), implanted_at=NOW - timedelta(days=3))
    nurse = client_for(staff((clinic_a, Role.NURSE)))

    for name in ("admin:pumps_pump_change", "admin:pumps_pump_worksheet", "admin:pumps_pump_emergency_card"):
        assert nurse.get(reverse(name, args=[bare.pk])).status_code == 200, name


# ----------------------------------------------------------------------------- defects found and fixed


def test_a_pump_page_with_an_alarm_date_decades_away_still_renders(frozen_clock: None, clinic_a: Clinic) -> None:
    """A very low dose (accepted with acknowledgements) puts the alarm date up to 100 years
    out (domain.MAX_ALARM_DAYS); the chart's date ticks must not give up past 50 years."""
    pump = implanted_pump(
        patient=screened_patient(clinic=clinic_a),
        dose_mcg_per_day="1",
        concentration_mcg_per_ml="2000",
        fill_ml="40",
        acknowledged=[rule.value for rule in Rule],
        reason="Typed in as written on the referral",
    )
    nurse = client_for(staff((clinic_a, Role.NURSE)))

    response = nurse.get(reverse("admin:pumps_pump_change", args=[pump.pk]))

    assert response.status_code == 200
    assert "pt-reservoir-chart" in response.content.decode()


@pytest.mark.parametrize("start", ["0001-01-01", "0001-01-03", "9999-12-31"])
def test_the_week_view_answers_an_out_of_range_start_without_a_server_error(
    frozen_clock: None, clinic_a: Clinic, start: str
) -> None:
    nurse = client_for(staff((clinic_a, Role.NURSE)))
    assert nurse.get(reverse(WEEK) + f"?start={start}").status_code in (200, 400, 404)


def test_an_ended_pump_gets_no_emergency_card(frozen_clock: None, pump_a: Pump) -> None:
    """The card says 'I have an implanted intrathecal baclofen pump' with this pump's serial
    and dose: for an explanted (or replaced) pump it would tell an emergency doctor wrong facts."""
    pump_services.end_pump(pump_a, status=PumpStatus.EXPLANTED, on=date(2027, 1, 20), reason="Infection", now=NOW)
    nurse = client_for(staff((pump_a.patient.clinic, Role.NURSE)))

    response = nurse.get(reverse("admin:pumps_pump_emergency_card", args=[pump_a.pk]))

    assert response.get("Content-Type") != "application/pdf"
    page = nurse.get(reverse("admin:pumps_pump_change", args=[pump_a.pk])).content.decode()
    assert reverse("admin:pumps_pump_emergency_card", args=[pump_a.pk]) not in page


def test_the_current_week_shows_overdue_pumps_with_no_visit_booked(frozen_clock: None, clinic_a: Clinic) -> None:
    """Refill-by 2027-01-22 (implant + 30), before this week's Monday: still unbooked and the
    most urgent to book, it must not vanish from the week staff plan with."""
    implanted_pump(patient=screened_patient(clinic=clinic_a, family_name="Latecomer"), implanted_at=NOW - timedelta(days=40))
    nurse = client_for(staff((clinic_a, Role.NURSE)))

    assert "Latecomer" in nurse.get(reverse(WEEK)).content.decode()  # this week (today 2027-02-01)


def test_a_refill_done_just_after_booking_the_next_visit_does_not_close_that_visit(frozen_clock: None, pump_a: Pump) -> None:
    """At the visit, the nurse books the next one first (March, late-acknowledged because the
    stored refill-by is still today's), then refills. The refill is today's visit, not March's."""
    following = appointments.book_appointment(
        pump_a, datetime(2027, 3, 1, 10, tzinfo=UTC), "Room 3", "", None, NOW, acknowledged_late=True, reason="next visit"
    )
    fill(pump_a, at=NOW + timedelta(minutes=10), volume_added_ml="28", withdrawn_ml="28.80")

    following.refresh_from_db()
    assert following.status == AppointmentStatus.BOOKED
