"""The staff admin through Django's test client: clinic scoping, the role matrix, the
two-step refill and dose-change forms, the pump list and the pump and patient pages.

The clock is frozen at NOW (the admin reads `timezone.now()`); records are made through
`pumps.services` by the builders in `factories.py`, so every stored date is the real code's.
Clinics are in UTC unless a test says otherwise, so typed times are UTC times.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from admin_support import NOW, VISIT_AT, client_for, form_errors, listed, refill_data, split_moment, staff
from django.urls import reverse
from factories import (
    IMPLANTED_AT,
    CaregiverFactory,
    PatientFactory,
    UserFactory,
    fill,
    implanted_pump,
    pump_model,
    screened_patient,
)

from patients.models import Clinic, Role
from pumps.models import Phase, Program, Pump, Refill

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

# ----------------------------------------------------------------------------- helpers


class _Elements(HTMLParser):
    """Text of every element whose attributes match, tracked by nesting depth."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, **wanted: str) -> None:
        super().__init__()
        self.wanted = wanted
        self.depth = 0
        self.open: list[tuple[int, list[str]]] = []
        self.found: list[str] = []

    def _matches(self, attrs: list[tuple[str, str | None]]) -> bool:
        values = dict(attrs)
        for name, value in self.wanted.items():
            have = (values.get(name) or "").split() if name == "class" else [values.get(name) or ""]
            if value not in have:
                return False
        return True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        self.depth += 1
        if self._matches(attrs):
            self.open.append((self.depth, []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if self.open and self.open[-1][0] == self.depth:
            _, parts = self.open.pop()
            # Cells and lines are separate words: join the pieces with a space.
            self.found.append(" ".join(" ".join(parts).split()))
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        for _, parts in self.open:
            parts.append(data)


def texts(html: str, **wanted: str) -> list[str]:
    """Whitespace-normalised text of the elements with these attributes (`class_` for class)."""
    parser = _Elements(**{k.rstrip("_"): v for k, v in wanted.items()})
    parser.feed(html)
    return parser.found


def text_of(html: str, element_id: str) -> str:
    (found,) = texts(html, id=element_id)
    return found


def preview_token(html: str) -> str:
    match = re.search(r'name="preview_token" value="([0-9a-f]{64})"', html)
    assert match, "no preview token in the page"
    return match.group(1)


def state_rows(html: str) -> dict[str, str]:
    """The pump page's "current state" table as {heading: text}."""
    table = re.search(r'<table class="pt-state">(.*?)</table>', html, re.S)
    assert table, "no state panel"
    rows = re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", table.group(1), re.S)
    return {th: " ".join(re.sub(r"<[^>]+>", "", td).split()) for th, td in rows}


def program_data(pump: Pump, *, at: datetime = VISIT_AT, token: str = "", **fields: Any) -> dict[str, Any]:
    moment = split_moment(at)
    data = {
        "pump": pump.pk,
        "effective_at_0": moment["0"],
        "effective_at_1": moment["1"],
        "mode": "simple",
        "dose_mcg_per_day": "300",
        "concentration_mcg_per_ml": "500",
        "flex_steps": "",
        "basal_mcg_per_day": "",
        "bolus_mcg": "",
        "boluses_per_day": "",
        "reason": "",
        "preview_token": token,
        "_save": "Save",
    }
    data.update(fields)
    return data


REFILL_ADD = reverse("admin:pumps_refill_add")
PROGRAM_ADD = reverse("admin:pumps_program_add")
PUMP_ADD = reverse("admin:pumps_pump_add")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def nurse(clinic_a: Clinic) -> Any:
    return staff((clinic_a, Role.NURSE))


@pytest.fixture
def clinician(clinic_a: Clinic) -> Any:
    return staff((clinic_a, Role.CLINICIAN))


# ----------------------------------------------------------------------------- clinic scoping


def _change_urls(pump: Pump) -> dict[str, str]:
    return {
        "patient": reverse("admin:patients_patient_change", args=[pump.patient.pk]),
        "pump": reverse("admin:pumps_pump_change", args=[pump.pk]),
        "refill": reverse("admin:pumps_refill_change", args=[pump.refills.get().pk]),
        "program": reverse("admin:pumps_program_change", args=[pump.programs.get().pk]),
    }


RECORDS = ["patient", "pump", "refill", "program"]


@pytest.mark.parametrize("record", RECORDS)
def test_it_opens_own_clinic_records(record: str, nurse: Any, pump_a: Pump) -> None:
    response = client_for(nurse).get(_change_urls(pump_a)[record])

    assert response.status_code == 200
    assert pump_a.serial_number in response.content.decode()


@pytest.mark.parametrize("record", ["patient", "pump", "refill", "program"])
def test_it_does_not_show_another_clinics_record(record: str, nurse: Any, pump_a: Pump, pump_b: Pump) -> None:
    response = client_for(nurse).get(_change_urls(pump_b)[record], follow=True)

    # Django's admin answers a record outside the queryset as if it did not exist.
    assert response.redirect_chain == [(reverse("admin:index"), 302)]
    assert "doesn’t exist" in response.content.decode()
    assert pump_b.serial_number not in response.content.decode()


def test_it_answers_404_for_another_clinics_pump_actions(nurse: Any, pump_b: Pump) -> None:
    client = client_for(nurse)
    assert client.post(reverse("admin:pumps_pump_phase", args=[pump_b.pk]), {"phase": "maintenance"}).status_code == 404
    assert client.get(reverse("admin:pumps_pump_end", args=[pump_b.pk])).status_code == 404


@pytest.mark.parametrize(
    ("changelist", "own"),
    [
        ("admin:patients_patient_changelist", lambda p: p.patient.pk),
        ("admin:pumps_pump_changelist", lambda p: p.pk),
        ("admin:pumps_refill_changelist", lambda p: p.refills.get().pk),
        ("admin:pumps_program_changelist", lambda p: p.programs.get().pk),
    ],
)
def test_it_lists_only_own_clinic_rows_for_staff_and_all_for_superusers(
    changelist: str, own: Any, nurse: Any, pump_a: Pump, pump_b: Pump
) -> None:
    assert listed(client_for(nurse).get(reverse(changelist))) == {own(pump_a)}

    superuser = UserFactory(is_staff=True, is_superuser=True)
    assert listed(client_for(superuser).get(reverse(changelist))) == {own(pump_a), own(pump_b)}


@pytest.mark.parametrize("record", RECORDS)
def test_it_lets_a_superuser_open_every_clinics_records(record: str, pump_a: Pump, pump_b: Pump) -> None:
    client = client_for(UserFactory(is_staff=True, is_superuser=True))
    for pump in (pump_a, pump_b):
        assert client.get(_change_urls(pump)[record]).status_code == 200


def test_it_offers_only_own_clinic_pumps_in_the_refill_form(nurse: Any, pump_a: Pump, pump_b: Pump) -> None:
    client = client_for(nurse)
    response = client.get(REFILL_ADD)
    assert set(response.context["adminform"].form.fields["pump"].queryset) == {pump_a}

    response = client.post(REFILL_ADD, refill_data(pump_b))

    assert response.status_code == 200
    assert any("Select a valid choice" in e for e in form_errors(response)["pump"])
    assert pump_b.refills.count() == 1  # only the initial fill


# ----------------------------------------------------------------------------- role matrix


def test_it_lets_a_viewer_look_but_not_record_a_refill(clinic_a: Clinic, pump_a: Pump) -> None:
    client = client_for(staff((clinic_a, Role.VIEWER)))

    pump_page = client.get(reverse("admin:pumps_pump_change", args=[pump_a.pk]))
    assert pump_page.status_code == 200
    assert "Record refill" not in pump_page.content.decode()
    assert client.get(REFILL_ADD).status_code == 403
    assert client.post(REFILL_ADD, refill_data(pump_a)).status_code == 403
    assert pump_a.refills.count() == 1


def test_it_lets_a_nurse_record_refills_but_not_change_the_dose(nurse: Any, pump_a: Pump) -> None:
    client = client_for(nurse)

    assert client.get(PROGRAM_ADD).status_code == 403
    assert client.post(PROGRAM_ADD, program_data(pump_a)).status_code == 403
    assert client.get(REFILL_ADD + f"?pump={pump_a.pk}").status_code == 200
    pump_page = client.get(reverse("admin:pumps_pump_change", args=[pump_a.pk])).content.decode()
    assert "Record refill" in pump_page
    assert "Change dose" not in pump_page
    assert pump_a.programs.count() == 1


def test_it_lets_only_a_clinician_record_the_stable_dose(nurse: Any, clinician: Any, pump_a: Pump) -> None:
    url = reverse("admin:pumps_pump_phase", args=[pump_a.pk])
    # Titration: refill by the fill date + 30 days (the alarm date, 2027-04-09, is later).
    assert pump_a.refill_by == date(2027, 2, 3)

    response = client_for(nurse).post(url, {"phase": "maintenance"}, follow=True)
    assert "Only a clinician may record the stable dose." in response.content.decode()
    pump_a.refresh_from_db()
    assert (pump_a.phase, pump_a.refill_by, pump_a.stable_dose_at) == (Phase.TITRATION, date(2027, 2, 3), None)

    client_for(clinician).post(url, {"phase": "maintenance"})
    pump_a.refresh_from_db()
    assert pump_a.phase == Phase.MAINTENANCE
    assert pump_a.stable_dose_at == NOW
    # Maintenance: fill date + 90 days, before the alarm date − 3 days (2027-04-06).
    assert pump_a.refill_by == date(2027, 4, 4)


# ----------------------------------------------------------------------------- refill form


def test_it_shows_the_refill_result_before_saving_it(nurse: Any, pump_a: Pump) -> None:
    client = client_for(nurse)

    response = client.post(REFILL_ADD, refill_data(pump_a, withdrawn_ml="28.50"))

    assert response.status_code == 200
    assert pump_a.refills.count() == 1
    html = response.content.decode()
    assert "Check the computed result below, then press Save again" in html
    # 28 days at 0.4 mL/day: 11.2 mL delivered, 28.80 mL expected; band 14.5 % × 11.2 mL.
    assert "Expected residual 28.80 mL" in texts(html, class_="pt-preview")[0]
    assert text_of(html, "pt-discrepancy").startswith("-0.30 mL (less withdrawn than expected;")
    assert "±1.62 mL" in text_of(html, "pt-discrepancy")
    assert "Discrepancy flagged" not in html
    # 38 mL above the alarm at 0.4 mL/day: 95 days; refill by the visit + 30 (titration).
    assert text_of(html, "pt-alarm-on") == "2027-05-07"
    assert text_of(html, "pt-refill-by") == "2027-03-03"

    response = client.post(REFILL_ADD, refill_data(pump_a, withdrawn_ml="28.50", token=preview_token(html)))

    assert response.status_code == 302
    refill = pump_a.refills.get(is_initial_fill=False)
    assert (refill.performed_at, refill.withdrawn_ml, refill.discrepancy_ml) == (VISIT_AT, Decimal("28.50"), Decimal("-0.30"))
    assert refill.performed_by == nurse
    pump_a.refresh_from_db()
    assert (pump_a.alarm_on, pump_a.refill_by) == (date(2027, 5, 7), date(2027, 3, 3))


def test_it_wants_a_new_preview_when_an_input_changed(nurse: Any, pump_a: Pump) -> None:
    client = client_for(nurse)
    first = client.post(REFILL_ADD, refill_data(pump_a, withdrawn_ml="28.50"))
    token = preview_token(first.content.decode())

    response = client.post(REFILL_ADD, refill_data(pump_a, withdrawn_ml="25.00", token=token))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Check the computed result below, then press Save again" in html
    assert text_of(html, "pt-discrepancy").startswith("-3.80 mL")
    assert preview_token(html) != token
    assert pump_a.refills.count() == 1
    pump_a.refresh_from_db()
    assert pump_a.refill_by == date(2027, 2, 3)


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("volume_added_ml", {"volume_added_ml": "40.01"}, "Exceeds the reservoir capacity of 40 mL."),
        ("performed_at", {"at": NOW + timedelta(minutes=5)}, "Cannot be in the future."),
        ("performed_at", {"at": IMPLANTED_AT - timedelta(days=1)}, "Cannot be before the implant (2027-01-04 09:00)."),
        ("concentration_mcg_per_ml", {"concentration_mcg_per_ml": "0"}, "The concentration must be positive."),
        ("withdrawn_ml", {"withdrawn_ml": "-1"}, "A volume cannot be negative."),
    ],
)
def test_it_names_the_bad_refill_field_and_writes_nothing(
    field: str, bad: dict[str, Any], message: str, nurse: Any, pump_a: Pump
) -> None:
    client = client_for(nurse)
    first = client.post(REFILL_ADD, refill_data(pump_a, **bad))
    assert message in form_errors(first).get(field, [])

    # Even with a token from a good preview, the bad input is refused.
    good = client.post(REFILL_ADD, refill_data(pump_a))
    response = client.post(REFILL_ADD, refill_data(pump_a, token=preview_token(good.content.decode()), **bad))

    assert response.status_code == 200
    assert message in form_errors(response).get(field, [])
    assert pump_a.refills.count() == 1
    assert Refill.objects.count() == 1


