"""Second read of issue 5's staff workspace: guards for odd input and edge cases the review
checked and found handled (a form error, never a server error; a pump with unknown contents
stays on the worklist and its page and documents render).

The visit is NOW (2027-02-01 12:00 UTC, admin_support).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from admin_support import NOW, client_for, staff
from django.urls import reverse
from factories import ClinicFactory, implant, implanted_pump, screened_patient

from patients.models import Clinic, Role
from pumps.models import Appointment
from workspace.models import OutreachAttempt
from workspace.services import Group, worklist

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
