"""Refill appointments over the REST API: the booking rules of the admin, scoped the same."""

from __future__ import annotations

from datetime import timedelta

import pytest
from admin_support import NOW, staff
from api_support import api_client

from patients.models import Clinic, Role
from pumps.models import Appointment, AppointmentStatus, Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

# The factories' pump (implanted 2027-01-04, titration) is due by 2027-02-03; NOW is 2027-02-01 12:00 UTC.
ON_TIME = "2027-02-02T10:00:00Z"
LATE = "2027-02-05T10:00:00Z"


def test_a_nurse_books_a_visit_and_a_late_one_needs_a_reason(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    late = client.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": LATE}, format="json")
    assert late.status_code == 400 and "starts_at" in late.json()
    no_reason = client.post(
        "/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": LATE, "acknowledged_late": True}, format="json"
    )
    assert no_reason.status_code == 400 and "reason" in no_reason.json()
    booked = client.post(
        "/api/v1/appointments/",
        {"pump": pump_a.pk, "starts_at": LATE, "acknowledged_late": True, "reason": "Patient away until Friday"},
        format="json",
    )
    assert booked.status_code == 201, booked.json()
    body = booked.json()
    assert body["status"] == "booked" and body["after_refill_by"] is True and body["reason"] == "Patient away until Friday"
    again = client.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": ON_TIME}, format="json")
    assert again.status_code == 400
    assert Appointment.objects.filter(pump=pump_a, status=AppointmentStatus.BOOKED).count() == 1


def test_a_new_time_reschedules_and_cancel_frees_the_pump(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.COORDINATOR)))
    first = client.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": ON_TIME, "location": "Room 2"}, format="json")
    moved = client.patch(f"/api/v1/appointments/{first.json()['id']}/", {"starts_at": "2027-02-03T09:00:00Z"}, format="json")
    assert moved.status_code == 200, moved.json()
    assert moved.json()["id"] != first.json()["id"] and moved.json()["location"] == "Room 2"
    assert Appointment.objects.get(pk=first.json()["id"]).status == AppointmentStatus.CANCELLED
    place = client.patch(f"/api/v1/appointments/{moved.json()['id']}/", {"location": "Home visit"}, format="json")
    assert place.json()["location"] == "Home visit" and place.json()["id"] == moved.json()["id"]
    cancelled = client.post(
        f"/api/v1/appointments/{moved.json()['id']}/cancel/", {"cancellation_reason": "Admitted"}, format="json"
    )
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancellation_reason"] == "Admitted"
    assert not Appointment.objects.filter(pump=pump_a, status=AppointmentStatus.BOOKED).exists()


def test_a_viewer_reads_visits_but_does_not_book(pump_a: Pump) -> None:
    viewer = api_client(staff((pump_a.patient.clinic, Role.VIEWER)))
    assert viewer.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": ON_TIME}, format="json").status_code == 403
    assert viewer.get("/api/v1/appointments/").json()["count"] == 0


def test_another_clinics_visits_are_not_found_nor_bookable(pump_a: Pump, clinic_b: Clinic) -> None:
    visit = api_client(staff((pump_a.patient.clinic, Role.NURSE))).post(
        "/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": ON_TIME}, format="json"
    )
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    assert outsider.get("/api/v1/appointments/").json()["count"] == 0
    assert outsider.get(f"/api/v1/appointments/{visit.json()['id']}/").status_code == 404
    assert outsider.post(f"/api/v1/appointments/{visit.json()['id']}/cancel/").status_code == 404
    assert outsider.patch(f"/api/v1/appointments/{visit.json()['id']}/", {"location": "x"}, format="json").status_code == 404
    other = outsider.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": ON_TIME}, format="json")
    assert other.status_code == 400 and "does not exist" in other.json()["pump"][0]
    assert Appointment.objects.get().status == AppointmentStatus.BOOKED


def test_a_past_time_is_refused(pump_a: Pump) -> None:
    client = api_client(staff((pump_a.patient.clinic, Role.NURSE)))
    past = (NOW - timedelta(hours=1)).isoformat()
    response = client.post("/api/v1/appointments/", {"pump": pump_a.pk, "starts_at": past}, format="json")
    assert response.status_code == 400 and "starts_at" in response.json()