def test_it_reads_typed_times_in_the_clinics_time_zone(pump_a: Pump) -> None:
    clinic = pump_a.patient.clinic
    clinic.time_zone = "Europe/Madrid"  # UTC+1 in February
    clinic.save()
    client = client_for(staff((clinic, Role.NURSE)))
    data = refill_data(pump_a, performed_at_0="2027-02-01", performed_at_1="10:00:00")

    first = client.post(REFILL_ADD, data)
    assert "Times are in Europe/Madrid." in first.content.decode()
    client.post(REFILL_ADD, {**data, "preview_token": preview_token(first.content.decode())})

    assert pump_a.refills.get(is_initial_fill=False).performed_at == VISIT_AT  # 09:00 UTC


# ----------------------------------------------------------------------------- dose change


def test_it_refuses_a_tripping_dose_change_until_acknowledged_with_a_reason(clinician: Any, pump_a: Pump) -> None:
    client = client_for(clinician)
    # 200 -> 300 mcg/day in titration: +50 % against a 30 % limit (spinal origin).
    first = client.post(PROGRAM_ADD, program_data(pump_a, dose_mcg_per_day="300"))
    html = first.content.decode()
    assert first.status_code == 200
    assert "This change trips safety rules." in html
    assert "increase_over_limit" in texts(html, class_="pt-warnings")[0]
    assert text_of(html, "pt-dose") == "300 mcg/day (50.0 %)"
    assert form_errors(first)["acknowledged_warnings"] == ["Tick to acknowledge: increase_over_limit."]
    token = preview_token(html)

    not_ticked = client.post(PROGRAM_ADD, program_data(pump_a, token=token, reason="Spasms at night."))
    assert form_errors(not_ticked)["acknowledged_warnings"] == ["Tick to acknowledge: increase_over_limit."]

    no_reason = client.post(PROGRAM_ADD, program_data(pump_a, token=token, acknowledged_warnings=["increase_over_limit"]))
    assert form_errors(no_reason)["reason"] == ["Give a reason for acknowledging the warnings."]
    assert pump_a.programs.count() == 1

    saved = client.post(
        PROGRAM_ADD,
        program_data(pump_a, token=token, acknowledged_warnings=["increase_over_limit"], reason="Spasms at night."),
    )

    assert saved.status_code == 302
    program = pump_a.programs.latest("effective_at")
    assert program.dose_mcg_per_day == Decimal("300")
    assert program.previous_dose_mcg_per_day == Decimal("200")
    assert program.acknowledged_warnings == ["increase_over_limit"]
    assert program.reason == "Spasms at night."
    assert program.author == clinician
    assert Program.objects.count() == 2


