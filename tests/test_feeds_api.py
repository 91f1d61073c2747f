"""Calendar feeds over the REST API: issue, read back the signed address, revoke, rotate."""

from __future__ import annotations

from urllib.parse import urlsplit

import icalendar
import pytest
from admin_support import staff
from api_support import api_client
from django.test import Client

from integrations.models import CalendarFeed
from patients.models import Clinic, Role
from pumps.models import Pump

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]


def subscribe(url: str) -> icalendar.Calendar:
    response = Client().get(urlsplit(url).path)
    assert response.status_code == 200
    return icalendar.Calendar.from_ical(response.content)


def test_a_nurse_issues_a_staff_feed_and_a_calendar_reads_it(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    client = api_client(staff((clinic, Role.NURSE)))
    response = client.post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "Refill board"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["patient"] is None and body["url"].startswith("http://127.0.0.1:8000/feeds/")
    uids = {str(e.uid) for e in subscribe(body["url"]).events}
    assert any(f"pump-{pump_a.pk}-" in uid for uid in uids)
    assert client.get(f"/api/v1/calendar-feeds/{body['id']}/").json()["url"] == body["url"]


def test_a_patient_feed_needs_a_patient_of_that_clinic(pump_a: Pump, pump_b: Pump) -> None:
    clinic = pump_a.patient.clinic
    client = api_client(staff((clinic, Role.COORDINATOR), (pump_b.patient.clinic, Role.COORDINATOR)))
    wrong = client.post(
        "/api/v1/calendar-feeds/", {"clinic": clinic.pk, "patient": pump_b.patient_id, "label": "x"}, format="json"
    )
    assert wrong.status_code == 400 and "patient" in wrong.json()
    right = client.post(
        "/api/v1/calendar-feeds/", {"clinic": clinic.pk, "patient": pump_a.patient_id, "label": "Patient portal"}, format="json"
    )
    assert right.status_code == 201 and right.json()["patient"] == pump_a.patient_id
    assert CalendarFeed.objects.count() == 1


def test_revoking_ends_the_address_and_rotating_gives_a_new_one(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    client = api_client(staff((clinic, Role.NURSE)))
    feed = client.post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "Board"}, format="json").json()
    rotated = client.post(f"/api/v1/calendar-feeds/{feed['id']}/rotate/")
    assert rotated.status_code == 201 and rotated.json()["url"] != feed["url"]
    assert Client().get(urlsplit(feed["url"]).path).status_code == 404
    subscribe(rotated.json()["url"])
    revoked = client.post(f"/api/v1/calendar-feeds/{rotated.json()['id']}/revoke/").json()
    assert revoked["url"] is None and revoked["revoked_at"] is not None
    assert Client().get(urlsplit(rotated.json()["url"]).path).status_code == 404


def test_a_viewer_reads_feeds_but_does_not_issue_them(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    api_client(staff((clinic, Role.NURSE))).post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "B"}, format="json")
    viewer = api_client(staff((clinic, Role.VIEWER)))
    assert viewer.get("/api/v1/calendar-feeds/").json()["count"] == 1
    assert viewer.post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "C"}, format="json").status_code == 403
    feed = CalendarFeed.objects.get()
    assert viewer.post(f"/api/v1/calendar-feeds/{feed.pk}/revoke/").status_code == 403
    assert CalendarFeed.objects.get().revoked_at is None


def test_another_clinics_feeds_are_not_found(pump_a: Pump, clinic_b: Clinic) -> None:
    clinic = pump_a.patient.clinic
    feed = api_client(staff((clinic, Role.NURSE))).post(
        "/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "A board"}, format="json"
    )
    outsider = api_client(staff((clinic_b, Role.CLINICIAN)))
    assert outsider.get("/api/v1/calendar-feeds/").json()["count"] == 0
    for path in ("", "revoke/", "rotate/"):
        method = outsider.get if not path else outsider.post
        assert method(f"/api/v1/calendar-feeds/{feed.json()['id']}/{path}").status_code == 404
    issued = outsider.post("/api/v1/calendar-feeds/", {"clinic": clinic.pk, "label": "x"}, format="json")
    assert issued.status_code == 400 and "clinic" in issued.json()
    assert CalendarFeed.objects.filter(revoked_at=None).count() == 1
