"""Regression tests for the review fixes of commit 1a0f520, one behaviour each.

Each test fails on the code before that commit. Most go through the admin with Django's
test client (the clock frozen at NOW, as the admin reads `timezone.now()`); the rest call
`pumps.services` or `pumps.domain` directly. Records are made by the builders in
`factories.py`, so every stored date is the real code's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import admin_support
import pytest
import time_machine
from admin_support import NOW, VISIT_AT, as_shown, client_for, form_errors, listed, staff
from django.contrib import admin
from django.db.models.signals import pre_save
from django.test import RequestFactory
from django.urls import reverse
from factories import (
    IMPLANTED_AT,
    ClinicFactory,
    PatientFactory,
    fill,
    implant,
    implanted_pump,
    screened_patient,
)

from patients.admin import CaregiverInline
from patients.models import Caregiver, Clinic, Patient, Role, SpasticityOrigin
from pumps import domain, services
from pumps.models import Catheter, Phase, Program, Pump, PumpStatus, Refill

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_clock")]

REFILL_ADD = reverse("admin:pumps_refill_add")
PROGRAM_ADD = reverse("admin:pumps_program_add")
PATIENT_ADD = reverse("admin:patients_patient_add")
PUMP_LIST = reverse("admin:pumps_pump_changelist")


# ----------------------------------------------------------------------------- helpers


def management(prefix: str, total: int = 0) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def new_patient(clinic: Clinic, **fields: str) -> dict[str, str]:
    """The patient add form as a nurse fills it in."""
    return {
        "clinic": str(clinic.pk),
        "mrn": "MRN-NEW",
        "given_name": "Sam",
        "family_name": "Reyes",
        "birth_date": "1975-03-02",
        "diagnosis": "ms",
        "spasticity_origin": "spinal",
        "email": "",
        "phone": "",
        "language": "en",
        "time_zone": "",
        "contact_by_email": "on",
        "contact_by_sms": "on",
        **management("caregivers"),
        "_save": "Save",
        **fields,
    }


def refill_data(pump: Pump, performed_at: tuple[str, str], token: str = "") -> dict[str, Any]:
    """The refill add form; `performed_at` is (date, time) as typed."""
    date_typed, time_typed = performed_at
    return admin_support.refill_data(
        pump, token=token, performed_at_0=date_typed, performed_at_1=time_typed, withdrawn_ml="29.15"
    )


def preview_token(response: Any) -> str:
    token = response.context["adminform"].form.data.get("preview_token", "")
    assert len(token) == 64, "no preview token in the page"
    return str(token)


def pump_page(pump: Pump) -> str:
    return reverse("admin:pumps_pump_change", args=[pump.pk])


def patient_page(patient: Patient) -> str:
    return reverse("admin:patients_patient_change", args=[patient.pk])


@contextmanager
def during_first_pump_save(action: Callable[[], None]) -> Iterator[None]:
    """Run `action` once, at the moment a Pump row is about to be written.

    That is after the admin has read the pump for its page and before it writes it: the
    moment another member of staff's refill or dose change would have to land to be lost.
    """
    fired = False

    def receiver(**kwargs: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            action()

    pre_save.connect(receiver, sender=Pump, weak=False)
    try:
        yield
    finally:
        pre_save.disconnect(receiver, sender=Pump)
    assert fired, "the pump was never saved"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def nurse_a_viewer_b(clinic_a: Clinic, clinic_b: Clinic) -> Any:
    return staff((clinic_a, Role.NURSE), (clinic_b, Role.VIEWER))


# ----------------------------------------------------------------------------- 1. writes only where the role may write


def test_it_offers_no_pumps_of_a_clinic_where_the_nurse_is_a_viewer(nurse_a_viewer_b: Any, pump_a: Pump, pump_b: Pump) -> None:
    response = client_for(nurse_a_viewer_b).get(REFILL_ADD)

    assert set(response.context["adminform"].form.fields["pump"].queryset) == {pump_a}


def test_it_refuses_a_refill_on_a_pump_of_a_clinic_where_the_nurse_is_a_viewer(nurse_a_viewer_b: Any, pump_b: Pump) -> None:
    response = client_for(nurse_a_viewer_b).post(REFILL_ADD, refill_data(pump_b, ("2027-01-31", "12:00:00")))

    assert response.status_code == 200
    assert any("Select a valid choice" in e for e in form_errors(response)["pump"])
    assert pump_b.refills.count() == 1  # only the initial fill


def test_it_refuses_a_patient_in_a_clinic_where_the_nurse_is_a_viewer(
    nurse_a_viewer_b: Any, clinic_a: Clinic, clinic_b: Clinic
) -> None:
    client = client_for(nurse_a_viewer_b)

    response = client.post(PATIENT_ADD, new_patient(clinic_b))

    assert response.status_code == 200
    assert any("Select a valid choice" in e for e in form_errors(response)["clinic"])
    assert not Patient.objects.filter(mrn="MRN-NEW").exists()
    assert set(client.get(PATIENT_ADD).context["adminform"].form.fields["clinic"].queryset) == {clinic_a}


def test_it_refuses_caregiver_rows_on_a_patient_of_a_clinic_where_the_nurse_is_a_viewer(
    nurse_a_viewer_b: Any, clinic_a: Clinic, clinic_b: Clinic
) -> None:
    # Over HTTP the viewer's patient page is read-only as a whole (the parent's permission);
    # the inline's own permissions must say the same, in the parent's clinic.
    request = RequestFactory().get("/")
    request.user = nurse_a_viewer_b
    inline = CaregiverInline(Patient, admin.site)
    own, other = PatientFactory(clinic=clinic_a), PatientFactory(clinic=clinic_b)

    assert (inline.has_add_permission(request, own), inline.has_change_permission(request, own)) == (True, True)
    assert (inline.has_add_permission(request, other), inline.has_change_permission(request, other)) == (False, False)
    assert not inline.has_delete_permission(request, other)

    client = client_for(nurse_a_viewer_b)
    data = {
        **as_shown(client.get(patient_page(other))),
        **management("caregivers", total=1),
        "caregivers-0-name": "Grace Okafor",
        "caregivers-0-patient": str(other.pk),
    }
    assert client.post(patient_page(other), data).status_code == 403
    assert not Caregiver.objects.filter(patient=other).exists()


# ----------------------------------------------------------------------------- 2. no prefill from another clinic's pump


@pytest.mark.parametrize("role_in_b", [None, Role.VIEWER], ids=["not a member", "viewer"])
def test_it_does_not_prefill_the_dose_change_from_another_clinics_pump(
    role_in_b: str | None, clinic_a: Clinic, clinic_b: Clinic, pump_a: Pump, pump_b: Pump
) -> None:
    clinician = staff((clinic_a, Role.CLINICIAN), *([(clinic_b, role_in_b)] if role_in_b else []))
    client = client_for(clinician)

    own = client.get(PROGRAM_ADD, {"pump": pump_a.pk}).context["adminform"].form.initial
    assert (own["dose_mcg_per_day"], own["concentration_mcg_per_ml"]) == (Decimal("200"), Decimal("500"))

    response = client.get(PROGRAM_ADD, {"pump": pump_b.pk})

    initial = response.context["adminform"].form.initial
    assert {"dose_mcg_per_day", "concentration_mcg_per_ml", "mode"} & set(initial) == set()
    assert 'name="dose_mcg_per_day" value="200' not in response.content.decode()


# ----------------------------------------------------------------------------- 3. pump page saves only what it changed


def test_it_keeps_a_dose_change_saved_while_the_pump_page_is_saved(clinic_a: Clinic, pump_a: Pump) -> None:
    clinician = staff((clinic_a, Role.CLINICIAN))
    client = client_for(clinician)
    data = as_shown(client.get(pump_page(pump_a)), following_physician="Dr Osei")
    assert pump_a.refill_by == date(2027, 2, 3)  # the fill + 30 days (titration)

    def dose_increase() -> None:
        # 200 -> 240 mcg/day (+20 %): the visit + 30 days, before the new alarm date − 3 (2027-03-25).
        services.change_program(
            pump_a,
            services.ProgramInput(
                effective_at=VISIT_AT, dose_mcg_per_day=Decimal("240"), concentration_mcg_per_ml=Decimal("500")
            ),
            by=clinician,
            now=NOW,
        )

    with during_first_pump_save(dose_increase):
        response = client.post(pump_page(pump_a), data)

    assert response.status_code == 302
    pump_a.refresh_from_db()
    assert pump_a.following_physician == "Dr Osei"
    assert (pump_a.alarm_on, pump_a.refill_by) == (date(2027, 3, 28), date(2027, 3, 3))


@pytest.mark.parametrize("alarm_ml", ["40", "45.5"])
def test_it_names_an_alarm_volume_at_or_above_the_capacity_on_the_pump_page(
    alarm_ml: str, clinic_a: Clinic, pump_a: Pump
) -> None:
    client = client_for(staff((clinic_a, Role.NURSE)))

    response = client.post(pump_page(pump_a), as_shown(client.get(pump_page(pump_a)), low_reservoir_alarm_ml=alarm_ml))

    assert response.status_code == 200
    assert form_errors(response)["low_reservoir_alarm_ml"] == ["Must be between 0 and 40 mL."]
    pump_a.refresh_from_db()
    assert pump_a.low_reservoir_alarm_ml == Decimal("2.00")


# ----------------------------------------------------------------------------- 4. typed times in the pump's clinic zone


def test_it_reads_a_typed_refill_time_in_the_pumps_clinic_zone_not_the_first_clinics() -> None:
    la = ClinicFactory(name="LA", time_zone="America/Los_Angeles")  # first by name: the page's active zone
    sydney = ClinicFactory(name="Sydney", time_zone="Australia/Sydney")
    pump = implanted_pump(patient=screened_patient(clinic=sydney))
    client = client_for(staff((la, Role.NURSE), (sydney, Role.NURSE)))
    typed = ("2027-01-31", "23:00:00")

    first = client.post(REFILL_ADD, refill_data(pump, typed))
    saved = client.post(REFILL_ADD, refill_data(pump, typed, token=preview_token(first)))

    assert saved.status_code == 302
    refill = pump.refills.get(is_initial_fill=False)
    # 23:00 in Sydney (UTC+11 in summer) is 12:00 UTC; read in Los Angeles it would be 07:00 UTC the next day.
    assert refill.performed_at == datetime(2027, 1, 31, 12, 0, tzinfo=UTC)
    assert refill.performed_at == datetime(2027, 1, 31, 23, 0, tzinfo=ZoneInfo("Australia/Sydney"))
    assert "Times are in Australia/Sydney." in first.content.decode()


# ----------------------------------------------------------------------------- 5. each clinic's own today


@pytest.mark.parametrize(("query", "expected"), [("due=overdue", {"Auckland"}), ("due=7", {"Los Angeles"})])
def test_it_filters_refill_due_by_each_clinics_own_today(query: str, expected: set[str]) -> None:
    clinics = {
        "Auckland": ClinicFactory(name="Auckland", time_zone="Pacific/Auckland"),
        "Los Angeles": ClinicFactory(name="Los Angeles", time_zone="America/Los_Angeles"),
    }
    pumps = {name: implanted_pump(patient=screened_patient(clinic=clinic)) for name, clinic in clinics.items()}
    Pump.objects.filter(pk__in=[p.pk for p in pumps.values()]).update(refill_by=date(2027, 3, 1))
    nurse = staff(*((clinic, Role.NURSE) for clinic in clinics.values()))

    # 13:30 UTC: already 2027-03-02 02:30 in Auckland, still 2027-03-01 05:30 in Los Angeles.
    with time_machine.travel(datetime(2027, 3, 1, 13, 30, tzinfo=UTC), tick=False):
        response = client_for(nurse).get(f"{PUMP_LIST}?{query}")

    assert listed(response) == {pumps[name].pk for name in expected}


# ----------------------------------------------------------------------------- 6. alarm volume


def _maintenance_pump() -> Pump:
    pump = implanted_pump(phase=Phase.MAINTENANCE)
    # 38 mL above the 2 mL alarm at 0.4 mL/day: 95 days; refill by the fill + 90 days.
    assert (pump.alarm_on, pump.refill_by) == (date(2027, 4, 9), date(2027, 4, 4))
    return pump


def test_a_higher_alarm_volume_brings_the_alarm_and_refill_dates_forward_at_once() -> None:
    pump = _maintenance_pump()

    services.set_low_reservoir_alarm(pump, Decimal("8"))

    pump.refresh_from_db()
    days = int(((Decimal("40") - Decimal("8")) / Decimal("0.4")).to_integral_value(rounding=ROUND_FLOOR))
    assert days == 80
    assert pump.alarm_on == IMPLANTED_AT.date() + timedelta(days=days) == date(2027, 3, 25)
    assert pump.refill_by == date(2027, 3, 22)  # the alarm date − 3 days, before the fill + 90
    assert pump.low_reservoir_alarm_ml == Decimal("8.00")


def test_a_lower_alarm_volume_keeps_the_current_dates_until_the_next_fill() -> None:
    pump = _maintenance_pump()

    services.set_low_reservoir_alarm(pump, Decimal("1"))

    pump.refresh_from_db()
    assert (pump.alarm_on, pump.refill_by, pump.low_reservoir_alarm_ml) == (date(2027, 4, 9), date(2027, 4, 4), Decimal("1.00"))


# ----------------------------------------------------------------------------- 7. unfilled active pumps are due now


@pytest.mark.parametrize(
    "recorded",
    ["nothing", "a program"],
)
def test_an_active_pump_with_no_fill_is_due_on_its_implant_date(recorded: str) -> None:
    auckland = ClinicFactory(time_zone="Pacific/Auckland")
    implanted_at = NOW - timedelta(days=1)  # 2027-01-31 12:00 UTC, 2027-02-01 01:00 in Auckland
    pump = implant(screened_patient(clinic=auckland), implanted_at=implanted_at)
    if recorded == "a program":
        services.change_program(
            pump,
            services.ProgramInput(
                effective_at=implanted_at, dose_mcg_per_day=Decimal("200"), concentration_mcg_per_ml=Decimal("500")
            ),
            by=None,
            now=implanted_at,
        )

    pump.refresh_from_db()
    assert pump.refill_by == date(2027, 2, 1)  # the implant's date in the clinic, not in UTC
    # NOW is 2027-02-02 01:00 in Auckland: the next day, so overdue.
    assert listed(client_for(staff((auckland, Role.NURSE))).get(f"{PUMP_LIST}?due=overdue")) == {pump.pk}


def test_an_explanted_pump_that_was_never_filled_has_no_refill_date(clinic_a: Clinic) -> None:
    pump = implant(screened_patient(clinic=clinic_a), implanted_at=NOW - timedelta(days=1))
    services.change_program(
        pump,
        services.ProgramInput(
            effective_at=pump.implanted_at, dose_mcg_per_day=Decimal("200"), concentration_mcg_per_ml=Decimal("500")
        ),
        by=None,
        now=pump.implanted_at,
    )
    pump.refresh_from_db()
    assert pump.refill_by == date(2027, 1, 31)
    end = reverse("admin:pumps_pump_end", args=[pump.pk])

    response = client_for(staff((clinic_a, Role.NURSE))).post(
        end, {"status": PumpStatus.EXPLANTED, "explanted_on": "2027-02-01", "explant_reason": "Infection"}
    )

    assert response.status_code == 302
    pump.refresh_from_db()
    assert (pump.status, pump.refill_by, pump.alarm_on) == (PumpStatus.EXPLANTED, None, None)


# ----------------------------------------------------------------------------- 8. clinician-only patient facts


# Facts the dose rules and the implant rule depend on.
CLINICAL_FIELDS = {"screened_elsewhere", "spasticity_origin", "birth_date", "diagnosis"}


@pytest.mark.parametrize(
    ("role", "origin_after"),
    [(Role.NURSE, SpasticityOrigin.SPINAL), (Role.CLINICIAN, SpasticityOrigin.CEREBRAL)],
)
def test_only_a_clinician_changes_the_facts_the_dose_rules_depend_on(role: str, origin_after: str, clinic_a: Clinic) -> None:
    patient = PatientFactory(clinic=clinic_a)  # spinal origin
    client = client_for(staff((clinic_a, role)))
    page = client.get(patient_page(patient))
    editable = CLINICAL_FIELDS & set(page.context["adminform"].form.fields)
    assert editable == (set() if role == Role.NURSE else CLINICAL_FIELDS)

    response = client.post(patient_page(patient), as_shown(page, spasticity_origin=SpasticityOrigin.CEREBRAL))

    assert response.status_code == 302
    patient.refresh_from_db()
    assert patient.spasticity_origin == origin_after


@pytest.mark.parametrize(("role", "screened_elsewhere"), [(Role.NURSE, False), (Role.CLINICIAN, True)])
def test_only_a_clinician_records_a_screening_done_elsewhere_on_a_new_patient(
    role: str, screened_elsewhere: bool, clinic_a: Clinic
) -> None:
    client = client_for(staff((clinic_a, role)))

    response = client.post(PATIENT_ADD, new_patient(clinic_a, screened_elsewhere="on"))

    assert response.status_code == 302
    assert Patient.objects.get(mrn="MRN-NEW").screened_elsewhere is screened_elsewhere


# ----------------------------------------------------------------------------- 9. a clinic move re-stores dates


def test_moving_a_patient_to_a_clinic_with_a_shorter_interval_brings_the_refill_date_forward(clinic_a: Clinic) -> None:
    monthly = ClinicFactory(name="Monthly clinic", maintenance_interval_days=30)
    pump = implanted_pump(patient=screened_patient(clinic=clinic_a), phase=Phase.MAINTENANCE)
    assert pump.refill_by == date(2027, 4, 4)  # the fill + 90 days
    client = client_for(staff((clinic_a, Role.CLINICIAN), (monthly, Role.CLINICIAN)))

    response = client.post(patient_page(pump.patient), as_shown(client.get(patient_page(pump.patient)), clinic=monthly.pk))

    assert response.status_code == 302
    pump.refresh_from_db()
    assert pump.patient.clinic == monthly
    assert pump.refill_by == date(2027, 2, 3)  # the fill + 30 days


# ----------------------------------------------------------------------------- 10. refill acknowledgement reason


@pytest.mark.parametrize(
    ("concentration", "acknowledged", "stored_reason"),
    [
        ("1500", ["concentration_unusual"], "Compounded for a small reservoir."),  # not a marketed strength
        ("500", [], ""),  # nothing to acknowledge: no reason stored
    ],
)
def test_it_stores_the_reason_for_acknowledging_a_refill_warning(
    concentration: str, acknowledged: list[str], stored_reason: str
) -> None:
    pump = implanted_pump()

    refill = fill(
        pump,
        at=VISIT_AT,
        withdrawn_ml="28.80",
        volume_added_ml="40",
        concentration_mcg_per_ml=concentration,
        acknowledged=acknowledged,
        reason="  Compounded for a small reservoir. ",
    )

    refill = Refill.objects.get(pk=refill.pk)
    assert (refill.acknowledged_warnings, refill.reason) == (acknowledged, stored_reason)


# ----------------------------------------------------------------------------- 11. trickle doses


TRICKLE_ML_PER_DAY = domain.rate_ml_per_day(Decimal("0.01"), Decimal("2000"))  # 0.000005 mL/day


@pytest.mark.django_db(False)
def test_a_trickle_dose_gives_an_alarm_date_at_most_a_century_ahead() -> None:
    anchor = IMPLANTED_AT  # 38 mL above the alarm: 7.6 million days, beyond the calendar

    alarm_on = domain.alarm_date(anchor, Decimal("40"), Decimal("2"), TRICKLE_ML_PER_DAY, ZoneInfo("UTC"))

    assert alarm_on is not None
    assert anchor.date() < alarm_on <= anchor.date() + timedelta(days=36500)


def test_a_trickle_dose_change_is_recorded_and_its_dates_stored() -> None:
    pump = implanted_pump(concentration_mcg_per_ml="2000")

    program = services.change_program(
        pump,
        services.ProgramInput(effective_at=VISIT_AT, dose_mcg_per_day=Decimal("0.01"), concentration_mcg_per_ml=Decimal("2000")),
        by=None,
        now=NOW,
        acknowledged=["decrease_over_limit"],
        reason="Weaning before explant.",
    )
    services.recompute_schedule(Pump.objects.select_related("patient__clinic").get(pk=pump.pk))

    assert Program.objects.get(pk=program.pk).dose_mcg_per_day == Decimal("0.010")
    pump.refresh_from_db()
    assert pump.alarm_on is not None and pump.alarm_on <= VISIT_AT.date() + timedelta(days=36500)
    assert pump.refill_by == date(2027, 3, 3)  # the visit + 30 days (titration)


# ----------------------------------------------------------------------------- 12. catheters


def _with_catheter(response: Any, pump: Pump, implanted_on: str) -> dict[str, str]:
    return {
        **as_shown(response),
        **management("catheters", total=1),
        "catheters-0-pump": str(pump.pk),
        "catheters-0-id": "",
        "catheters-0-model": "8709SC",
        "catheters-0-lot": "C77",
        "catheters-0-tip_level": "T10",
        "catheters-0-implanted_length_cm": "",
        "catheters-0-implanted_on": implanted_on,
    }


def test_it_refuses_a_catheter_implanted_before_the_pump_on_the_pump_page(clinic_a: Clinic, pump_a: Pump) -> None:
    client = client_for(staff((clinic_a, Role.NURSE)))

    response = client.post(pump_page(pump_a), _with_catheter(client.get(pump_page(pump_a)), pump_a, "2027-01-03"))

    assert response.status_code == 200
    (catheters,) = response.context["inline_admin_formsets"]
    assert catheters.formset.errors == [{"implanted_on": ["Cannot be before the pump's implant."]}]
    assert not Catheter.objects.exists()

    # The implant's own day is accepted.
    response = client.post(pump_page(pump_a), _with_catheter(client.get(pump_page(pump_a)), pump_a, "2027-01-04"))
    assert response.status_code == 302
    assert Catheter.objects.get().implanted_on == date(2027, 1, 4)


def test_it_links_a_catheter_row_to_its_page_where_revisions_are_recorded(clinic_a: Clinic, pump_a: Pump) -> None:
    catheter = Catheter.objects.create(pump=pump_a, tip_level="T10", implanted_on=date(2027, 1, 4))
    client = client_for(staff((clinic_a, Role.NURSE)))
    catheter_page = reverse("admin:pumps_catheter_change", args=[catheter.pk])

    assert f'href="{catheter_page}"' in client.get(pump_page(pump_a)).content.decode()
    response = client.get(catheter_page)
    assert response.status_code == 200
    (revisions,) = response.context["inline_admin_formsets"]
    assert revisions.formset.prefix == "revisions"
    assert revisions.has_add_permission


def test_ending_a_pump_through_a_stale_object_still_clears_its_stored_dates() -> None:
    stale = implant(implanted_at=IMPLANTED_AT)  # due at once: refill_by is its implant date
    fresh = Pump.objects.get(pk=stale.pk)
    fresh.refill_by = None  # the caller's copy disagrees with what is stored
    services.end_pump(fresh, status=PumpStatus.EXPLANTED, on=IMPLANTED_AT.date(), reason="Infection", now=IMPLANTED_AT)
    assert Pump.objects.get(pk=stale.pk).refill_by is None