def test_it_refuses_an_unmarketed_refill_strength_until_acknowledged(nurse: Any, pump_a: Pump) -> None:
    client = client_for(nurse)
    data = refill_data(pump_a, concentration_mcg_per_ml="250")  # in the pump's range, not a marketed strength

    first = client.post(REFILL_ADD, data)
    assert form_errors(first)["acknowledged_warnings"] == ["Tick to acknowledge: concentration_unusual."]
    token = preview_token(first.content.decode())
    saved = client.post(
        REFILL_ADD, {**data, "preview_token": token, "acknowledged_warnings": ["concentration_unusual"], "reason": "Diluted."}
    )

    assert saved.status_code == 302
    refill = pump_a.refills.get(is_initial_fill=False)
    assert refill.acknowledged_warnings == ["concentration_unusual"]
    # Same dose at the new strength: the pump is re-programmed at the fill.
    program = pump_a.programs.latest("effective_at")
    assert (program.effective_at, program.dose_mcg_per_day, program.concentration_mcg_per_ml) == (
        VISIT_AT,
        Decimal("200"),
        Decimal("250"),
    )


def test_it_saves_a_dose_change_within_limits_without_acknowledgement(clinician: Any, pump_a: Pump) -> None:
    client = client_for(clinician)
    data = program_data(pump_a, dose_mcg_per_day="240")  # +20 %
    first = client.post(PROGRAM_ADD, data)
    assert "acknowledged_warnings" not in form_errors(first)

    assert client.post(PROGRAM_ADD, {**data, "preview_token": preview_token(first.content.decode())}).status_code == 302
    assert pump_a.programs.latest("effective_at").acknowledged_warnings == []


