"""Calendar feeds: signed, revocable iCalendar URLs of refill-by dates (issue 4).

Every feed is fetched over the test client and parsed with `icalendar.Calendar.from_ical`.
Pumps are recorded through `pumps.services` (factories), so every date is the real code's.
The worked example (factories): implant and fill 2027-01-04 09:00 UTC, 40 mL at 0.4 mL/day,
refill by 2027-02-03 (titration, 30 days), low-reservoir alarm 2027-04-09.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import icalendar
import pytest
import time_machine
from admin_support import NOW, VISIT_AT, client_for, form_errors, staff
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from factories import ClinicFactory, fill, implant, implanted_pump, screened_patient

from integrations import feeds, services
from integrations.models import CalendarFeed, PublishedEvent
from patients.models import Clinic, Language, Patient, Role
from pumps import services as pump_services
from pumps.models import Pump, PumpStatus

pytestmark = pytest.mark.django_db

DOMAIN = "pumptrack.invalid"  # PUMPTRACK_EMAIL_DOMAIN's default


# ----------------------------------------------------------------------------- helpers


def issue(clinic: Clinic, patient: Patient | None = None) -> CalendarFeed:
    return services.issue_feed(clinic=clinic, patient=patient, label="Refill nurses", by=None, now=NOW)


def fetch(feed: CalendarFeed, *, at: datetime = NOW, **headers: Any) -> Any:
    with time_machine.travel(at, tick=False):
        return Client().get(services.feed_path(feed), **headers)


def calendar(feed: CalendarFeed, *, at: datetime = NOW) -> icalendar.Calendar:
    response = fetch(feed, at=at)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/calendar; charset=utf-8"
    return icalendar.Calendar.from_ical(response.content)


def events(cal: icalendar.Calendar) -> dict[str, icalendar.Event]:
    return {str(e.uid): e for e in cal.events}


def refill_uid(pump: Pump, *, patient: bool = False) -> str:
    last = pump.refills.order_by("-performed_at").first()
    return feeds.event_uid(feeds.REFILL, pump.pk, last.pk if last else 0, DOMAIN, patient=patient)


def alarm_uid(pump: Pump, *, patient: bool = False) -> str:
    last = pump.refills.order_by("-performed_at").first()
    return feeds.event_uid(feeds.ALARM, pump.pk, last.pk if last else 0, DOMAIN, patient=patient)


def pump_uids(cal: icalendar.Calendar) -> set[int]:
    return {int(uid.split("-pump-")[1].split("-")[0]) for uid in events(cal)}


def change_dose(pump: Pump, dose: str, *, at: datetime = VISIT_AT) -> None:
    pump_services.change_program(
        pump,
        pump_services.ProgramInput(effective_at=at, dose_mcg_per_day=Decimal(dose), concentration_mcg_per_ml=Decimal("500")),
        by=None,
        now=at,
    )


# ----------------------------------------------------------------------------- the staff feed


def test_the_staff_feed_is_an_icalendar_of_each_active_pumps_refill_by_and_alarm_dates(pump_a: Pump) -> None:
    cal = calendar(issue(pump_a.patient.clinic))

    assert cal["VERSION"] == "2.0"
    assert cal["PRODID"] == feeds.PRODID
    assert cal["X-WR-CALNAME"] == "Clinic A: ITB refills"
    assert cal["X-WR-TIMEZONE"] == "UTC"
    assert cal["REFRESH-INTERVAL"].to_ical() == b"PT1H"
    assert cal["X-PUBLISHED-TTL"].to_ical() == b"PT1H"
    assert "does not replace them" in cal["X-WR-CALDESC"]
    refill, alarm = events(cal)[refill_uid(pump_a)], events(cal)[alarm_uid(pump_a)]
    assert (refill.start, refill.end) == (date(2027, 2, 3), date(2027, 2, 4))
    assert refill["DTSTART"].params["VALUE"] == "DATE"
    assert (alarm.start, alarm.end) == (date(2027, 4, 9), date(2027, 4, 10))
    assert refill.sequence == 0
    assert str(refill["CLASS"]) == "PRIVATE"


def test_staff_events_name_the_patient_by_initials_and_pump_number_only(clinic_a: Clinic, pump_a: Pump) -> None:
    clinic_a.phone = "+442071234567"
    clinic_a.save()
    patient = pump_a.patient

    response = fetch(issue(clinic_a))
    refill = events(icalendar.Calendar.from_ical(response.content))[refill_uid(pump_a)]

    assert refill["SUMMARY"] == f"ITB refill due: A.P. (pump {pump_a.pk})"
    # A feed URL is a bearer capability: no name, MRN, serial number or birth date leaves.
    body = response.content.decode()
    for identifier in (patient.family_name, patient.mrn, pump_a.serial_number, "1980"):
        assert identifier not in body
    assert "+44 20 7123 4567" in refill["DESCRIPTION"]
    assert refill["URL"] == "http://127.0.0.1:8000" + reverse("admin:pumps_pump_change", args=[pump_a.pk])


def test_an_overdue_refill_stays_in_the_feed_and_runs_through_today(pump_a: Pump) -> None:
    cal = calendar(issue(pump_a.patient.clinic), at=datetime(2027, 2, 10, 12, tzinfo=UTC))

    refill = events(cal)[refill_uid(pump_a)]
    assert refill["SUMMARY"].startswith("OVERDUE ITB refill")
    # From the refill-by date through today, so it shows on today's page.
    assert (refill.start, refill.end) == (date(2027, 2, 3), date(2027, 2, 11))


def test_it_counts_dates_and_today_in_the_clinics_time_zone() -> None:
    # 12:00 UTC on 4 January is 01:00 on 5 January in Auckland (UTC+13 in summer).
    clinic = ClinicFactory(time_zone="Pacific/Auckland")
    pump = implanted_pump(patient=screened_patient(clinic=clinic), implanted_at=datetime(2027, 1, 4, 12, tzinfo=UTC))
    feed = issue(clinic)

    before = events(calendar(feed, at=datetime(2027, 2, 3, 12, tzinfo=UTC)))[refill_uid(pump)]  # 4 Feb, 01:00 local
    after = events(calendar(feed, at=datetime(2027, 2, 4, 12, tzinfo=UTC)))[refill_uid(pump)]  # 5 Feb, 01:00 local

    assert calendar(feed)["X-WR-TIMEZONE"] == "Pacific/Auckland"
    assert (before.start, before.end) == (date(2027, 2, 4), date(2027, 2, 5))  # 5 Jan local + 30 days
    assert before["SUMMARY"].startswith("ITB refill due")
    # Still 4 February in UTC, but the clinic's day is the 5th: overdue there.
    assert after["SUMMARY"].startswith("OVERDUE")
    assert (after.start, after.end) == (date(2027, 2, 4), date(2027, 2, 6))


def test_a_pump_without_a_fill_is_due_at_once_under_fill_zero(clinic_a: Clinic) -> None:
    pump = implant(screened_patient(clinic=clinic_a))

    cal = calendar(issue(clinic_a))

    assert set(events(cal)) == {feeds.event_uid(feeds.REFILL, pump.pk, 0, DOMAIN)}
    assert events(cal)[refill_uid(pump)]["SUMMARY"].startswith("OVERDUE")


# ----------------------------------------------------------------------------- what a subscriber sees after changes


def test_a_dose_change_moves_the_event_under_the_same_uid_with_a_higher_sequence(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    before = events(calendar(feed, at=VISIT_AT - timedelta(hours=1)))[refill_uid(pump_a)]

    change_dose(pump_a, "250")  # 0.5 mL/day from the visit: refill by visit + 30 days
    after = events(calendar(feed, at=NOW))[refill_uid(pump_a)]

    assert after.uid == before.uid
    assert (before.start, after.start) == (date(2027, 2, 3), date(2027, 3, 3))
    assert after.sequence == before.sequence + 1
    assert after.DTSTAMP == after.last_modified == NOW > before.DTSTAMP
    # The alarm date moved too, under its own unchanged UID.
    alarm = events(calendar(feed, at=NOW))[alarm_uid(pump_a)]
    assert (alarm.start, alarm.sequence) == (date(2027, 3, 26), 1)


def test_refetching_an_unchanged_feed_gives_the_same_bytes_and_sequence(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    first = fetch(feed, at=NOW)
    later = fetch(feed, at=NOW + timedelta(hours=5))

    assert later.content == first.content
    assert later["ETag"] == first["ETag"]
    assert "private" in later["Cache-Control"] and "max-age=300" in later["Cache-Control"]
    assert fetch(feed, at=NOW + timedelta(hours=6), HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_fetches_at_once_publish_a_change_once(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    fetch(feed, at=VISIT_AT - timedelta(hours=1))
    change_dose(pump_a, "250")
    first_holds_lock, first_may_commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic():
                services.render_feed(feed, now=NOW)  # bumps the version and holds its row lock
                first_holds_lock.set()
                first_may_commit.wait(10)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            first_holds_lock.set()
        finally:
            connections.close_all()

    def second() -> None:
        try:
            services.render_feed(feed, now=NOW + timedelta(seconds=1))  # reads the old version, then waits
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    one, two = threading.Thread(target=first), threading.Thread(target=second)
    one.start()
    assert first_holds_lock.wait(10)
    two.start()
    with connection.cursor() as cursor:  # the second fetch is waiting for the row lock
        for _ in range(200):
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the second fetch never waited for the lock")
    first_may_commit.set()
    one.join(10)
    two.join(10)

    assert not errors
    assert PublishedEvent.objects.get(uid=refill_uid(pump_a)).sequence == 1  # not 2


def test_a_refill_replaces_the_event_with_a_new_uid_and_date(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    old_uid = refill_uid(pump_a)
    assert old_uid in events(calendar(feed, at=VISIT_AT - timedelta(hours=1)))

    fill(pump_a, at=VISIT_AT, volume_added_ml="40", withdrawn_ml="28.80")
    cal = calendar(feed, at=NOW)

    new_uid = refill_uid(pump_a)
    assert new_uid != old_uid
    assert old_uid not in events(cal)  # the client deletes the done refill
    assert set(events(cal)) == {new_uid, alarm_uid(pump_a)}
    assert events(cal)[new_uid].start == date(2027, 3, 3)  # titration: the visit + 30 days
    assert events(cal)[new_uid].sequence == 0


def test_an_explanted_pump_leaves_the_feed(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    assert events(calendar(feed))

    pump_services.end_pump(pump_a, status=PumpStatus.EXPLANTED, on=date(2027, 2, 1), reason="Infection", now=NOW)

    assert events(calendar(feed, at=NOW + timedelta(minutes=5))) == {}


# ----------------------------------------------------------------------------- the patient feed


def test_the_patient_feed_holds_only_that_patients_dates_in_english(clinic_a: Clinic, pump_a: Pump) -> None:
    clinic_a.phone = "+442071234567"
    clinic_a.save()
    other = implanted_pump(patient=screened_patient(clinic=clinic_a))

    cal = calendar(issue(clinic_a, pump_a.patient))

    assert set(events(cal)) == {refill_uid(pump_a, patient=True), alarm_uid(pump_a, patient=True)}
    assert other.pk not in pump_uids(cal)
    refill = events(cal)[refill_uid(pump_a, patient=True)]
    assert refill["SUMMARY"] == "Pump refill due"
    assert refill.start == date(2027, 2, 3)
    description = str(refill["DESCRIPTION"])
    assert "by 3 February 2027" in description
    assert "call Clinic A on +44 20 7123 4567" in description
    assert "go to a hospital at once" in description  # the withdrawal warning
    assert "does not replace them" in description
    assert refill.alarms  # calendar apps may ignore it: the description says so
    assert "baclofen" not in cal.to_ical().decode().lower()


def test_the_patient_feed_speaks_the_patients_language(clinic_a: Clinic) -> None:
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a, language=Language.SPANISH))

    cal = calendar(issue(clinic_a, pump.patient), at=datetime(2027, 2, 10, 12, tzinfo=UTC))

    refill = events(cal)[refill_uid(pump, patient=True)]
    assert cal["X-WR-CALNAME"] == "Clinic A: recargas de la bomba"
    assert refill["SUMMARY"] == "Recarga de la bomba atrasada: llame hoy a la clínica"
    assert "antes del 3 de febrero de 2027" in refill["DESCRIPTION"]
    assert "vaya al hospital de inmediato" in refill["DESCRIPTION"]


# ----------------------------------------------------------------------------- clinic scoping


def test_a_clinics_feed_never_contains_another_clinics_pumps(
    clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump, pump_b: Pump
) -> None:
    more_b = implanted_pump(patient=screened_patient(clinic=clinic_b))

    assert pump_uids(calendar(issue(clinic_a))) == {pump_a.pk}
    assert pump_uids(calendar(issue(clinic_b))) == {pump_b.pk, more_b.pk}
    assert pump_uids(calendar(issue(clinic_b, pump_b.patient))) == {pump_b.pk}


def test_a_patient_feed_stops_when_the_patient_moves_to_another_clinic(clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump) -> None:
    feed = issue(clinic_a, pump_a.patient)
    assert fetch(feed).status_code == 200

    Patient.objects.filter(pk=pump_a.patient.pk).update(clinic=clinic_b)

    assert fetch(feed).status_code == 404


def test_a_patient_feed_needs_a_patient_of_the_clinic(clinic_a: Clinic, clinic_b: Clinic, pump_b: Pump) -> None:
    with pytest.raises(ValidationError, match="not a patient of Clinic A") as raised:
        issue(clinic_a, pump_b.patient)
    assert list(raised.value.message_dict) == ["patient"]
    assert not CalendarFeed.objects.exists()


# ----------------------------------------------------------------------------- the signed, revocable URL


def test_a_revoked_feed_answers_404_at_once(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    assert fetch(feed).status_code == 200

    assert services.revoke_feed(feed, now=NOW)

    response = fetch(feed)
    assert response.status_code == 404
    assert response.content == b"Not found\n"


def test_rotating_revokes_the_old_url_and_issues_a_new_one(pump_a: Pump) -> None:
    old = issue(pump_a.patient.clinic, pump_a.patient)

    new = services.rotate_feed(old, by=None, now=NOW)

    assert fetch(old).status_code == 404
    assert services.feed_path(new) != services.feed_path(old)
    assert (new.clinic, new.patient, new.label) == (old.clinic, old.patient, old.label)
    assert pump_uids(calendar(new)) == {pump_a.pk}


def _tampered(feed: CalendarFeed) -> dict[str, str]:
    token = services.feed_token(feed)
    signature = token.rpartition(".")[2]
    other_sig = "A" if signature[-1] != "A" else "B"
    return {
        "last character changed": token[:-1] + other_sig,
        "another feed id, same signature": f"{feed.pk + 1}.{feed.nonce}.{signature}",
        "signed with another salt": signing.Signer(salt="elsewhere", sep=".").sign(f"{feed.pk}.{feed.nonce}"),
        "wrong nonce, validly signed": services._signer().sign(f"{feed.pk}.{'x' * 22}"),
        "unknown id, validly signed": services._signer().sign(f"{feed.pk + 1000}.{feed.nonce}"),
        "no signature": f"{feed.pk}.{feed.nonce}",
        "just the id": str(feed.pk),
    }


@pytest.mark.parametrize(
    "case",
    [
        "last character changed",
        "another feed id, same signature",
        "signed with another salt",
        "wrong nonce, validly signed",
        "unknown id, validly signed",
        "no signature",
        "just the id",
    ],
)
def test_a_forged_or_tampered_url_answers_404(case: str, pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)
    issue(pump_a.patient.clinic)  # the next id exists too

    response = Client().get(reverse("feeds:calendar", kwargs={"token": _tampered(feed)[case]}))

    assert response.status_code == 404
    assert response.content == b"Not found\n"


def test_the_feed_answers_only_reads(pump_a: Pump) -> None:
    assert Client().post(services.feed_path(issue(pump_a.patient.clinic))).status_code == 405


def test_it_notes_the_last_fetch_at_most_once_a_minute(pump_a: Pump) -> None:
    feed = issue(pump_a.patient.clinic)

    fetch(feed, at=NOW)
    fetch(feed, at=NOW + timedelta(seconds=30))
    feed.refresh_from_db()
    assert feed.last_fetched_at == NOW

    fetch(feed, at=NOW + timedelta(seconds=61))
    feed.refresh_from_db()
    assert feed.last_fetched_at == NOW + timedelta(seconds=61)


def _queries(feed: CalendarFeed, at: datetime) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert fetch(feed, at=at).status_code == 200
    return len(queries)


def test_a_feed_costs_the_same_queries_for_one_pump_as_for_five(clinic_a: Clinic, clinic_b: Clinic) -> None:
    implanted_pump(patient=screened_patient(clinic=clinic_a))
    for _ in range(5):
        implanted_pump(patient=screened_patient(clinic=clinic_b))
    one, five = issue(clinic_a), issue(clinic_b)

    # The first fetch (every event published), a refetch (nothing changed), and one on a
    # day when every refill is overdue (every refill event changed: bumped in bulk).
    assert _queries(one, NOW) == _queries(five, NOW)
    # Feed, pumps with their last fill, published versions, the last-fetch note.
    assert _queries(one, NOW + timedelta(minutes=2)) == _queries(five, NOW + timedelta(minutes=2)) == 4
    later = datetime(2027, 2, 10, 12, tzinfo=UTC)  # every refill now overdue: every event changes
    assert _queries(one, later) == _queries(five, later)
    assert len(calendar(five, at=later).events) == 10


# ----------------------------------------------------------------------------- the admin


FEED_ADD = reverse("admin:integrations_calendarfeed_add")
FEED_LIST = reverse("admin:integrations_calendarfeed_changelist")


def test_a_nurse_creates_a_staff_feed_and_sees_its_full_url(clinic_a: Clinic, pump_a: Pump, frozen_clock: None) -> None:
    nurse = staff((clinic_a, Role.NURSE))
    client = client_for(nurse)

    response = client.post(
        FEED_ADD, {"clinic": clinic_a.pk, "patient": "", "label": "Refill nurses", "_save": "Save"}, follow=True
    )

    assert response.redirect_chain[0][1] == 302
    feed = CalendarFeed.objects.get()
    shown = [str(m) for m in response.context["messages"]]
    assert f"Subscribe to {feed} at: http://127.0.0.1:8000{services.feed_path(feed)}" in shown
    assert (feed.clinic, feed.patient, feed.created_by, feed.created_at) == (clinic_a, None, nurse, NOW)
    page = client.get(reverse("admin:integrations_calendarfeed_change", args=[feed.pk])).content.decode()
    assert "http://127.0.0.1:8000" + services.feed_path(feed) in page
    assert fetch(feed).status_code == 200


def test_a_nurse_creates_a_feed_for_a_patient_of_the_clinic(clinic_a: Clinic, pump_a: Pump, frozen_clock: None) -> None:
    client = client_for(staff((clinic_a, Role.NURSE)))

    response = client.post(FEED_ADD, {"clinic": clinic_a.pk, "patient": pump_a.patient.pk, "label": "Patient", "_save": "Save"})

    assert response.status_code == 302
    assert CalendarFeed.objects.get().patient == pump_a.patient


def test_the_admin_refuses_a_patient_of_another_clinic_on_the_patient_field(
    clinic_a: Clinic, clinic_b: Clinic, pump_b: Pump, frozen_clock: None
) -> None:
    # A nurse of both clinics can pick either; the pair must still match.
    client = client_for(staff((clinic_a, Role.NURSE), (clinic_b, Role.NURSE)))

    response = client.post(FEED_ADD, {"clinic": clinic_a.pk, "patient": pump_b.patient.pk, "label": "x", "_save": "Save"})

    assert response.status_code == 200
    assert "not a patient of Clinic A" in " ".join(form_errors(response)["patient"])
    assert not CalendarFeed.objects.exists()


def test_a_nurse_revokes_a_feed_from_the_list(clinic_a: Clinic, pump_a: Pump, frozen_clock: None) -> None:
    feed = issue(clinic_a)
    client = client_for(staff((clinic_a, Role.NURSE)))

    response = client.post(FEED_LIST, {"action": "revoke", "_selected_action": [feed.pk]})

    assert response.status_code == 302
    feed.refresh_from_db()
    assert feed.revoked_at == NOW
    assert fetch(feed).status_code == 404
    page = client.get(reverse("admin:integrations_calendarfeed_change", args=[feed.pk])).content.decode()
    assert "Revoked: this address answers 404." in page
    assert services.feed_path(feed) not in page


def test_a_nurse_rotates_a_leaked_feed_from_the_list(clinic_a: Clinic, pump_a: Pump, frozen_clock: None) -> None:
    feed = issue(clinic_a, pump_a.patient)
    client = client_for(staff((clinic_a, Role.NURSE)))

    response = client.post(FEED_LIST, {"action": "rotate", "_selected_action": [feed.pk]}, follow=True)

    new = CalendarFeed.objects.get(revoked_at=None)
    assert new.pk != feed.pk and new.patient == pump_a.patient
    assert "http://127.0.0.1:8000" + services.feed_path(new) in response.content.decode()
    assert fetch(feed).status_code == 404
    assert fetch(new).status_code == 200


def test_another_clinics_staff_can_neither_see_nor_revoke_nor_create_a_feed(
    clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump, frozen_clock: None
) -> None:
    feed = issue(clinic_a)
    url = services.feed_path(feed)
    client = client_for(staff((clinic_b, Role.NURSE)))

    page = client.get(reverse("admin:integrations_calendarfeed_change", args=[feed.pk]), follow=True)
    assert page.redirect_chain == [(reverse("admin:index"), 302)]  # the admin's "doesn't exist"
    assert url not in page.content.decode()
    assert url not in client.get(FEED_LIST).content.decode()

    client.post(FEED_LIST, {"action": "revoke", "_selected_action": [feed.pk]})
    feed.refresh_from_db()
    assert feed.revoked_at is None

    response = client.post(FEED_ADD, {"clinic": clinic_a.pk, "patient": "", "label": "x", "_save": "Save"})
    assert "Select a valid choice" in " ".join(form_errors(response)["clinic"])
    assert CalendarFeed.objects.count() == 1


def test_a_viewer_sees_the_feed_but_cannot_create_or_revoke_one(clinic_a: Clinic, pump_a: Pump, frozen_clock: None) -> None:
    feed = issue(clinic_a)
    client = client_for(staff((clinic_a, Role.VIEWER)))

    assert client.get(reverse("admin:integrations_calendarfeed_change", args=[feed.pk])).status_code == 200
    assert client.get(FEED_ADD).status_code == 403
    client.post(FEED_LIST, {"action": "revoke", "_selected_action": [feed.pk]})
    feed.refresh_from_db()
    assert feed.revoked_at is None


# ----------------------------------------------------------------------------- pure building


@pytest.mark.parametrize(
    ("given", "family", "expected"),
    [("Alex", "Patient1", "A.P."), ("ana maría", "núñez", "A.N."), ("", "Smith", "S.")],
)
def test_initials(given: str, family: str, expected: str) -> None:
    assert feeds.initials(given, family) == expected


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2027, 2, 1), (date(2027, 2, 3), date(2027, 2, 4), False)),
        (date(2027, 2, 3), (date(2027, 2, 3), date(2027, 2, 4), False)),  # due today: not yet overdue
        (date(2027, 2, 5), (date(2027, 2, 3), date(2027, 2, 6), True)),
    ],
)
def test_refill_span(today: date, expected: tuple[date, date, bool]) -> None:
    assert feeds.refill_span(date(2027, 2, 3), today) == expected


def test_the_same_values_build_the_same_bytes() -> None:
    info = feeds.staff_calendar_info(uid="calendar-feed-1@x", clinic=feeds.ClinicInfo("Clinic", "", "UTC"))
    pump = feeds.PumpDates(1, 7, date(2027, 2, 3), date(2027, 4, 9), "Alex", "Smith", "https://pt/admin/pumps/pump/1/")
    drafts = feeds.staff_events([pump], clinic=feeds.ClinicInfo("Clinic", "", "UTC"), today=date(2027, 2, 1), domain="x")
    versions = {d.uid: feeds.Version(3, NOW) for d in drafts}

    assert feeds.build_calendar(info, drafts, versions) == feeds.build_calendar(info, list(reversed(drafts)), versions)
    assert b"DTSTART;VALUE=DATE:20270203" in feeds.build_calendar(info, drafts, versions)
