"""A nurse records a refill in the browser (Playwright driving Debian's Chromium).

The issue's acceptance test: a nurse logs in, records a refill whose residual is off by
more than 2 mL, and sees the flag and the new refill-by date. The dates are computed here
from the arithmetic (DESIGN "Refill arithmetic"), not read from the app.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from factories import ClinicFactory, MembershipFactory, PatientFactory, UserFactory, implanted_pump, screen
from playwright.sync_api import Page, expect

from patients.models import Role
from pumps.models import Phase, Refill

pytestmark = [
    pytest.mark.e2e,
    # live_server reads committed rows; serialized_rollback restores the seeded pump
    # catalogue that an earlier transactional test's flush removed.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "Refill-nurse-2027"

# The patient's pump and its program: a 20 mL SynchroMed II at 200 mcg/day of 500 mcg/mL,
# filled full 28 days before the visit, in maintenance (90-day visits) at a clinic in UTC.
RESERVOIR_ML = Decimal(20)
ALARM_ML = Decimal("2.0")
DOSE_MCG_PER_DAY = Decimal(200)
CONCENTRATION_MCG_PER_ML = Decimal(500)
DAYS_SINCE_FILL = 28
WITHDRAWN_ML = Decimal("6.00")
MARGIN_DAYS, MAINTENANCE_DAYS, STABILITY_DAYS = 3, 90, 180


def expected_after_refill(visit_on: date) -> dict[str, Any]:
    """The refill's results by hand: the pump infuses dose / concentration mL a day."""
    rate = DOSE_MCG_PER_DAY / CONCENTRATION_MCG_PER_ML  # 0.4 mL/day
    expected_residual = RESERVOIR_ML - rate * DAYS_SINCE_FILL  # 20 − 11.2 = 8.80 mL
    discrepancy = WITHDRAWN_ML - expected_residual  # −2.80 mL: beyond the 2 mL limit
    # Filled full again: whole days until the alarm volume, rounded down (never late).
    alarm_days = int(((RESERVOIR_ML - ALARM_ML) / rate).to_integral_value(rounding=ROUND_FLOOR))  # 45
    alarm_on = visit_on + timedelta(days=alarm_days)
    refill_by = min(
        alarm_on - timedelta(days=MARGIN_DAYS),
        visit_on + timedelta(days=MAINTENANCE_DAYS),
        visit_on + timedelta(days=STABILITY_DAYS),
    )
    return {
        "expected_residual": f"{expected_residual:.2f}",
        "discrepancy": f"{discrepancy:.2f}",
        "alarm_on": alarm_on,
        "refill_by": refill_by,
    }


def test_nurse_records_a_refill_and_sees_the_flag_and_new_refill_by_date(live_server: Any, page: Page, output_path: str) -> None:
    shots = Path(output_path)
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # The visit an hour ago (typed times must not be in the future), the fill 28 days before.
    visit_at = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)
    filled_at = visit_at - timedelta(days=DAYS_SINCE_FILL)
    clinic = ClinicFactory(name="Riverside ITB clinic", time_zone="UTC")
    nurse = UserFactory(username="nurse.jones", password=PASSWORD, is_staff=True)
    MembershipFactory(user=nurse, clinic=clinic, role=Role.NURSE)
    patient = PatientFactory(clinic=clinic, mrn="RV-1042", given_name="Sam", family_name="Okafor")
    screen(patient, dose_mcg=100, given_at=filled_at - timedelta(days=14))
    pump = implanted_pump(patient=patient, model_number="8637-20", implanted_at=filled_at, phase=Phase.MAINTENANCE)
    want = expected_after_refill(visit_at.date())
    assert want["discrepancy"] == "-2.80"
    assert want["refill_by"] == want["alarm_on"] - timedelta(days=MARGIN_DAYS)  # the alarm decides, not the interval

    # Log in through the admin's form.
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "nurse.jones")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_contain_text("pumptrack")
    shot("01-logged-in")

    # Find the patient's pump by MRN and open it.
    page.goto(f"{live_server.url}/admin/pumps/pump/")
    page.fill("#searchbar", "RV-1042")
    page.keyboard.press("Enter")
    page.get_by_role("link", name=pump.serial_number).click()
    expect(page.locator("table.pt-state")).to_contain_text("Maintenance")
    shot("02-pump-page")

    page.get_by_role("link", name="Record refill").click()
    expect(page.locator("h1")).to_contain_text("Add refill")
    # The form starts from the pump's model and program: a full reservoir at the same strength.
    expect(page.locator("#id_volume_added_ml")).to_have_value("20.00")
    expect(page.locator("#id_concentration_mcg_per_ml")).to_have_value("500.00")
    page.fill("#id_performed_at_0", visit_at.strftime("%Y-%m-%d"))
    page.fill("#id_performed_at_1", visit_at.strftime("%H:%M:%S"))
    page.fill("#id_withdrawn_ml", str(WITHDRAWN_ML))
    page.fill("#id_drug_lot", "LX2291")
    shot("03-refill-form")
    page.locator("input[name=_save]").click()

    # First submit: the computed result, nothing saved yet.
    expect(page.locator(".pt-confirm")).to_be_visible()
    expect(page.locator("#content")).to_contain_text("Check the computed result below, then press Save again")
    residual_row = page.locator(".pt-preview tr", has=page.locator("th", has_text="Expected residual"))
    expect(residual_row.locator("td")).to_have_text(f"{want['expected_residual']} mL")
    expect(page.locator("#pt-discrepancy")).to_contain_text(f"{want['discrepancy']} mL")
    expect(page.locator("#pt-discrepancy")).to_contain_text("Discrepancy flagged")
    expect(page.locator("#pt-alarm-on")).to_have_text(want["alarm_on"].isoformat())
    expect(page.locator("#pt-refill-by")).to_have_text(want["refill_by"].isoformat())
    shot("04-preview")
    assert not Refill.objects.filter(pump=pump, is_initial_fill=False).exists()

    page.locator("input[name=_save]").click()

    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    shot("05-saved")

    page.goto(f"{live_server.url}/admin/pumps/pump/{pump.pk}/change/")
    flagged = page.locator("tr.pt-flagged")
    expect(flagged).to_have_count(1)
    expect(flagged).to_contain_text(visit_at.strftime("%Y-%m-%d %H:%M"))
    expect(flagged).to_contain_text(f"{want['discrepancy']} ⚑ flagged")
    refill_by_row = page.locator("table.pt-state tr", has_text="Refill by")
    expect(refill_by_row).to_contain_text(want["refill_by"].isoformat())
    expect(page.locator("table.pt-state tr", has_text="Low-reservoir alarm date")).to_contain_text(want["alarm_on"].isoformat())
    page.locator("tr.pt-flagged").scroll_into_view_if_needed()
    shot("06-pump-after-refill")

    refill = Refill.objects.get(pump=pump, is_initial_fill=False)
    assert refill.discrepancy_flagged
    assert (refill.performed_at, refill.performed_by) == (visit_at, nurse)
    pump.refresh_from_db()
    assert (pump.alarm_on, pump.refill_by) == (want["alarm_on"], want["refill_by"])