# ----------------------------------------------------------------------------- pump list


@pytest.fixture
def pump_list(clinic_a: Clinic) -> dict[str, Pump]:
    """Pumps of clinic A in each state the list filters on, as of NOW (2027-02-01 12:00)."""

    def pump(mrn: str, family_name: str, days_ago: int, **kwargs: Any) -> Pump:
        patient = screened_patient(clinic=clinic_a, mrn=mrn, family_name=family_name)
        return implanted_pump(patient=patient, implanted_at=NOW - timedelta(days=days_ago), **kwargs)

    return {
        # Titration, 0.4 mL/day: refill by the fill + 30 days.
        "overdue": pump("MRN-OVER", "Abara", 40),  # refill by 2027-01-22
        "due_soon": pump("MRN-SOON", "Brandt", 25),  # refill by 2027-02-06
        "later": pump("MRN-LATER", "Castillo", 5),  # refill by 2027-02-26
        # 20 mL at 50 mcg/mL, 4 mL/day: the alarm after 4 days (2027-01-30), refill by 2027-01-27.
        "alarm": pump("MRN-ALARM", "Dubois", 6, model_number="8637-20", concentration_mcg_per_ml="50"),
        # Maintenance: refill by the fill + 90 days.
        "maintenance": pump("MRN-MAINT", "Eze", 5, phase=Phase.MAINTENANCE),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("due=overdue", {"overdue", "alarm"}),
        ("due=7", {"due_soon"}),
        ("due=alarm", {"alarm"}),
        ("due=30", {"due_soon", "later"}),
        ("phase=maintenance", {"maintenance"}),
        ("phase=titration", {"overdue", "due_soon", "later", "alarm"}),
        ("q=MRN-SOON", {"due_soon"}),
        ("q=Castillo", {"later"}),
        ("q=castillo", {"later"}),
    ],
)
def test_it_filters_and_searches_the_pump_list(query: str, expected: set[str], nurse: Any, pump_list: dict[str, Pump]) -> None:
    assert pump_list["overdue"].refill_by == date(2027, 1, 22)
    assert (pump_list["alarm"].alarm_on, pump_list["alarm"].refill_by) == (date(2027, 1, 30), date(2027, 1, 27))

    response = client_for(nurse).get(reverse("admin:pumps_pump_changelist") + "?" + query)

    assert listed(response) == {pump_list[name].pk for name in expected}


def test_it_filters_the_pump_list_by_model_and_finds_a_serial_number(nurse: Any, pump_list: dict[str, Pump]) -> None:
    client = client_for(nurse)
    url = reverse("admin:pumps_pump_changelist")

    assert listed(client.get(url, {"model__id__exact": pump_model("8637-20").pk})) == {pump_list["alarm"].pk}
    later = pump_list["later"]
    assert listed(client.get(url, {"q": later.serial_number})) == {later.pk}


def test_it_marks_overdue_refill_dates_and_flagged_last_refills_in_the_list(nurse: Any, pump_list: dict[str, Pump]) -> None:
    fill(pump_list["later"], at=NOW - timedelta(hours=1), withdrawn_ml="30.00", volume_added_ml="40")  # expected 38.00
    html = client_for(nurse).get(reverse("admin:pumps_pump_changelist")).content.decode()

    assert "2027-01-22" in texts(html, class_="pt-overdue")
    assert "2027-02-06" in texts(html, class_="pt-due")
    assert texts(html, class_="pt-flag") == ["⚑ flagged"]


# ----------------------------------------------------------------------------- pump and patient pages


def test_it_shows_the_pump_state_and_highlights_a_flagged_refill(nurse: Any, pump_a: Pump) -> None:
    # 28.80 mL expected, 25.00 withdrawn: -3.80 mL, beyond 2 mL.
    flagged = fill(pump_a, at=VISIT_AT, withdrawn_ml="25.00", volume_added_ml="40")
    assert flagged.discrepancy_flagged

    html = client_for(nurse).get(reverse("admin:pumps_pump_change", args=[pump_a.pk])).content.decode()

    state = state_rows(html)
    assert state["Phase"] == "Titration"
    assert state["Current programming"] == "200 mcg/day at 500 mcg/mL, Simple continuous (since 2027-01-04 09:00)"
    # 3 hours at 0.4 mL/day since the 40 mL fill: 0.05 mL delivered.
    assert state["Expected volume now"] == "39.95 mL of 40 mL"
    assert state["Low-reservoir alarm date"] == "2027-05-07 (alarm at 2.00 mL)"
    assert state["Refill by"] == "2027-03-03"
    (row,) = texts(html, class_="pt-flagged")
    assert row.startswith("2027-02-01 09:00 25.00 28.80 -3.80 ⚑ flagged 40.00 500 2027-05-07 2027-03-03")


def test_it_lists_caregivers_pumps_and_screening_trials_on_the_patient_page(nurse: Any, clinic_a: Clinic) -> None:
    patient = screened_patient(clinic=clinic_a, family_name="Okafor")
    CaregiverFactory(patient=patient, name="Grace Okafor", relationship="daughter")
    pump = implanted_pump(patient=patient)

    html = client_for(nurse).get(reverse("admin:patients_patient_change", args=[patient.pk])).content.decode()

    assert 'value="Grace Okafor"' in html
    assert 'value="daughter"' in html
    pump_url = reverse("admin:pumps_pump_change", args=[pump.pk])
    assert f'<li><a href="{pump_url}">{pump}</a>: Active, Titration, refill by 2027-02-03</li>' in html
    assert "<li>100 mcg on 2026-12-21: Positive</li>" in html
    assert "Eligible for implant" in html or "eligible for implant" in html


def _implant_data(patient_pk: int, serial: str) -> dict[str, Any]:
    moment = split_moment(NOW - timedelta(hours=1))
    return {
        "patient": patient_pk,
        "model": pump_model("8637-40").pk,
        "serial_number": serial,
        "udi": "",
        "implanted_at_0": moment["0"],
        "implanted_at_1": moment["1"],
        "implanting_physician": "Dr Adeyemi",
        "following_physician": "",
        "low_reservoir_alarm_ml": "",
        "estimated_end_of_service_on": "",
        "_save": "Save",
    }


def test_it_refuses_to_implant_a_pump_without_a_positive_screening(nurse: Any, clinic_a: Clinic) -> None:
    patient = PatientFactory(clinic=clinic_a)

    response = client_for(nurse).post(PUMP_ADD, _implant_data(patient.pk, "NGP100001H"))

    assert response.status_code == 200
    assert form_errors(response)["patient"] == [
        "No positive screening trial before this implant is on record: the patient is not eligible."
    ]
    assert not Pump.objects.filter(patient=patient).exists()


def test_it_implants_a_pump_for_a_patient_screened_elsewhere(nurse: Any, clinic_a: Clinic) -> None:
    patient = PatientFactory(clinic=clinic_a, screened_elsewhere=True)

    response = client_for(nurse).post(PUMP_ADD, _implant_data(patient.pk, "NGP100002H"))

    assert response.status_code == 302
    pump = Pump.objects.get(patient=patient)
    assert (pump.serial_number, pump.low_reservoir_alarm_ml) == ("NGP100002H", Decimal("2.00"))
